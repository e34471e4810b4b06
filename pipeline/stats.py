"""Per-batch timing records that add up. No ray or vllm imports."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, astuple, dataclass, field
from datetime import datetime

STAGES = ("read_s", "parse_s", "chunk_s", "embed_s", "wait_s", "write_s")
"""Busy seconds a run keeps per stage, summed over workers; columns of `runs` under the same names."""
STAGE_LABELS = {
    "read_s": "read",
    "parse_s": "parse",
    "chunk_s": "chunk",
    "embed_s": "engine",
    "wait_s": "engine idle",
    "write_s": "write",
}


class Additive:
    """A record of counts or seconds that adds up field by field."""

    def __add__(self, other):
        return type(self)(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


@dataclass(frozen=True)
class ShardStats(Additive):
    """Busy seconds the stages before the engine spent on some documents, and the bytes read for them. Additive:
    rows travel with the first document of their batch (JSON in SHARD_STATS) and add up where batches merge."""

    read_s: float = 0.0
    parse_s: float = 0.0
    chunk_s: float = 0.0
    bytes: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, payload: str) -> ShardStats:
        return cls(**json.loads(payload))

    @classmethod
    def total(cls, payloads: Iterable[str | None]) -> ShardStats | None:
        """The payloads added up; None when there are none."""
        found = [cls.from_json(p) for p in payloads if p]
        return sum(found[1:], found[0]) if found else None

    def stages(self) -> dict[str, float]:
        """Seconds by the names of the `runs` columns (STAGES)."""
        return {"read_s": self.read_s, "parse_s": self.parse_s, "chunk_s": self.chunk_s}


@dataclass(frozen=True)
class BatchStats:
    actor: str
    batch_index: int
    n_chunks: int
    n_tokens: int
    max_chunk_tokens: int
    embed_s: float
    wait_s: float
    started_at: datetime | None = field(default=None, compare=False)
    engine_tokens: int = 0
    """Tokens the engine reports having processed (len of each output's prompt_token_ids); equals n_tokens."""

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / self.embed_s if self.embed_s > 0 else 0.0

    def to_json_dict(self) -> dict:
        row = asdict(self)
        row["started_at"] = self.started_at.isoformat() if self.started_at else None
        return row

    @classmethod
    def from_json_dict(cls, row: dict) -> BatchStats:
        started = row.get("started_at")
        return cls(**{**row, "started_at": datetime.fromisoformat(started) if started else None})

    def to_row(self, run_id: str) -> dict:
        return {**asdict(self), "run_id": run_id, "tokens_per_s": self.tokens_per_s}


@dataclass(frozen=True)
class RunTotals(Additive):
    """What a run has committed so far; added up batch by batch on the driver."""

    docs_in: int = 0
    docs: int = 0
    chunks: int = 0
    tokens: int = 0
    rejected: int = 0
