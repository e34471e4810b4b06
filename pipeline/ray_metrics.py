"""A run's live metrics through Ray's metrics API: the driver records them as it commits, and the metrics agent of
its node exports them on Ray's metrics port (`ray start --metrics-export-port`), where a KubeRay cluster's scrape
of Ray's metrics finds them next to Ray's own, named `ray_embedpipe_*`. A local Ray started by the run exports
none (its metrics collection is off)."""

from __future__ import annotations

import time

from ray.util import metrics

from pipeline.records import GroupRecord
from pipeline.runtime.live_metrics import (
    COMMIT_BUCKETS,
    COMMON_TAGS,
    LIVE,
    PREFIX,
    RATE_WINDOW_S,
    group_increments,
    status_values,
)
from pipeline.runtime.progress import Rate


class LiveMetrics:
    """The driver's series for one run writing `store`."""

    def __init__(self, store: str):
        self.tags = {"store": store}
        self.series = {name: _series(name) for name in LIVE}
        self.rate = Rate(window_s=RATE_WINDOW_S)
        self.tokens = 0

    def status(self, status: str) -> None:
        for name, value in status_values(status).items():
            self.series["run_status"].set(value, tags={**self.tags, "status": name})
        if status == "running":
            self.series["run_started_timestamp_seconds"].set(time.time(), tags=self.tags)

    def committed(self, record: GroupRecord, commit_s: float) -> None:
        for inc in group_increments(record):
            self.series[inc.name].inc(inc.value, tags={**self.tags, **inc.tags})
        self.series["commit_seconds"].observe(commit_s, tags=self.tags)
        self.tokens += record.tokens
        self.rate.observe(time.monotonic(), self.tokens)
        self.series["tokens_per_second"].set(self.rate.tokens_per_s() or 0.0, tags=self.tags)


def _series(name: str):
    spec = LIVE[name]
    tag_keys = (*COMMON_TAGS, *spec.tags)
    if spec.kind == "counter":
        return metrics.Counter(PREFIX + name, description=spec.help, tag_keys=tag_keys)
    if spec.kind == "gauge":
        return metrics.Gauge(PREFIX + name, description=spec.help, tag_keys=tag_keys)
    return metrics.Histogram(PREFIX + name, description=spec.help, boundaries=list(COMMIT_BUCKETS), tag_keys=tag_keys)
