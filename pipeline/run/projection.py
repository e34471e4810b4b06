"""What a run of these inputs would take and cost, projected from a rate: the store's own recent runs alike, else
its benchmark runs alike, else the model's FLOPs at the device's peak. The estimate prints it before a run; every
run records what it would have projected for the tokens it embedded. No ray or vllm imports."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from pipeline.plan.compute import peak_tflops
from pipeline.plan.estimate import Projection, Rate, Tally, project, rate_from_bench, rate_from_flops, rate_from_runs
from pipeline.plan.job import RunPlan
from pipeline.plan.memory import resolve_dtype
from pipeline.plan.placement import Cluster
from pipeline.records import RunRecord
from pipeline.settings import Settings
from pipeline.store.lance_store import LanceStore
from pipeline.store.runs import RunLog

RUN_COLUMNS = ["run_id", "status", "model", "max_model_len", "max_num_batched_tokens", "tokens", "wall_s"]
RUN_COLUMNS += ["startup_s", "maintenance_s", "engine_s", "settings", "started_at"]
RECENT_RUNS = 20
BENCH_COLUMNS = ["kind", "model", "device", "max_model_len", "max_num_batched_tokens", "tokens_per_s", "startup_s"]
BENCH_COLUMNS += ["params", "error"]


@dataclass(frozen=True)
class RateHistory:
    """What a projection's rate is measured from: the store's recent runs, and its benchmark table's pipeline runs
    (`python -m benchmarks.bench` against this store). Neither grows with the store's chunks."""

    runs: list[RunRecord]
    bench: list[dict]
    """Rows of the benchmark table (benchmarks/bench_table.py), which only the benchmark writes."""

    @classmethod
    def read(cls, store: LanceStore) -> RateHistory:
        bench = store.read_present(store.names.bench, "kind = 'pipeline'", BENCH_COLUMNS)
        return cls(RunLog(store).recent(RECENT_RUNS, RUN_COLUMNS), bench)


def run_rate(settings: Settings, plan: RunPlan, cluster: Cluster, history: RateHistory, tally: Tally) -> Rate | None:
    """The rate a projection uses: the store's own recent runs alike, else its benchmark runs alike, else the FLOPs
    at the device's peak."""
    alike = (plan.model_id, plan.engine.max_model_len, settings.model.max_num_batched_tokens, plan.engine.device)
    rate = rate_from_runs(history.runs, *alike) or rate_from_bench(history.bench, *alike)
    if rate is not None or plan.engine.device != "cuda" or not tally.lengths:
        return rate
    peak = gpu_peak(settings, plan, cluster)
    return rate_from_flops(plan.model.shape, tally.lengths, peak) if peak else None


def gpu_peak(settings: Settings, plan: RunPlan, cluster: Cluster) -> float | None:
    """The 16-bit peak TFLOP/s of the cluster's smallest GPU at the engine's dtype (None on CPUs or unknown GPUs)."""
    if plan.engine.device != "cuda":
        return None
    gpu = cluster.smallest_gpu()
    peak, _ = peak_tflops(gpu.gpu_name if gpu else None, resolve_dtype(settings.model.dtype, plan.model.shape))
    return peak


def project_run(settings: Settings, plan: RunPlan, tokens: float, rate: Rate | None) -> Projection | None:
    if rate is None:
        return None
    return project(tokens, plan.actors, rate, devices_per_engine(plan), settings.run.device_hour_price)


def devices_per_engine(plan: RunPlan) -> float:
    """What one engine holds: its GPUs (or its share of one), or its share of a CPU node."""
    if plan.engine.device == "cuda":
        return plan.placement.bundle.get("GPU", 1.0)
    nodes = len(set(plan.placement.nodes)) if plan.placement.nodes else 1
    return nodes / plan.actors


def finished_run_estimate(
    settings: Settings, plan: RunPlan, cluster: Cluster, history: RateHistory, tokens: int, chunks: int
) -> Projection | None:
    """What the estimate would have projected for a finished run, knowing the tokens it embedded: the same rate
    (from the runs before it), for its record beside what it took."""
    if not tokens or not chunks:
        return None
    lengths = Counter({max(1, round(tokens / chunks)): chunks})
    return project_run(settings, plan, tokens, run_rate(settings, plan, cluster, history, Tally(lengths=lengths)))
