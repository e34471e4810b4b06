"""The messages workers send the driver, typed, with strict JSON: a write task's group record (the only message
from workers to the driver) and the batch payload the embed stage leaves on a batch's first row. A missing or
unknown field fails where the message is read, naming it. No ray or vllm imports."""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields

from pipeline.schema import Fate
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
