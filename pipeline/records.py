"""The messages workers send the driver and the rows other jobs read back, typed: a write task's group record (the
only message from workers to the driver) and the batch payload the embed stage leaves on a batch's first row, with
strict JSON (a missing or unknown field fails where the message is read, naming it); and a run's `runs` row. No ray
or vllm imports."""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime

from pipeline.schema import RUN_KIND_INDEX, RUN_KIND_INGEST, Fate, RunStatus
from pipeline.stats import BatchStats


def _strict(cls, data: dict) -> dict:
    names = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    unknown, missing = set(data) - names, required - set(data)
    if unknown or missing:
        msg = f"{cls.__name__} payload has unknown fields {sorted(unknown)} and lacks {sorted(missing)}"
        raise ValueError(msg)
    return data


@dataclass(frozen=True)
class BatchPayload:
    """One embedded batch's timing, and on an engine's first batch what the engine is and when it was ready."""

    batch: BatchStats
    engine: dict | None = None

    def to_json(self) -> str:
        return json.dumps({"batch": self.batch.to_json_dict(), "engine": self.engine})

    @classmethod
    def from_json(cls, text: str) -> BatchPayload:
        data = _strict(cls, json.loads(text))
        return cls(BatchStats.from_json_dict(data["batch"]), data.get("engine"))


@dataclass(frozen=True)
class GroupRecord:
    """What a write task tells the driver of one group of rows it wrote: the fragments to commit and what to count.
    Document ids appear only for documents the commit must act on (replaced, removed) and rejects."""

    group: str
    """Hash of the group's rows: the same rows give the same id, however Ray cut or retried the work."""
    node: str
    rows: int
    tokens: int
    docs: dict[str, int]
    """Documents of each Fate value in the group (new and changed counted at their first chunk)."""
    replaced_ids: list[str]
    removed_ids: list[str]
    rejects: list[dict]
    batches: list[BatchPayload]
    stages: dict[str, float]
    fragments: list[str] = field(default_factory=list)
    """Lance fragment metadata, JSON, of the rows written (none for a group without chunks)."""
    dim: int | None = None
    unit_length: bool | None = None
    """Whether every vector written is of unit length (None: no vectors)."""

    def count(self, fate: Fate) -> int:
        return self.docs.get(fate.value, 0)

    def to_json(self) -> str:
        data = asdict(self)
        data["batches"] = [json.loads(b.to_json()) for b in self.batches]
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> GroupRecord:
        data = _strict(cls, json.loads(text))
        batches = [BatchPayload.from_json(json.dumps(b)) for b in data["batches"]]
        return cls(**{**data, "batches": batches})


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """A run's `runs` row: one field per column of RUNS_SCHEMA (a test holds the two equal). Written by keyword, so
    a misspelled column fails where it is written, and `check` names the columns an ended row of its kind lacks;
    read back strictly (`from_row`: a column this version does not know fails, naming it; one an older store, or a
    read of a few columns, lacks is None)."""

    run_id: str
    kind: str
    started_at: datetime
    status: RunStatus
    finished_at: datetime | None = None
    wall_s: float | None = None
    """finished_at - started_at, on the UTC clock engines stamp their ready time with."""
    error: str | None = None
    # what the run was asked to do, written when it starts
    model: str | None = None
    max_model_len: int | None = None
    max_num_batched_tokens: int | None = None
    chunk_tokens: int | None = None
    settings: str | None = None
    """The resolved settings, JSON, with the plan's resolved values under "resolved"."""
    plan: str | None = None
    """The memory plan, JSON."""
    vllm_version: str | None = None
    ray_version: str | None = None
    torch_version: str | None = None
    lancedb_version: str | None = None
    # what it did
    docs_in: int | None = None
    docs: int | None = None
    added: int | None = None
    replaced: int | None = None
    skipped: int | None = None
    removed: int | None = None
    chunks: int | None = None
    tokens: int | None = None
    rejected: int | None = None
    chunks_discarded: int | None = None
    tokens_discarded: int | None = None
    tokens_per_s: float | None = None
    engine_tokens: int | None = None
    startup_s: float | None = None
    engine: str | None = None
    """The engine's effective limits, dtype and start time, JSON (None when no engine embedded anything)."""
    read_s: float | None = None
    parse_s: float | None = None
    chunk_s: float | None = None
    embed_s: float | None = None
    wait_s: float | None = None
    write_s: float | None = None
    groups: int | None = None
    commit_s: float | None = None
    record_bytes: int | None = None
    write_nodes: str | None = None
    driver_peak_mb: float | None = None
    # what the cluster lost (None where it could not say)
    engines_lost: int | None = None
    engine_restarts: int | None = None
    engines_hung: int | None = None
    lost_nodes: str | None = None
    engine_failures: str | None = None
    """JSON: what the engines' failures said, and how often (each failed engine exited and Ray restarted it)."""
    # what it cost
    engine_s: float | None = None
    engine_busy: float | None = None
    tokens_per_engine_s: float | None = None
    device_hours: float | None = None
    mfu: float | None = None
    cost: float | None = None
    cost_per_million_tokens: float | None = None
    estimate_s: float | None = None
    estimate_source: str | None = None
    # indexes and upkeep after the run
    maintenance: str | None = None
    maintenance_s: float | None = None

    def row(self) -> dict:
        return {**asdict(self), "status": self.status.value}

    def settings_values(self) -> dict:
        """The settings the run resolved, with the plan's values under "resolved" ({} when not recorded)."""
        try:
            return json.loads(self.settings or "{}")
        except ValueError:
            return {}

    def resolved(self) -> dict:
        """What the plan resolved: model_dir, device, max_model_len, similarity, actors, ..."""
        return self.settings_values().get("resolved", {})

    @classmethod
    def from_row(cls, row: dict) -> RunRecord:
        unknown = set(row) - _RUN_FIELDS
        if unknown:
            msg = f"runs row has columns this version does not know: {sorted(unknown)}"
            raise ValueError(msg)
        values = {**row, "status": RunStatus(row["status"])} if row.get("status") else dict(row)
        return cls(**{**dict.fromkeys(("run_id", "kind", "started_at", "status")), **values})

    def missing(self) -> list[str]:
        """The columns an ended row of its kind must have and this one lacks."""
        if self.status == RunStatus.RUNNING:
            return []
        needed = {*ENDED_COLUMNS, *_KIND_COLUMNS.get(self.kind, ())}
        if self.status == RunStatus.SUCCEEDED:
            needed.update(_SUCCEEDED_COLUMNS.get(self.kind, ()))
        else:
            needed.add("error")
        return sorted(name for name in needed if getattr(self, name) is None)

    def check(self) -> None:
        missing = self.missing()
        if missing:
            msg = f"the {self.kind} run {self.run_id} ended {self.status} without {', '.join(missing)}"
            raise ValueError(msg)


_RUN_FIELDS = frozenset(f.name for f in fields(RunRecord))
ENDED_COLUMNS = ("finished_at", "wall_s", "model")
"""What every ended row says."""
_KIND_COLUMNS = {
    RUN_KIND_INGEST: (
        *("max_model_len", "max_num_batched_tokens", "chunk_tokens", "settings", "plan", "lancedb_version"),
        *("docs_in", "docs", "added", "replaced", "skipped", "removed", "chunks", "tokens", "rejected"),
        *("chunks_discarded", "tokens_discarded", "tokens_per_s", "engine_tokens"),
        *("read_s", "parse_s", "chunk_s", "embed_s", "wait_s", "write_s"),
        *("groups", "commit_s", "record_bytes", "write_nodes", "driver_peak_mb"),
        *("engine_s", "engine_busy", "tokens_per_engine_s", "device_hours"),
    ),
}
"""What an ended row of each kind says besides ENDED_COLUMNS."""
_SUCCEEDED_COLUMNS = {RUN_KIND_INDEX: ("maintenance", "maintenance_s")}
"""What a succeeded row of each kind says besides."""
