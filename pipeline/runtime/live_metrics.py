"""What a run reports while it runs, as Prometheus metrics: their names, kinds and help, and what one committed
group adds to them. Ray's metrics API exports them (pipeline/ray_metrics.py) from each node's metrics agent, where
Ray prefixes them `ray_`. Names are spelled here once; infra/monitoring's dashboard uses them. No ray or vllm
imports."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import schema as s
from pipeline.records import GroupRecord

PREFIX = "embedpipe_"
COMMON_TAGS = ("store",)
"""Tags every series carries besides those Ray adds (node, worker, session): the store the run writes. Not the job:
a scrape sets its own `job` label."""
STATUSES = ("running", "succeeded", "failed", "interrupted")


@dataclass(frozen=True)
class Metric:
    kind: str
    """counter, gauge or histogram."""
    help: str
    tags: tuple[str, ...] = ()


LIVE = {
    "documents": Metric("counter", "Documents committed by the run, by fate (new, changed, unchanged)", ("fate",)),
    "chunks": Metric("counter", "Chunks committed by the run"),
    "tokens_embedded": Metric("counter", "Tokens embedded by the run's engines (chunks committed)"),
    "rejects": Metric("counter", "Rejects recorded by the run, by reason", ("reason",)),
    "engine_busy_seconds": Metric("counter", "Seconds each engine spent embedding", ("engine",)),
    "tokens_per_second": Metric("gauge", "Tokens embedded per second over the last minute"),
    "commit_seconds": Metric("histogram", "Driver seconds to commit one group of fragments"),
    "run_status": Metric(
        "gauge", "1 for the run's current status (running, succeeded, failed, interrupted)", ("status",)
    ),
    "run_started_timestamp_seconds": Metric("gauge", "When the running run started (Unix time)"),
}
"""Every live metric, without the prefix."""
COMMIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RATE_WINDOW_S = 60.0


@dataclass(frozen=True)
class Increment:
    name: str
    value: float
    tags: dict[str, str]


def group_increments(record: GroupRecord) -> list[Increment]:
    """What one committed group adds to the counters."""
    out = [Increment("chunks", record.rows, {}), Increment("tokens_embedded", record.tokens, {})]
    for fate in (s.Fate.NEW, s.Fate.CHANGED, s.Fate.UNCHANGED):
        if record.count(fate):
            out.append(Increment("documents", record.count(fate), {"fate": str(fate)}))
    reasons: dict[str, int] = {}
    for reject in record.rejects:
        reasons[reject["reason"]] = reasons.get(reject["reason"], 0) + 1
    out += [Increment("rejects", n, {"reason": reason}) for reason, n in sorted(reasons.items())]
    busy: dict[str, float] = {}
    for payload in record.batches:
        busy[payload.batch.actor] = busy.get(payload.batch.actor, 0.0) + payload.batch.embed_s
    out += [Increment("engine_busy_seconds", seconds, {"engine": actor}) for actor, seconds in sorted(busy.items())]
    return [i for i in out if i.value]


def status_values(status: str) -> dict[str, float]:
    """The run_status state set: 1 for `status`, 0 for the others."""
    if status not in STATUSES:
        raise ValueError(f"unknown run status {status!r}; one of {STATUSES}")
    return {name: float(name == status) for name in STATUSES}
