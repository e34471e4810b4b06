"""The LanceDB side: the four tables and a writer that commits rows in groups. No ray or vllm imports."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import lancedb
import pyarrow as pa
import pyarrow.compute as pc
import structlog

from pipeline import schema as s
from pipeline.errors import StoreBusyError, StoreError
from pipeline.settings import StoreSettings, revealed
from pipeline.stats import STAGES, BatchStats, RunTotals

log = structlog.get_logger(__name__)


def new_run_id() -> str:
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class TableNames:
    chunks: str
    batches: str
    runs: str
    rejects: str

    @classmethod
    def with_prefix(cls, prefix: str) -> TableNames:
        return cls(f"{prefix}chunks", f"{prefix}batches", f"{prefix}runs", f"{prefix}rejects")


@contextmanager
def store_lock(
    uri: str, prefix: str, run_id: str, storage_options: dict[str, str] | None = None, ttl_s: float = 600.0
) -> Iterator[bool]:
    """Serialize runs on one set of tables. A local store uses an OS file lock (released if the process dies);
    an s3:// store a lease object in the bucket (expires ttl_s after its holder stops renewing it); other
    object stores are not locked, and upserts on chunk_id keep concurrent runs from duplicating rows.
    Yields whether other writers are excluded (maintenance that deletes files runs only then)."""
    if uri.startswith("s3://"):
        from pipeline.io.object_store import S3Lease, S3Options

        lease = S3Lease(uri, prefix, run_id, S3Options.from_options(storage_options or {}), ttl_s)
        lease.acquire()
        try:
            yield True
        finally:
            lease.release()
        return
    if "://" in uri and not uri.startswith("file://"):
        log.warning(
            "store_not_locked", uri=uri, reason="only local and s3:// stores are locked; avoid concurrent runs"
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


class LanceStore:
    def __init__(self, uri: str, prefix: str = "", storage_options: dict[str, str] | None = None):
        self.uri = uri
        self.names = TableNames.with_prefix(prefix)
        try:
            self.db = lancedb.connect(uri, storage_options=storage_options or None)
        except (OSError, ValueError) as exc:
            msg = f"cannot open LanceDB at store.uri={uri!r}: {exc}"
            raise StoreError(msg) from None

    @classmethod
    def from_settings(cls, store: StoreSettings, prefix: str | None = None) -> LanceStore:
        return cls(store.uri, store.table_prefix if prefix is None else prefix, revealed(store.storage_options))

    def table(self, name: str, schema: pa.Schema):
        """Open or create a side table; columns added to its schema since the table was made are added empty."""
        try:  # also completes a table whose creation a killed run left half done
            table = self.db.create_table(name, schema=schema, exist_ok=True)
        except ValueError:  # exists with an older schema
            table = self.db.open_table(name)
        missing = [f for f in schema if f.name not in table.schema.names]
        if any(not f.nullable for f in missing):
            msg = f"table {name!r} in {self.uri} lacks columns {[f.name for f in missing]}; use another table prefix"
            raise StoreError(msg)
        if missing:
            table.add_columns(missing)
            log.info("table_columns_added", table=name, columns=[f.name for f in missing])
        return table

    def chunks_table(self, dim: int, metadata: dict):
        name = self.names.chunks
        if self.exists(name):
            table = self.db.open_table(name)
            field = table.schema.field(s.VECTOR)
            existing = json.loads((table.schema.metadata or {}).get(b"embedpipe", b"{}"))
            if field.type != s.vector_type(dim) or existing.get("model") != metadata["model"]:
                msg = (
                    f"table {name!r} holds vectors of model {existing.get('model')!r} ({field.type}); this run embeds "
                    f"with {metadata['model']!r} (dimension {dim}); use another store.table_prefix or store.uri"
                )
                raise StoreError(msg)
            return table
        return self.db.create_table(name, schema=s.chunks_table_schema(dim, metadata), exist_ok=True)

    def ensure_side_tables(self) -> None:
        self.table(self.names.batches, s.BATCHES_SCHEMA)
        self.table(self.names.rejects, s.REJECTS_SCHEMA)

    def exists(self, name: str) -> bool:
        """A table that opens; a run killed while creating one leaves a directory that lists but does not open."""
        if name not in self.db.list_tables().tables:
            return False
        try:
            self.db.open_table(name)
        except ValueError:
            return False
        return True

    def start_run(self, row: dict) -> None:
        runs = self.table(self.names.runs, s.RUNS_SCHEMA)
        # Only one run holds the store's lock, so any run still marked running died without finishing.
        runs.update(where="status = 'running'", values={"status": "interrupted"})
        runs.add(pa.Table.from_pylist([row], schema=s.RUNS_SCHEMA))

    def finish_run(self, run_id: str, values: dict) -> None:
        self.table(self.names.runs, s.RUNS_SCHEMA).update(where=f"run_id = {sql_str(run_id)}", values=values)

    def last_ann_training(self) -> int | None:
        """Rows the vector index was last trained on, from the newest maintenance record that (re)built it."""
        runs = self._runs_with("maintenance")
        if runs is None:
            return None
        rows = runs.search().where("maintenance IS NOT NULL").select(["started_at", "maintenance"]).limit(None)
        for row in sorted(rows.to_list(), key=lambda r: r["started_at"], reverse=True):
            for action in json.loads(row["maintenance"]).get("indexes", []):
                if action["kind"] == "ann" and action["action"] in ("create", "retrain"):
                    return action["params"].get("trained_rows")
        return None

    def latest_run(self, kind: str = s.RUN_KIND_INGEST, status: str | None = "succeeded") -> dict | None:
        """The newest runs row of a kind; rows written before runs had kinds are ingestion runs. Read-only."""
        runs = self._runs_with()
        if runs is None:
            return None
        conditions = [f"status = {sql_str(status)}"] if status else []
        if "kind" in runs.schema.names:
            either_null = " OR kind IS NULL" if kind == s.RUN_KIND_INGEST else ""
            conditions.append(f"(kind = {sql_str(kind)}{either_null})")
        elif kind != s.RUN_KIND_INGEST:
            return None
        query = runs.search()
        if conditions:
            query = query.where(" AND ".join(conditions))
        return max(query.limit(None).to_list(), key=lambda r: r["started_at"], default=None)

    def _runs_with(self, *columns: str):
        if not self.exists(self.names.runs):
            return None
        runs = self.db.open_table(self.names.runs)
        return runs if all(c in runs.schema.names for c in columns) else None

    def stored_documents(self, chunking: str) -> StoredDocuments:
        """What the chunks table holds per document, read before a run decides what to embed."""
        if not self.exists(self.names.chunks):
            return StoredDocuments({}, set())
        table = self.db.open_table(self.names.chunks)
        cols = [s.DOC_ID, s.DOC_HASH, s.DOC_CHUNKS, s.CHUNKING, s.CHUNK_INDEX]
        rows = table.search().select(cols).limit(None).to_arrow()
        groups = rows.group_by(cols[:4]).aggregate([(s.CHUNK_INDEX, "count_distinct")]).to_pylist()
        versions: dict[str, list[dict]] = {}
        for g in groups:
            versions.setdefault(g[s.DOC_ID], []).append(g)
        complete = {
            doc_id: v[0][s.DOC_HASH]
            for doc_id, v in versions.items()
            if len(v) == 1
            and v[0][s.CHUNKING] == chunking
            and v[0][f"{s.CHUNK_INDEX}_count_distinct"] == v[0][s.DOC_CHUNKS]
        }
        return StoredDocuments(complete, set(versions))

    def run_chunk_summary(self, run_id: str) -> pa.Table:
        if not self.exists(self.names.chunks):
            return pa.table({s.DOC_ID: pa.array([], pa.string()), s.N_TOKENS: pa.array([], pa.int32())})
        table = self.db.open_table(self.names.chunks)
        return (
            table.search()
            .where(f"{s.RUN_ID} = {sql_str(run_id)}")
            .select([s.DOC_ID, s.N_TOKENS])
            .limit(None)
            .to_arrow()
        )

    def delete_documents(self, doc_ids: Sequence[str], batch: int = 1000) -> None:
        table = self.db.open_table(self.names.chunks)
        ids = sorted(doc_ids)
        for i in range(0, len(ids), batch):
            table.delete(f"{s.DOC_ID} IN ({sql_list(ids[i : i + batch])})")


@dataclass(frozen=True)
class StoredDocuments:
    complete: dict[str, str]
    """doc_id -> doc_hash of documents whose chunks are all stored, made with this run's chunking."""
    present: set[str]
    """Every doc_id with at least one stored chunk."""


def sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sql_list(values: Sequence[str]) -> str:
    return ", ".join(sql_str(v) for v in values)


class RunWriter:
    """Takes embedded batches from the pipeline, buffers them and commits in groups of about commit_rows.

    Chunks are upserted on chunk_id; the same commit deletes the chunks this run replaces (older chunks of
    the documents it writes), so a crash never leaves duplicates and a rerun completes what was cut short.
    Within one run a document id is taken once: the first copy the writer receives decides (ingested,
    unchanged or rejected); later copies go to `rejects` as duplicate_id. A document the engine rejects
    loses every chunk this run wrote for it.
    """

    def __init__(self, store: LanceStore, run_id: str, model_id: str, chunking: str, metadata: dict, commit_rows: int):
        self.store = store
        self.run_id = run_id
        self.model_id = model_id
        self.chunking = chunking
        self.metadata = metadata
        self.commit_rows = commit_rows
        self.received = RunTotals()
        self.embedded = RunTotals()
        self.engine_info: dict | None = None
        self.engine_ready: list[datetime] = []
        self.engine_tokens = 0
        self.stages = dict.fromkeys(STAGES, 0.0)
        self.skipped: set[str] = set()
        self.rejected_ids: set[str] = set()
        self.rejected_count = 0
        self.shard_rejects = 0
        self._origin: dict[str, tuple] = {}
        self._failed: set[str] = set()
        self._failed_pending: set[str] = set()
        self._reject_keys: set[tuple] = set()
        self._chunks: list[pa.Table] = []
        self._rejects: list[dict] = []
        self._stats: list[dict] = []
        self._buffered = 0
        self._chunks_table = None

    def add(self, batch: pa.Table) -> None:
        now = datetime.now(timezone.utc)
        for payload in batch.column(s.SHARD_STATS).drop_null().to_pylist():
            for stage, seconds in json.loads(payload).items():
                if stage.endswith("_s"):
                    self.stages[stage] += seconds
        for payload in batch.column(s.BATCH_STATS).drop_null().to_pylist():
            record = json.loads(payload)
            self._stats.append(BatchStats.from_json_dict(record["batch"]).to_row(self.run_id))
            self.stages["wait_s"] += record["batch"]["wait_s"]
            self.stages["embed_s"] += record["batch"]["embed_s"]
            self.engine_tokens += record["batch"].get("engine_tokens", 0)
            if "engine" in record:
                self.engine_ready.append(datetime.fromisoformat(record["engine"]["ready_at"]))
                self.engine_info = self.engine_info or record["engine"]
        is_reject = pc.is_valid(batch.column(s.REJECT_REASON))
        is_unchanged = pc.fill_null(batch.column(s.UNCHANGED), False)
        for row in (
            batch.filter(is_reject).select([s.DOC_ID, s.SOURCE, s.LINE, s.REJECT_REASON, s.REJECT_DETAIL]).to_pylist()
        ):
            self._reject(row, row[s.REJECT_REASON], row[s.REJECT_DETAIL], now)
        for row in batch.filter(is_unchanged).select([s.DOC_ID, s.SOURCE, s.LINE]).to_pylist():
            if self._claim(row, now):
                self.skipped.add(row[s.DOC_ID])
        chunks = batch.filter(pc.and_(pc.invert(is_reject), pc.invert(is_unchanged)))
        self.embedded += RunTotals(chunks=len(chunks), tokens=pc.sum(chunks.column(s.N_TOKENS)).as_py() or 0)
        if len(chunks):
            keep = [self._claim(row, now) for row in chunks.select([s.DOC_ID, s.SOURCE, s.LINE]).to_pylist()]
            chunks = chunks.filter(pa.array(keep, pa.bool_()))
        self.received += RunTotals(
            chunks=len(chunks),
            tokens=pc.sum(chunks.column(s.N_TOKENS)).as_py() or 0,
            rejected=int(pc.sum(is_reject).as_py() or 0),
        )
        if len(chunks):
            self._chunks.append(chunks)
            self._buffered += len(chunks)
        if self._buffered >= self.commit_rows:
            self.commit()

    def _claim(self, row: dict, now: datetime) -> bool:
        """True if this copy of the document is the one the run ingests."""
        doc_id, where = row[s.DOC_ID], (row[s.SOURCE], row[s.LINE])
        first = self._origin.setdefault(doc_id, where)
        if first == where:
            return doc_id not in self._failed
        line = f" line {first[1]}" if first[1] is not None else ""
        self._reject(row, "duplicate_id", f"document id also at {first[0]}{line}, which came first", now)
        return False

    def _reject(self, row: dict, reason: str, detail: str | None, now: datetime) -> None:
        doc_id = row[s.DOC_ID]
        key = (doc_id, row[s.SOURCE], row[s.LINE], reason)
        if key in self._reject_keys:
            return
        self._reject_keys.add(key)
        if doc_id is None:
            self.shard_rejects += 1
        else:
            self.rejected_ids.add(doc_id)
            if self._origin.setdefault(doc_id, (row[s.SOURCE], row[s.LINE])) == (row[s.SOURCE], row[s.LINE]):
                self._failed.add(doc_id)
                self._failed_pending.add(doc_id)
        self.rejected_count += 1
        self._rejects.append(
            {
                s.RUN_ID: self.run_id,
                s.DOC_ID: doc_id,
                s.SOURCE: row[s.SOURCE],
                s.LINE: row[s.LINE],
                "reason": reason,
                "detail": detail,
                "rejected_at": now,
            }
        )

    def commit(self) -> None:
        """One upsert of the buffered chunks, one append each of rejects and batch stats."""
        started = time.perf_counter()
        try:
            self._commit()
        finally:
            self.stages["write_s"] += time.perf_counter() - started

    def _commit(self) -> None:
        chunks = pa.concat_tables(self._chunks) if self._chunks else None
        if chunks is not None and self._failed:
            chunks = chunks.filter(pc.invert(pc.is_in(chunks.column(s.DOC_ID), pa.array(sorted(self._failed)))))
        if chunks is not None and len(chunks):
            dim = chunks.schema.field(s.VECTOR).type.list_size
            if self._chunks_table is None:
                self._chunks_table = self.store.chunks_table(dim, self.metadata)
            docs = sorted(set(chunks.column(s.DOC_ID).to_pylist()))
            replaced = f"{s.RUN_ID} != {sql_str(self.run_id)} AND {s.DOC_ID} IN ({sql_list(docs)})"
            (
                self._chunks_table.merge_insert(s.CHUNK_ID)
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .when_not_matched_by_source_delete(replaced)
                .execute(stored_chunk_rows(chunks, self.model_id, self.chunking, self.run_id, dim))
            )
        if self._failed_pending and self._chunks_table is not None:
            failed = sorted(self._failed_pending)
            self._chunks_table.delete(f"{s.RUN_ID} = {sql_str(self.run_id)} AND {s.DOC_ID} IN ({sql_list(failed)})")
        self._failed_pending = set()
        if self._rejects:
            self.store.table(self.store.names.rejects, s.REJECTS_SCHEMA).add(
                pa.Table.from_pylist(self._rejects, schema=s.REJECTS_SCHEMA)
            )
        if self._stats:
            self.store.table(self.store.names.batches, s.BATCHES_SCHEMA).add(
                pa.Table.from_pylist(self._stats, schema=s.BATCHES_SCHEMA)
            )
        if chunks is not None or self._rejects:
            log.info("rows_committed", chunks=0 if chunks is None else len(chunks), rejected=len(self._rejects))
        self._chunks, self._rejects, self._stats, self._buffered = [], [], [], 0

    def finish(self, stored: StoredDocuments, delete_missing: bool) -> RunOutcome:
        """Commit what is left, remove documents gone from the inputs if asked, and count from the table."""
        self.commit()
        removed: set[str] = set()
        if delete_missing:
            if self.shard_rejects:
                log.warning("removal_skipped", reason=f"{self.shard_rejects} shards could not be read whole")
            else:
                ingested = set(self.store.run_chunk_summary(self.run_id).column(s.DOC_ID).to_pylist())
                removed = stored.present - ingested - self.skipped - self.rejected_ids
                if removed:
                    self.store.delete_documents(removed)
        return self.outcome(stored, len(removed))

    def outcome(self, stored: StoredDocuments, removed: int = 0) -> RunOutcome:
        """What this run committed, counted from the chunks table itself."""
        summary = self.store.run_chunk_summary(self.run_id)
        ingested = set(summary.column(s.DOC_ID).to_pylist())
        return RunOutcome(
            totals=RunTotals(
                docs_in=len(ingested) + len(self.skipped - ingested) + self.rejected_count,
                docs=len(ingested),
                chunks=summary.num_rows,
                tokens=pc.sum(summary.column(s.N_TOKENS)).as_py() or 0,
                rejected=self.rejected_count,
            ),
            added=len(ingested - stored.present),
            replaced=len(ingested & stored.present),
            skipped=len(self.skipped - ingested),
            removed=removed,
            stages=dict(self.stages),
            engine_tokens=self.engine_tokens,
            first_engine_ready=min(self.engine_ready, default=None),
            chunks_discarded=self.embedded.chunks - summary.num_rows,
            tokens_discarded=self.embedded.tokens - (pc.sum(summary.column(s.N_TOKENS)).as_py() or 0),
        )


@dataclass(frozen=True)
class RunOutcome:
    totals: RunTotals
    added: int
    replaced: int
    skipped: int
    removed: int
    stages: dict[str, float] = field(default_factory=dict)
    """Busy seconds per stage, summed over workers: read_s, parse_s, chunk_s, embed_s, wait_s, write_s."""
    chunks_discarded: int = 0
    """Embedded but not stored: chunks of duplicate copies and of documents the engine refused in part."""
    tokens_discarded: int = 0
    engine_tokens: int = 0
    """Tokens the engines report having processed, kept or discarded; equals the chunker's count."""
    first_engine_ready: datetime | None = None


def stored_chunk_rows(chunks: pa.Table, model_id: str, chunking: str, run_id: str, dim: int) -> pa.Table:
    n = len(chunks)
    now = datetime.now(timezone.utc)
    table = chunks.select(s.STORED_CHUNK_COLUMNS)
    table = table.append_column(s.MODEL, pa.array([model_id] * n, pa.string()))
    table = table.append_column(s.CHUNKING, pa.array([chunking] * n, pa.string()))
    table = table.append_column(s.RUN_ID, pa.array([run_id] * n, pa.string()))
    table = table.append_column(s.INGESTED_AT, pa.array([now] * n, s.TIMESTAMP))
    return table.cast(s.chunks_table_schema(dim))
