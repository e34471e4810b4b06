"""The LanceDB side: the four tables and a writer that commits rows in groups. No ray or vllm imports."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import lancedb
import pyarrow as pa
import pyarrow.compute as pc
import structlog

from pipeline import schema as s
from pipeline.errors import StoreError
from pipeline.stats import BatchStats, RunTotals

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TableNames:
    chunks: str
    batches: str
    runs: str
    rejects: str

    @classmethod
    def with_prefix(cls, prefix: str) -> TableNames:
        return cls(f"{prefix}chunks", f"{prefix}batches", f"{prefix}runs", f"{prefix}rejects")


class LanceStore:
    def __init__(self, uri: str, prefix: str = ""):
        self.uri = uri
        self.names = TableNames.with_prefix(prefix)
        try:
            self.db = lancedb.connect(uri)
        except (OSError, ValueError) as exc:
            msg = f"cannot open LanceDB at store.uri={uri!r}: {exc}"
            raise StoreError(msg) from None

    def table(self, name: str, schema: pa.Schema):
        table = self.db.create_table(name, schema=schema, exist_ok=True)
        missing = [f.name for f in schema if f.name not in table.schema.names]
        if missing:
            msg = f"table {name!r} in {self.uri} lacks columns {missing}; use another store.table_prefix"
            raise StoreError(msg)
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
        return name in self.db.list_tables().tables

    def start_run(self, row: dict) -> None:
        self.table(self.names.runs, s.RUNS_SCHEMA).add(pa.Table.from_pylist([row], schema=s.RUNS_SCHEMA))

    def finish_run(self, run_id: str, values: dict) -> None:
        self.table(self.names.runs, s.RUNS_SCHEMA).update(where=f"run_id = '{run_id}'", values=values)


class RunWriter:
    """Takes embedded batches from the pipeline, buffers them and commits in groups of about commit_rows.

    Reject rows go to `rejects`, batch stats to `batches`, chunks to `chunks`; totals count what was committed.
    """

    def __init__(self, store: LanceStore, run_id: str, model_id: str, metadata: dict, commit_rows: int):
        self.store = store
        self.run_id = run_id
        self.model_id = model_id
        self.metadata = metadata
        self.commit_rows = commit_rows
        self.totals = RunTotals()
        self.received = RunTotals()
        self.engine_info: dict | None = None
        self._chunks: list[pa.Table] = []
        self._rejects: list[dict] = []
        self._stats: list[dict] = []
        self._buffered = 0
        self._chunks_table = None

    def add(self, batch: pa.Table) -> None:
        rejected = pc.is_valid(batch.column(s.REJECT_REASON))
        now = datetime.now(timezone.utc)
        for row in (
            batch.filter(rejected).select([s.DOC_ID, s.SOURCE, s.LINE, s.REJECT_REASON, s.REJECT_DETAIL]).to_pylist()
        ):
            self._rejects.append(
                {
                    s.RUN_ID: self.run_id,
                    s.DOC_ID: row[s.DOC_ID],
                    s.SOURCE: row[s.SOURCE],
                    s.LINE: row[s.LINE],
                    "reason": row[s.REJECT_REASON],
                    "detail": row[s.REJECT_DETAIL],
                    "rejected_at": now,
                }
            )
        for payload in batch.column(s.BATCH_STATS).drop_null().to_pylist():
            record = json.loads(payload)
            self._stats.append(BatchStats.from_json_dict(record["batch"]).to_row(self.run_id))
            if "engine" in record and self.engine_info is None:
                self.engine_info = record["engine"]
        chunks = batch.filter(pc.invert(rejected))
        self.received += RunTotals(
            chunks=len(chunks),
            tokens=pc.sum(chunks.column(s.N_TOKENS)).as_py() or 0,
            rejected=len(batch) - len(chunks),
        )
        if len(chunks):
            self._chunks.append(chunks)
            self._buffered += len(chunks)
        if self._buffered >= self.commit_rows:
            self.commit()

    def commit(self) -> None:
        """One append per table for everything buffered."""
        totals = RunTotals(rejected=len(self._rejects), docs_in=len(self._rejects))
        if self._chunks:
            chunks = pa.concat_tables(self._chunks)
            dim = chunks.schema.field(s.VECTOR).type.list_size
            if self._chunks_table is None:
                self._chunks_table = self.store.chunks_table(dim, self.metadata)
            rows = _stored_chunks(chunks, self.model_id, self.run_id, dim)
            self._chunks_table.add(rows)
            first_chunks = pc.sum(pc.equal(chunks.column(s.CHUNK_INDEX), 0)).as_py() or 0
            totals += RunTotals(
                docs_in=first_chunks,
                docs=first_chunks,
                chunks=len(chunks),
                tokens=pc.sum(chunks.column(s.N_TOKENS)).as_py() or 0,
            )
        if self._rejects:
            self.store.table(self.store.names.rejects, s.REJECTS_SCHEMA).add(
                pa.Table.from_pylist(self._rejects, schema=s.REJECTS_SCHEMA)
            )
        if self._stats:
            totals += RunTotals(embed_s=sum(r["embed_s"] for r in self._stats))
            self.store.table(self.store.names.batches, s.BATCHES_SCHEMA).add(
                pa.Table.from_pylist(self._stats, schema=s.BATCHES_SCHEMA)
            )
        self.totals += totals
        if self._chunks or self._rejects:
            log.info("rows_committed", chunks=totals.chunks, rejected=totals.rejected, total_chunks=self.totals.chunks)
        self._chunks, self._rejects, self._stats, self._buffered = [], [], [], 0


def _stored_chunks(chunks: pa.Table, model_id: str, run_id: str, dim: int) -> pa.Table:
    n = len(chunks)
    now = datetime.now(timezone.utc)
    table = chunks.select(s.STORED_CHUNK_COLUMNS)
    table = table.append_column(s.MODEL, pa.array([model_id] * n, pa.string()))
    table = table.append_column(s.RUN_ID, pa.array([run_id] * n, pa.string()))
    table = table.append_column(s.INGESTED_AT, pa.array([now] * n, s.TIMESTAMP))
    return table.cast(s.chunks_table_schema(dim))


def table_counts(store: LanceStore, names: Sequence[str]) -> dict[str, int]:
    return {n: store.db.open_table(n).count_rows() if store.exists(n) else 0 for n in names}
