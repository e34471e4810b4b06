"""The runs table: a row per run, marked running at its start and completed at its end, and what later runs and
jobs read back from it (the latest successful ingestion, the vector index's last training). No ray or vllm."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.compute as pc
import structlog

from pipeline import schema as s
from pipeline.errors import RunInterrupted
from pipeline.records import RunRecord
from pipeline.schema import RunStatus
from pipeline.store.lance_store import LanceStore
from pipeline.store.sql import sql_list, sql_str

log = structlog.get_logger(__name__)
_KEYS = ("run_id", "kind", "started_at", "status")
"""What every read of a runs row includes."""


def new_run_id() -> str:
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


@dataclass
class RunRow:
    """What a run's `runs` row will say when it ends: the block sets `status` as it goes (and may word `error` better
    than the exception would); `finishing` fills in the rest as the row is finished (each sees the record with its
    final status and error), then `ended` hears the record as written."""

    record: RunRecord
    """The row as the run started it."""
    status: RunStatus = RunStatus.FAILED
    error: str | None = None
    finishing: list[Callable[[RunRecord], RunRecord]] = field(default_factory=list)
    ended: list[Callable[[RunRecord], None]] = field(default_factory=list)

    def failed(self, exc: BaseException) -> None:
        if isinstance(exc, (RunInterrupted, KeyboardInterrupt)):
            self.status = RunStatus.INTERRUPTED
            self.error = self.error or f"interrupted by {exc or 'SIGINT'}"
        else:
            self.status = RunStatus.FAILED
            self.error = self.error or f"{type(exc).__name__}: {exc}"[:4000]

    def final(self) -> RunRecord:
        record = replace(self.record, status=self.status, error=self.error)
        for fill in self.finishing:
            record = fill(record)
        # finished_at and wall_s on one clock, so the row agrees with itself
        if record.wall_s is None:
            finished = record.finished_at or datetime.now(timezone.utc)
            record = replace(record, wall_s=(finished - record.started_at).total_seconds())
        if record.finished_at is None:
            record = replace(record, finished_at=record.started_at + timedelta(seconds=record.wall_s))
        return record


class RunLog:
    """The store's runs table."""

    def __init__(self, store: LanceStore):
        self.store = store

    def start(self, record: RunRecord) -> None:
        """The run's `runs` row, marked running from its `started_at` (the moment its start-up is counted from)."""
        runs = self._table()
        # Only one run holds the store's lock, so any run still marked running died without finishing.
        runs.update(where=f"status = {sql_str(RunStatus.RUNNING)}", values={"status": RunStatus.INTERRUPTED.value})
        runs.add(pa.Table.from_pylist([replace(record, status=RunStatus.RUNNING).row()], schema=s.RUNS_SCHEMA))

    @contextmanager
    def recorded(self, record: RunRecord) -> Iterator[RunRow]:
        """The run's row for the life of the block: started running, then finished with the block's status and
        values, or as failed (or interrupted) with the error that ended the block, whatever ended it."""
        row = RunRow(record)
        self.start(record)
        try:
            yield row
        except BaseException as exc:
            row.failed(exc)
            raise
        finally:
            final = row.final()
            self.finish(final)
            for hear in row.ended:
                hear(final)

    def finish(self, record: RunRecord) -> None:
        """Record the run's end; a succeeded row that lacks a column its kind must have fails here, naming it. A run
        that is failing keeps its own error: what its row lacks, and a store that cannot take the row (often what
        failed), are logged, and the row says what it can (or stays running until the next run marks it
        interrupted)."""
        failing = record.status != RunStatus.SUCCEEDED
        if not failing:
            record.check()
        elif record.missing():
            log.error("run_record_incomplete", run_id=record.run_id, missing=record.missing())
        try:
            values = record.row()
            del values["run_id"]
            self._table().update(where=f"run_id = {sql_str(record.run_id)}", values=values)
        except Exception as exc:
            if not failing:
                raise
            log.error("run_not_recorded", run_id=record.run_id, error=f"{type(exc).__name__}: {exc}"[:1000])

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

    def latest(
        self, kind: str = s.RUN_KIND_INGEST, status: RunStatus | None = RunStatus.SUCCEEDED
    ) -> RunRecord | None:
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
        row = max(query.limit(None).to_list(), key=lambda r: r["started_at"], default=None)
        return RunRecord.from_row(row) if row is not None else None

    def recent(self, limit: int, columns: list[str] | None = None) -> list[RunRecord]:
        """The newest `limit` runs rows, newest first (any kind and status), with only `columns` read when given
        (the rest None). Read-only."""
        unknown = sorted(set(columns or ()) - set(s.RUNS_SCHEMA.names))
        if unknown:
            raise ValueError(f"the runs table has no columns {unknown}")
        runs = self._runs_with()
        if runs is None:
            return []
        keys = runs.search().select(["run_id", "started_at"]).limit(None).to_arrow()
        newest = keys.take(pc.sort_indices(keys, [("started_at", "descending")])[:limit]).column("run_id")
        if len(newest) == 0:
            return []
        query = runs.search().where(f"run_id IN ({sql_list(newest.to_pylist())})")
        if columns is not None:
            query = query.select(sorted({*columns, *_KEYS} & set(runs.schema.names)))
        rows = sorted(query.limit(None).to_list(), key=lambda r: r["started_at"], reverse=True)
        return [RunRecord.from_row(row) for row in rows]

    def _table(self):
        return self.store.table(self.store.names.runs, s.RUNS_SCHEMA)

    def _runs_with(self, *columns: str):
        runs = self.store.opened(self.store.names.runs)
        return runs if runs is not None and all(c in runs.schema.names for c in columns) else None
