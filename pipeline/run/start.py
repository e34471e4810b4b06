"""A run's start, composed once for the run, its estimate, its dry run and the benchmark, so that they cannot
disagree: the lengths from the settings and the model, the tokenizer loading beside the cluster's start, the
cluster read (and, for GPU engines, waited for), the plan placed on it with its memory checked, and the store's
width and rate history read. No ray or vllm imports: the executor starts the cluster."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import structlog

from pipeline.errors import ConfigError, ModelNotHere
from pipeline.plan.job import LengthPlan, RunPlan, check_chunk_room, plan_lengths, plan_run
from pipeline.plan.placement import Cluster, engine_bundle
from pipeline.run.executor import Executor
from pipeline.run.projection import RateHistory
from pipeline.settings import Settings
from pipeline.stages.run_tokenizer import checked_tokenizer
from pipeline.stages.tokenizer import FastTokenizer
from pipeline.store.lance_store import LanceStore

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RunStart:
    """What the start leaves: the cluster read, the plan made, the tokenizer loading, the store read."""

    plan: RunPlan
    cluster: Cluster
    loading: Future
    """The tokenizer, checked against the chunk's room for its special tokens; it loads while the cluster and the
    engines start, which need nothing from it."""
    dim: int | None
    """Width of the stored vectors (None: no chunks table yet), checked against the model before anything starts."""
    history: RateHistory
    """The store's recent runs and benchmark runs as the run found them: what its projections are made from."""

    def tokenizer(self) -> FastTokenizer:
        """The loaded tokenizer; a refused one (no room for the overlaps) raises its ConfigError here."""
        return self.loading.result()


def start_run(settings: Settings, executor: Executor, store: LanceStore) -> RunStart:
    """Plan on the executor's cluster; ConfigError, with the fix, for whatever cannot work. The model is read here
    when this node has it (its lengths planned before the cluster starts, its tokenizer loading beside the start),
    else on a node of the cluster that has it (a RayJob's driver runs on a head with no model volume)."""
    try:
        lengths: LengthPlan | None = plan_lengths(settings)
    except ModelNotHere as here:
        executor.start(settings.run)
        cluster = _with_gpus(settings, executor)
        model, tokenizer = executor.read_model(settings, cluster, here)
        lengths = plan_lengths(settings, model)
        loading: Future = Future()
        try:
            check_chunk_room(settings, lengths.chunk, tokenizer.num_special_tokens)
            loading.set_result(tokenizer)
        except ConfigError as exc:
            loading.set_exception(exc)
    else:
        loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")
        loading = loader.submit(checked_tokenizer, settings, lengths)
        loader.shutdown(wait=False)
        executor.start(settings.run, loading)
        cluster = _with_gpus(settings, executor)
    plan = plan_run(settings, cluster, lengths)
    _log_plan(settings, plan, cluster, executor.logs_dir())
    return RunStart(plan, cluster, loading, store.check_chunks_table(plan.model_id), RateHistory.read(store))


def _with_gpus(settings: Settings, executor: Executor) -> Cluster:
    """The executor's cluster; for GPU engines on a cluster with none yet, once GPU nodes joined (an autoscaling
    cluster may add them; others refuse)."""
    cluster = executor.inventory()
    m, r = settings.model, settings.run
    if m.device == "cuda" and cluster.gpus == 0:
        bundle = engine_bundle("cuda", m.tensor_parallel_size, 1)
        engines = max(1, r.gpus // m.tensor_parallel_size) if r.gpus else (r.actors or 1)
        cluster = executor.wait_for_gpus(cluster, bundle, engines, r.placement_timeout_s)
    return cluster


def _log_plan(settings: Settings, plan: RunPlan, cluster: Cluster, logs: str | None) -> None:
    for note in plan.notes:
        log.warning("setting_adjusted", note=note)
    for warning in plan.memory.warnings:
        log.warning("memory_plan", warning=warning)
    log.info(
        "run_planned",
        model=plan.model_id,
        device=plan.engine.device,
        actors=plan.actors,
        engines_per_device=plan.engine.engines_per_device,
        bundle=plan.placement.bundle,
        nodes=cluster.describe(),
        max_model_len=plan.engine.max_model_len,
        max_num_batched_tokens=settings.model.max_num_batched_tokens,
        chunk_tokens=plan.chunk.max_tokens,
        logs=logs,
    )
