"""Object-store settings in one vocabulary (LanceDB's storage_options names) translated for pyarrow and boto3,
and the lease that keeps two runs off one set of tables in an S3 bucket. Unset values fall back to the
standard AWS_* environment variables, which all three libraries read themselves."""

from __future__ import annotations

import json
import os
import socket
import threading
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import structlog

from pipeline.errors import StoreBusyError, StoreError

log = structlog.get_logger(__name__)

_ALIASES = {
    "endpoint": ("aws_endpoint", "endpoint", "aws_endpoint_url", "endpoint_url"),
    "region": ("aws_region", "region"),
    "access_key": ("aws_access_key_id", "access_key_id"),
    "secret_key": ("aws_secret_access_key", "secret_access_key"),
    "session_token": ("aws_session_token", "session_token"),
    "allow_http": ("allow_http", "aws_allow_http"),
}


@dataclass(frozen=True)
class S3Options:
    endpoint: str | None = None
    region: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None
    allow_http: bool = False

    @classmethod
    def from_options(cls, options: dict[str, str]) -> S3Options:
        lowered = {k.lower(): v for k, v in options.items()}
        values = {}
        for name, keys in _ALIASES.items():
            found = next((lowered[k] for k in keys if k in lowered), None)
            if found is not None:
                values[name] = str(found).lower() in ("1", "true", "yes") if name == "allow_http" else found
        return cls(**values)

    def pyarrow_kwargs(self) -> dict:
        kwargs = {
            "endpoint_override": self.endpoint,
            "region": self.region,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "session_token": self.session_token,
        }
        if self.endpoint and (self.allow_http or self.endpoint.startswith("http://")):
            kwargs["scheme"] = "http"
        return {k: v for k, v in kwargs.items() if v is not None}

    def boto3_kwargs(self) -> dict:
        kwargs = {
            "endpoint_url": self.endpoint,
            "region_name": self.region,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "aws_session_token": self.session_token,
        }
        return {k: v for k, v in kwargs.items() if v is not None}


def split_s3_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key.strip("/")


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
