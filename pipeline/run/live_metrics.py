"""What a run reports while it runs, as Prometheus metrics: their names, kinds and help, what one committed group
adds to them, and the driver's series (LiveMetrics). The executor says where they go: on Ray, Ray's metrics API,
exported from each node's metrics agent with Ray's `ray_` prefix (pipeline/run/ray/metrics.py); in process, a
registry of the process's own. Names are spelled here once; infra/monitoring's dashboard uses them. No ray or vllm
imports."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pipeline import schema as s
from pipeline.records import GroupRecord
from pipeline.run.progress import Rate

PREFIX = "embedpipe_"
COMMON_TAGS = ("store",)
"""Tags every series carries besides those Ray adds (node, worker, session): the store the run writes. Not the job:
a scrape sets its own `job` label."""
STATUSES = tuple(str(status) for status in s.RunStatus)


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


class Series(Protocol):
    """One metric as Ray's metrics API shapes it: values with their tags."""

    def inc(self, value: float, tags: dict[str, str]) -> None: ...

    def set(self, value: float, tags: dict[str, str]) -> None: ...

    def observe(self, value: float, tags: dict[str, str]) -> None: ...


class LiveMetrics:
    """The driver's series for one run writing `store`, made by `series` (name without prefix, its Metric)."""

    def __init__(self, store: str, series: Callable[[str, Metric], Series]):
        self.tags = {"store": store}
        self.series = {name: series(name, spec) for name, spec in LIVE.items()}
        self.rate = Rate(window_s=RATE_WINDOW_S)
        self.tokens = 0

    def status(self, status: str) -> None:
        for name, value in status_values(status).items():
            self.series["run_status"].set(value, tags={**self.tags, "status": name})
        if status == s.RunStatus.RUNNING:
            self.series["run_started_timestamp_seconds"].set(time.time(), tags=self.tags)

    def committed(self, record: GroupRecord, commit_s: float) -> None:
        for inc in group_increments(record):
            self.series[inc.name].inc(inc.value, tags={**self.tags, **inc.tags})
        self.series["commit_seconds"].observe(commit_s, tags=self.tags)
        self.tokens += record.tokens
        self.rate.observe(time.monotonic(), self.tokens)
        self.series["tokens_per_second"].set(self.rate.tokens_per_s() or 0.0, tags=self.tags)


class RegisteredSeries:
    """A metric of a prometheus_client registry, called as Ray's are (the in-process executor's series)."""

    def __init__(self, registry, name: str, spec: Metric):
        import prometheus_client as prom

        labels = (*COMMON_TAGS, *spec.tags)
        kind = {"counter": prom.Counter, "gauge": prom.Gauge}.get(spec.kind)
        if kind is None:
            self.metric = prom.Histogram(PREFIX + name, spec.help, labels, registry=registry, buckets=COMMIT_BUCKETS)
        else:
            self.metric = kind(PREFIX + name, spec.help, labels, registry=registry)

    def inc(self, value: float, tags: dict[str, str]) -> None:
        self.metric.labels(**tags).inc(value)

    def set(self, value: float, tags: dict[str, str]) -> None:
        self.metric.labels(**tags).set(value)

    def observe(self, value: float, tags: dict[str, str]) -> None:
        self.metric.labels(**tags).observe(value)
