"""One run at a time on a set of tables: an OS file lock for a local store, a lease object for an s3:// one."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from pathlib import Path

import structlog

from pipeline.errors import StoreBusyError, StoreError
from pipeline.object_store import S3Options, split_s3_uri
from pipeline.settings import StoreSettings, revealed

log = structlog.get_logger(__name__)


@contextmanager
def store_lock(
    uri: str, prefix: str, run_id: str, storage_options: dict[str, str] | None = None, ttl_s: float = 600.0
) -> Iterator[bool]:
    """Serialize runs on one set of tables. A local store uses an OS file lock (released if the process dies);
    an s3:// store a lease object in the bucket (expires ttl_s after its holder stops renewing it); other
    object stores are not locked, and two runs there at once could both add the same new document.
    Yields whether other writers are excluded (maintenance that deletes files runs only then)."""
    if uri.startswith("s3://"):
        lease = S3Lease(uri, prefix, run_id, S3Options.from_options(storage_options or {}), ttl_s)
        lease.acquire()
        try:
            yield True
        finally:
            lease.release()
        return
    if "://" in uri and not uri.startswith("file://"):
        log.warning(
            "store_not_locked",
            uri=uri,
            reason="only local and s3:// stores are locked; concurrent runs could add a document twice",
        )
        yield False
        return
    root = Path(uri.removeprefix("file://"))
    root.mkdir(parents=True, exist_ok=True)
    path = root / f".{prefix}embedpipe.lock"
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            msg = (
                f"another ingestion run ({holder}) is writing to store.uri={uri!r} with table prefix {prefix!r}; "
                f"wait for it to finish, or use another store.table_prefix"
            )
            raise StoreBusyError(msg) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"run {run_id}, pid {os.getpid()}, host {socket.gethostname()}")
        handle.flush()
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def settings_lock(store: StoreSettings, run_id: str, ttl_s: float):
    """store_lock on the tables a StoreSettings names."""
    return store_lock(store.uri, store.table_prefix, run_id, revealed(store.storage_options), ttl_s)


class S3Lease:
    """A lock object created only if absent (If-None-Match), renewed while the run lives (If-Match), and taken
    over (If-Match on the stale copy) once the server has seen no renewal for ttl_s: a killed run blocks the next
    one for at most ttl_s. Needs conditional writes: AWS S3, MinIO, Ceph RGW and moto have them."""

    def __init__(self, uri: str, prefix: str, run_id: str, options: S3Options, ttl_s: float):
        import boto3

        bucket, key = split_s3_uri(uri)
        self.bucket, self.key = bucket, f"{key}/.{prefix}embedpipe.lock".lstrip("/")
        self.where = f"s3://{self.bucket}/{self.key}"
        self.client = boto3.client("s3", **options.boto3_kwargs())
        self.holder = f"run {run_id}, pid {os.getpid()}, host {socket.gethostname()}"
        self.ttl_s = ttl_s
        self.etag: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def acquire(self) -> None:
        from botocore.exceptions import ClientError

        body = json.dumps({"holder": self.holder}).encode()
        try:
            self.etag = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body, IfNoneMatch="*")["ETag"]
        except ClientError as exc:
            if not _precondition_failed(exc):
                raise StoreError(f"cannot create the store lock {self.where}: {exc}") from None
            self._take_over_if_stale(body)
        self._renewer = threading.Thread(target=self._renew, name="store-lease", daemon=True)
        self._renewer.start()

    def _take_over_if_stale(self, body: bytes) -> None:
        from botocore.exceptions import ClientError

        current = self.client.get_object(Bucket=self.bucket, Key=self.key)
        holder = json.loads(current["Body"].read() or b"{}").get("holder", "another run")
        server_now = parsedate_to_datetime(current["ResponseMetadata"]["HTTPHeaders"]["date"])
        age = (server_now - current["LastModified"]).total_seconds()
        if age < self.ttl_s:
            msg = (
                f"another ingestion run ({holder}) holds the store lock {self.where}, renewed {age:.0f} s ago; "
                f"wait for it to finish, or use another store.table_prefix (a dead run's lock expires after "
                f"run.lock_ttl_s={self.ttl_s:.0f} s)"
            )
            raise StoreBusyError(msg)
        try:
            self.etag = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body, IfMatch=current["ETag"])[
                "ETag"
            ]
        except ClientError as exc:
            if _precondition_failed(exc):
                raise StoreBusyError(f"another run took over the stale store lock {self.where} first") from None
            raise
        log.warning("stale_store_lock_taken_over", lock=self.where, previous_holder=holder, age_s=round(age))

    def _renew(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        renewals = 0
        while not self._stop.wait(self.ttl_s / 3):
            renewals += 1
            body = json.dumps({"holder": self.holder, "renewals": renewals}).encode()
            try:
                self.etag = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body, IfMatch=self.etag)[
                    "ETag"
                ]
            except (ClientError, BotoCoreError) as exc:
                log.error("store_lock_renewal_failed", lock=self.where, error=str(exc))

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key)
        except Exception as exc:  # noqa: BLE001 - a lock left behind expires; the run's result stands
            log.warning("store_lock_not_removed", lock=self.where, error=str(exc))


def _precondition_failed(exc) -> bool:
    code = exc.response.get("Error", {}).get("Code", "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)
