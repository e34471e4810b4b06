"""A run's wall time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone


@dataclass(frozen=True)
class RunClock:
    """The run's wall time on the same clock as its engines' ready times (UTC, comparable across nodes). A monotonic
    clock can fall behind it when a virtual machine is paused, and then start-up would outlast the run."""

    started_at: datetime

    @classmethod
    def now(cls) -> RunClock:
        return cls(datetime.now(timezone.utc))

    def wall_s(self) -> float:
        return (datetime.now(timezone.utc) - self.started_at).total_seconds()
