"""The runs table: a row per run, marked running at its start and completed at its end, and what later runs and
jobs read back from it (the latest successful ingestion, the vector index's last training). No ray or vllm."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import structlog

from pipeline import schema as s
from pipeline.errors import RunInterrupted
from pipeline.store.lance_store import LanceStore
from pipeline.store.sql import sql_list, sql_str

log = structlog.get_logger(__name__)


def new_run_id() -> str:
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


@dataclass
class RunRow:
    """What a run's `runs` row will say when it ends: the block sets `status` and `values` as it goes, and may set
    `error` itself (a message it words better than the exception's)."""

    status: str = "failed"
    error: str | None = None
    values: dict = field(default_factory=dict)
    finishing: list = field(default_factory=list)
    """Callables run as the row is finished, each returning more values (they see the final status and error)."""

    def failed(self, exc: BaseException) -> None:
        if isinstance(exc, (RunInterrupted, KeyboardInterrupt)):
            self.status = "interrupted"
            self.error = self.error or f"interrupted by {exc or 'SIGINT'}"
        else:
            self.status = "failed"
            self.error = self.error or f"{type(exc).__name__}: {exc}"[:4000]


class RunLog:
    """The store's runs table."""

    def __init__(self, store: LanceStore):
        self.store = store

    def start(self, run_id: str, kind: str, started_at: datetime, **columns) -> None:
        """The run's `runs` row, marked running from `started_at` (the moment its start-up is counted from)."""
        row = {"run_id": run_id, "started_at": started_at, "status": "running", "kind": kind, **columns}
        runs = self._table()
        # Only one run holds the store's lock, so any run still marked running died without finishing.
        runs.update(where="status = 'running'", values={"status": "interrupted"})
        runs.add(pa.Table.from_pylist([row], schema=s.RUNS_SCHEMA))

    @contextmanager
    def recorded(self, run_id: str, kind: str, started_at: datetime, **columns) -> Iterator[RunRow]:
        """The run's row for the life of the block: started running, then finished with the block's status and
        values, or as failed (or interrupted) with the error that ended the block, whatever ended it."""
        row = RunRow()
        self.start(run_id, kind, started_at, **columns)
        try:
            yield row
        except BaseException as exc:
            row.failed(exc)
            raise
        finally:
            values = dict(row.values)
            for more in row.finishing:
                values.update(more(row))
            values.update({"status": row.status, "error": row.error})
            values.setdefault("finished_at", datetime.now(timezone.utc))
            self.finish(run_id, values, failing=row.error is not None)

    def finish(self, run_id: str, values: dict, failing: bool = False) -> None:
        """Record the run's end. A run that is `failing` keeps its own error: when the store cannot take the
        record (often what failed), that is logged, and the row stays running until the next run marks it
        interrupted."""
        try:
            self.store.table(self.store.names.runs, s.RUNS_SCHEMA).update(
                where=f"run_id = {sql_str(run_id)}", values=values
            )
        except Exception as exc:
            if not failing:
                raise
            log.error("run_not_recorded", run_id=run_id, error=f"{type(exc).__name__}: {exc}"[:1000])

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

    def latest(self, kind: str = s.RUN_KIND_INGEST, status: str | None = "succeeded") -> dict | None:
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

    def recent(self, limit: int, columns: list[str] | None = None) -> list[dict]:
        """The newest `limit` runs rows, newest first (any kind and status). Read-only."""
        runs = self._runs_with()
        if runs is None:
            return []
        keys = runs.search().select(["run_id", "started_at"]).limit(None).to_arrow()
        newest = keys.take(pc.sort_indices(keys, [("started_at", "descending")])[:limit]).column("run_id")
        if len(newest) == 0:
            return []
        query = runs.search().where(f"run_id IN ({sql_list(newest.to_pylist())})")
        if columns is not None:
            query = query.select(sorted({*columns, "started_at"} & set(runs.schema.names)))
        rows = query.limit(None).to_list()
        return sorted(rows, key=lambda r: r["started_at"], reverse=True)

    def _table(self):
        return self.store.table(self.store.names.runs, s.RUNS_SCHEMA)

    def _runs_with(self, *columns: str):
        runs = self.store.opened(self.store.names.runs)
        return runs if runs is not None and all(c in runs.schema.names for c in columns) else None
