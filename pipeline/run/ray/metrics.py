"""A run's live metrics through Ray's metrics API: the driver records them as it commits, and the metrics agent of
its node exports them on Ray's metrics port (`ray start --metrics-export-port`), where a KubeRay cluster's scrape
of Ray's metrics finds them next to Ray's own, named `ray_embedpipe_*`. A local Ray started by the run exports
none (its metrics collection is off)."""

from __future__ import annotations

from ray.util import metrics

from pipeline.run.live_metrics import (
    COMMIT_BUCKETS,
    COMMON_TAGS,
    PREFIX,
    Metric,
)


def ray_series(name: str, spec: Metric):
    """A live metric as a Ray metric, exported by the metrics agent of the driver's node."""
    tag_keys = (*COMMON_TAGS, *spec.tags)
    if spec.kind == "counter":
        return metrics.Counter(PREFIX + name, description=spec.help, tag_keys=tag_keys)
    if spec.kind == "gauge":
        return metrics.Gauge(PREFIX + name, description=spec.help, tag_keys=tag_keys)
    return metrics.Histogram(PREFIX + name, description=spec.help, boundaries=list(COMMIT_BUCKETS), tag_keys=tag_keys)
