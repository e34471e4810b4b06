"""What a finished run says: its result, the summary line the job prints, and the figures it pushes. No ray or vllm
imports."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from pipeline.plan.cost import RunCost
from pipeline.plan.estimate import Projection
from pipeline.run.accounts import RunOutcome
from pipeline.run.pushed_metrics import RunFigures
from pipeline.schema import Fate, RunStatus
from pipeline.stats import STAGE_LABELS, RunTotals
from pipeline.store.maintenance import MaintenanceReport


@dataclass(frozen=True)
class RunResult:
    run_id: str
    status: RunStatus
    wall_s: float
    outcome: RunOutcome
    started_at: datetime
    maintenance: MaintenanceReport | None = None
    cost: RunCost | None = None
    estimate: Projection | None = None
    """What the estimate would have projected for this run's tokens, from the runs before it."""

    @property
    def startup_s(self) -> float | None:
        """Seconds from the run's start until its first engine could take work (cluster, actors, engine start)."""
        ready = self.outcome.first_engine_ready
        return (ready - self.started_at).total_seconds() if ready else None

    @property
    def totals(self) -> RunTotals:
        return self.outcome.totals

    @property
    def tokens_per_s(self) -> float:
        return self.totals.tokens / self.wall_s if self.wall_s > 0 else 0.0

    def summary_line(self) -> str:
        t, o = self.totals, self.outcome
        startup = f" (first engine ready at {self.startup_s:.2f} s)" if self.startup_s is not None else ""
        line = (
            f"Ingestion took {self.wall_s:.2f} s{startup}: {t.docs:,} docs, {t.chunks:,} chunks, {t.tokens:,} tokens, "
            f"{self.tokens_per_s:,.0f} tokens/s, {t.rejected:,} rejected; {o.added:,} added, {o.replaced:,} replaced, "
            f"{o.skipped:,} unchanged, {o.removed:,} removed; busy s: " + stage_text(o.stages)
        )
        return line + (f"; {self.cost.summary()}" if self.cost is not None else "") + self._estimate_text()

    def _estimate_text(self) -> str:
        if self.estimate is None or self.wall_s <= 0:
            return ""
        off = self.wall_s / self.estimate.wall_s - 1 if self.estimate.wall_s > 0 else 0.0
        projected = f"{self.estimate.wall_s:,.1f} s from earlier runs' rate"
        return f"; estimated {projected}, took {self.wall_s:,.1f} s ({off:+.0%})"

    def figures(self) -> RunFigures:
        """What the run pushes to a Pushgateway at its end."""
        t, o, cost = self.totals, self.outcome, self.cost
        return RunFigures(
            succeeded=self.status == RunStatus.SUCCEEDED,
            ended_at=time.time(),
            values={
                "run_duration_seconds": self.wall_s,
                "run_startup_seconds": self.startup_s,
                "run_documents_in": t.docs_in,
                "run_chunks": t.chunks,
                "run_tokens": t.tokens,
                "run_tokens_per_second": self.tokens_per_s,
                "run_engine_busy_ratio": cost.engine_busy if cost else None,
                "run_device_hours": cost.device_hours if cost else None,
                "run_cost": cost.cost if cost else None,
                "run_commit_seconds": o.commit_s,
            },
            documents={
                **{fate.run_column: getattr(o, fate.run_column) for fate in Fate},
                "rejected": t.rejected,
            },
        )


def stage_text(stages: dict[str, float]) -> str:
    return ", ".join(f"{label} {stages.get(key, 0.0):.2f}" for key, label in STAGE_LABELS.items())
