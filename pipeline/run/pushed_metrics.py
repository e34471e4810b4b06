"""A run's figures for Prometheus, pushed to a Pushgateway at its end (a batch job ends before a scrape would
see it). Names and labels are spelled here once; infra/monitoring's alert rules and dashboard use them. No ray or
vllm imports."""

from __future__ import annotations

from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

PREFIX = "embedpipe_"
GAUGES = {
    "last_run_success": "1 when the last run succeeded, 0 when it failed or was interrupted",
    "last_run_timestamp_seconds": "When the last run ended (Unix time)",
    "last_success_timestamp_seconds": "When the last successful run ended (Unix time); pushed by successful runs",
    "run_duration_seconds": "Wall seconds of the last run",
    "run_startup_seconds": "Seconds until the last run's first engine could take work",
    "run_documents": "Documents of the last run by fate (label fate: added, replaced, skipped, removed, rejected)",
    "run_documents_in": "Input documents the last run read",
    "run_chunks": "Chunks the last run stored",
    "run_tokens": "Tokens the last run embedded and stored",
    "run_tokens_per_second": "Tokens per second of the last run (wall time)",
    "run_engine_busy_ratio": "Share of the engines' held time the last run spent computing",
    "run_device_hours": "Device-hours (GPU-hours, or node-hours on CPU) the last run held",
    "run_cost": "Cost of the last run (device-hours x run.device_hour_price); absent without a price",
    "run_commit_seconds": "Driver seconds the last run spent committing",
}
"""Every gauge a run pushes, without the prefix, with its help text."""


@dataclass(frozen=True)
class RunFigures:
    succeeded: bool
    ended_at: float
    """Unix time."""
    values: dict[str, float | None]
    """Gauge name (without the prefix) -> value; None leaves it out."""
    documents: dict[str, int]
    """Fate -> documents."""


def push_run(url: str, job: str, store: str, figures: RunFigures, timeout_s: float) -> bool:
    """Push the run's figures to the gateway at `url`, grouped by `job` and `store`. A successful run replaces the
    group; a failed one replaces only what it pushes, so the group keeps the last success's time. Never raises:
    a push that fails is logged (the run's outcome is already recorded)."""
    from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, pushadd_to_gateway

    registry = CollectorRegistry()

    def gauge(name: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(PREFIX + name, GAUGES[name], labels, registry=registry)

    gauge("last_run_success").set(1 if figures.succeeded else 0)
    gauge("last_run_timestamp_seconds").set(figures.ended_at)
    if figures.succeeded:
        gauge("last_success_timestamp_seconds").set(figures.ended_at)
    for name, value in figures.values.items():
        if value is not None:
            gauge(name).set(value)
    documents = gauge("run_documents", ("fate",))
    for fate, count in figures.documents.items():
        documents.labels(fate=fate).set(count)
    push = push_to_gateway if figures.succeeded else pushadd_to_gateway
    try:
        push(url, job=job, registry=registry, grouping_key={"store": store}, timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 - the gateway being down must not fail a finished run
        log.warning("metrics_not_pushed", gateway=url, error=f"{type(exc).__name__}: {exc}"[:500])
        return False
    log.info("metrics_pushed", gateway=url, job=job, store=store)
    return True
