"""Stores as tests set them up."""

from datetime import datetime, timezone

import lancedb
import pyarrow as pa

from pipeline import schema as s
from pipeline.records import RunRecord
from pipeline.schema import RUN_KIND_INGEST, RunStatus
from pipeline.store.lance_store import LanceStore


def empty_chunks_table(store: LanceStore, dim: int, metadata: dict):
    """The chunks table, made empty with the metadata a run would give it (a run makes it at its first commit)."""
    db = lancedb.connect(store.uri)
    return db.create_table(store.names.chunks, schema=s.chunks_table_schema(dim, metadata), exist_ok=True)


def run_record(
    run_id: str, kind: str = RUN_KIND_INGEST, started_at: datetime | None = None, status=RunStatus.RUNNING, **columns
) -> RunRecord:
    """A runs row as a run starts it (or, with `status`, as one ended)."""
    started_at = started_at or datetime.now(timezone.utc)
    return RunRecord(run_id=run_id, kind=kind, started_at=started_at, status=RunStatus(status), **columns)


def add_runs(store: LanceStore, records: list[RunRecord]) -> None:
    """Rows of the runs table as earlier runs left them, written as they are (no run's lifecycle)."""
    rows = pa.Table.from_pylist([r.row() for r in records], schema=s.RUNS_SCHEMA)
    store.table(store.names.runs, s.RUNS_SCHEMA).add(rows)
