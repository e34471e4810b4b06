"""`jobs.ingest --estimate`: the run's read, plan and chunk stages on the cluster, with no engine and no write,
tallied into what the run would embed (exact tokens per fate, with the run's own tokenizer and chunker) and
projected into time and cost; and the same projection for a finished run, recorded next to what it took."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from pipeline.plan.compute import peak_tflops
from pipeline.plan.estimate import (
    Projection,
    Rate,
    Sample,
    SampledTally,
    Tally,
    project,
    rate_from_bench,
    rate_from_flops,
    rate_from_runs,
    scaled_tokens,
)
from pipeline.plan.job import RunPlan, plan_lengths, plan_run
from pipeline.plan.memory import resolve_dtype
from pipeline.plan.placement import Cluster
from pipeline.runtime.process_memory import driver_peak_mb
from pipeline.settings import Settings
from pipeline.stages.run_tokenizer import checked_tokenizer
from pipeline.stages.sources import Inputs
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

    runs: list[dict]
    bench: list[dict]

    @classmethod
    def read(cls, store: LanceStore) -> RateHistory:
        bench = store.read_present(store.names.bench, "kind = 'pipeline'", BENCH_COLUMNS)
        return cls(RunLog(store).recent(RECENT_RUNS, RUN_COLUMNS), bench)


@dataclass(frozen=True)
class Estimate:
    counted: SampledTally
    """The chunk stage's tally, and with a sample the pieces it read of the input's."""
    sample: Sample | None
    tokens: float
    """Tokens to embed in the whole input (scaled up from a sample)."""
    interval: float
    """Half-width of the 95% interval on `tokens` (0 when every document was chunked)."""
    engines: int
    projection: Projection | None
    seconds: float
    """What the estimate itself took."""
    driver_mb: float
    """The driver's peak resident memory."""

    def lines(self) -> list[str]:
        t, c = self.counted.tally, self.counted
        how = (
            f"a seeded sample of {self.sample.fraction:.0%} of the input's pieces (seed {self.sample.seed}: "
            f"{c.sampled:,} of {c.pieces:,} files or parts of files read), scaled up"
            if self.sample and c.pieces
            else "every document chunked with the run's tokenizer and chunker"
        )
        scale = 1 / self.sample.fraction if self.sample else 1.0
        docs = ", ".join(f"{t.docs[k] * scale:,.0f} {label}" for k, label in _FATE_LABELS)
        tokens = f"{self.tokens:,.0f}" + (f" +- {self.interval:,.0f} (95%)" if self.sample else "")
        p = t.percentiles()
        lines = [
            f"Estimate from {how}:",
            f"  documents: {docs}" + (" (removals are not estimated from a sample)" if self.sample else ""),
            f"  to embed: {t.chunks_to_embed * scale:,.0f} chunks, {tokens} tokens",
        ]
        if p:
            lines.append(
                "  chunk tokens: "
                + ", ".join(f"p{round(q * 100)} {v:,}" for q, v in p.items())
                + f", max {max(t.lengths):,}"
            )
        if self.projection is not None:
            lines.append(
                f"  projected with {self.engines} engine{'s' if self.engines > 1 else ''}: {self.projection.text()}"
            )
        else:
            lines.append(
                "  projected: no rate known (no earlier run of this store with this model, limits and device, and no "
                "known peak for the device): run once, or see python -m benchmarks.bench"
            )
        lines.append(
            f"  the estimate took {self.seconds:,.1f} s (read, plan and chunk; no engine started); driver peak "
            f"{self.driver_mb:,.0f} MiB"
        )
        return lines


_FATE_LABELS = (("new", "new"), ("changed", "changed"), ("unchanged", "unchanged"), ("removed", "removed"))
_FATE_LABELS += (("rejected", "rejected"),)


def run_estimate(settings: Settings, sample: Sample | None = None) -> Estimate:
    from pipeline import ray_cluster, ray_stages

    started = time.perf_counter()
    inputs = Inputs.listed(settings.input)
    store = LanceStore.from_settings(settings.store)
    lengths = plan_lengths(settings)
    tokenizer = checked_tokenizer(settings, lengths)
    ray_cluster.start_ray(settings.run)
    cluster = ray_cluster.cluster_inventory()
    plan = plan_run(settings, cluster)
    store.check_chunks_table(plan.model_id)
    counted = ray_stages.tally_chunks(settings, plan, inputs, tokenizer, store.stored_keys(), sample)
    tally = counted.tally
    tokens, interval = scaled_tokens(tally, sample.fraction if sample else 1.0)
    rate = run_rate(settings, plan, cluster, RateHistory.read(store), tally)
    projection = _project(settings, plan, tokens, rate)
    seconds = time.perf_counter() - started
    return Estimate(counted, sample, tokens, interval, plan.actors, projection, seconds, driver_peak_mb())


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


def _project(settings: Settings, plan: RunPlan, tokens: float, rate: Rate | None) -> Projection | None:
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
    return _project(settings, plan, tokens, run_rate(settings, plan, cluster, history, Tally(lengths=lengths)))
