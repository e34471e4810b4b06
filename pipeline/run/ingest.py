"""The ingestion run in three phases: start (the plan on the executor's cluster, pipeline/run/start.py); lock and
record (one run per store, its `runs` row from start to end); execute through the executor, committing each group
as its record arrives, then maintain. The executor is the only part that knows where the stages run (Ray by
default, or this process: pipeline/run/executor.py)."""

from __future__ import annotations

from contextlib import ExitStack, closing

import structlog

from pipeline import __version__
from pipeline.errors import PipelineError, RunInterrupted
from pipeline.plan.cost import RunCost, run_cost
from pipeline.plan.job import RunPlan
from pipeline.records import RunRecord
from pipeline.run.accounts import RunAccounts, RunOutcome
from pipeline.run.executor import EngineFleet, Executor, FleetReport
from pipeline.run.executors import default_executor
from pipeline.run.interrupt import on_sigterm
from pipeline.run.progress_display import ProgressDisplay
from pipeline.run.projection import devices_per_engine, finished_run_estimate, gpu_peak
from pipeline.run.pushed_metrics import push_run
from pipeline.run.result import RunResult
from pipeline.run.run_clock import RunClock
from pipeline.run.run_row import ended_record, started_record
from pipeline.run.start import RunStart, start_run
from pipeline.runtime.faults import fault_point
from pipeline.schema import RunStatus
from pipeline.settings import Settings
from pipeline.stages.sources import Inputs
from pipeline.stages.tokenizer import FastTokenizer
from pipeline.store.group_commit import GroupCommitter
from pipeline.store.lance_store import LanceStore
from pipeline.store.locks import settings_lock
from pipeline.store.maintenance import MaintenanceReport, maintain_store
from pipeline.store.runs import RunLog, RunRow, new_run_id
from pipeline.store.session import open_session

log = structlog.get_logger(__name__)
PROGRESS_EVERY_S = 15.0


def run_ingest(settings: Settings, executor: Executor | None = None) -> RunResult:
    """Start; take the store's lock and record the run; execute, then maintain."""
    executor = executor or default_executor()
    clock = RunClock.now()
    run_id = new_run_id()
    structlog.contextvars.bind_contextvars(run_id=run_id)
    try:
        inputs = Inputs.listed(settings.input)
        store = LanceStore.from_settings(settings.store)
        with settings_lock(settings.store, run_id, settings.run.lock_ttl_s) as exclusive:
            start = start_run(settings, executor, store)
            with ExitStack() as engines:
                fleet = engines.enter_context(executor.engines(start.plan, settings, start.cluster, run_id))
                tokenizer = start.tokenizer()  # a refused tokenizer ends the run here, before it is recorded
                record = started_record(run_id, clock.started_at, settings, start.plan)
                with RunLog(store).recorded(record) as row:
                    run = Execution(settings, start, store, executor, clock, row)
                    run.embed(inputs, tokenizer, fleet)
                    engines.close()  # the engines' memory is free before maintenance
                    if settings.index.after_run:
                        run.upkeep = maintain(store, settings, start.plan.model.similarity, exclusive)
        return run.result
    finally:
        structlog.contextvars.unbind_contextvars("run_id")


class Execution:
    """One recorded run's execution: the store session, the executor's group records committed as they come and
    counted, and what the `runs` row, the summary line and the pushed metrics say at the end."""

    def __init__(
        self, settings: Settings, start: RunStart, store: LanceStore, executor: Executor, clock: RunClock, row: RunRow
    ):
        self.settings = settings
        self.start = start
        self.store = store
        self.executor = executor
        self.clock = clock
        self.row = row
        self.run_id = row.record.run_id
        self.upkeep: MaintenanceReport | None = None
        self.fleet: FleetReport | None = None
        self.final: RunResult | None = None
        self.committer = GroupCommitter(store, self.run_id, table_metadata(start.plan))
        self.accounts = RunAccounts()
        self.live = executor.live_metrics(settings.store.label)
        row.finishing.append(self._ended)
        row.ended.append(self._announce)

    def embed(self, inputs: Inputs, tokenizer: FastTokenizer, fleet: EngineFleet) -> None:
        plan = self.start.plan
        session = open_session(self.store, self.run_id, plan.chunk.fingerprint, table_metadata(plan), self.start.dim)
        fault_point("store.read")
        display = ProgressDisplay(fleet.progress, self.accounts.written, every_s=PROGRESS_EVERY_S)
        try:
            with display, on_sigterm() as interrupt:
                self.live.status(RunStatus.RUNNING)
                records = self.executor.records(self.settings, plan, inputs, tokenizer, session, fleet)
                with closing(records):
                    for record in records:
                        with interrupt.committing():
                            applied = self.committer.add(record)
                            self.accounts.group(record, applied)
                        if applied.new:
                            self.live.committed(record, applied.seconds)
                            fault_point("commit.after_group")
            self.accounts.finished(self.committer.finish(self.settings.run.delete_missing))
            self.row.status = RunStatus.SUCCEEDED
            self.fleet = fleet.report()
        except (RunInterrupted, KeyboardInterrupt) as exc:
            self.row.failed(exc)
            self.fleet = self.fleet or fleet.report()
            raise RunInterrupted(f"{self.row.error}; {self._kept()}") from None
        except PipelineError as exc:
            self.row.failed(exc)
            self.fleet = self.fleet or fleet.report()
            raise with_losses(exc, self.fleet, self._kept()) from exc

    def _kept(self) -> str:
        return (
            f"{self.committer.groups} groups ({self.accounts.rows:,} chunks) committed before it stay, and a rerun "
            f"resumes from there (nothing committed is embedded again)"
        )

    @property
    def outcome(self) -> RunOutcome:
        return self.accounts.outcome(self.committer.groups)

    @property
    def result(self) -> RunResult:
        """The run's result; once its row is finished, the one the row records (the summary line says the same)."""
        if self.final is not None:
            return self.final
        outcome, wall_s = self.outcome, self.clock.wall_s()
        s, plan = self.start, self.start.plan
        estimate = finished_run_estimate(
            self.settings, plan, s.cluster, s.history, outcome.tokens_embedded, outcome.chunks_embedded
        )
        cost = self._cost(outcome, wall_s)
        return RunResult(
            self.run_id, self.row.status, wall_s, outcome, self.clock.started_at, self.upkeep, cost, estimate
        )

    def _cost(self, outcome: RunOutcome, wall_s: float) -> RunCost:
        plan = self.start.plan
        return run_cost(
            engines=plan.actors,
            wall_s=wall_s,
            busy_s=outcome.stages.get("embed_s", 0.0),
            tokens=outcome.tokens_embedded,
            chunks=outcome.chunks_embedded,
            devices_per_engine=devices_per_engine(plan),
            shape=plan.model.shape,
            peak_tflops=gpu_peak(self.settings, plan, self.start.cluster),
            price=self.settings.run.device_hour_price,
        )

    def _ended(self, record: RunRecord) -> RunRecord:
        self.final = self.result
        return ended_record(record, self.final, self.accounts.engine_info, self.fleet)

    def _announce(self, record: RunRecord) -> None:
        """The row is written: the log line, the live status and the pushed figures say the same."""
        result = self.final
        fleet = self.fleet
        if fleet is not None and (fleet.engines_lost or fleet.engine_failures or fleet.lost_nodes):
            log.warning(
                "engines_lost_during_run",
                engines_lost=fleet.engines_lost,
                engine_restarts=fleet.engine_restarts,
                failures=fleet.engine_failures,
                nodes_lost=fleet.lost_nodes,
                engines=self.start.plan.actors,
            )
        log.info(
            "run_finished",
            status=str(record.status),
            wall_s=round(record.wall_s, 2),
            groups=result.outcome.groups,
            record_bytes=result.outcome.record_bytes,
            nodes=list(result.outcome.nodes),
            docs_in=record.docs_in,
            docs=record.docs,
            chunks=record.chunks,
            tokens=record.tokens,
            rejected=record.rejected,
        )
        self.live.status(record.status)
        m = self.settings.metrics
        if m.pushgateway:
            push_run(m.pushgateway, m.job, self.settings.store.label, result.figures(), m.timeout_s)


def with_losses(exc: PipelineError, fleet: FleetReport, kept: str) -> PipelineError:
    """A run's failure with what the cluster lost while it ran, and what it kept."""
    lost, restarts = fleet.lost_nodes or [], fleet.engine_restarts or 0
    if not lost and not restarts and not fleet.engines_lost:
        return exc
    on_them = fleet.engines_lost if fleet.engines_lost is not None else "?"
    losses = f"nodes lost: {', '.join(lost)} (engines lost: {on_them}); " if lost else f"engines lost: {on_them}; "
    return type(exc)(f"{exc}. {losses}engine restarts: {restarts}; {kept}")


def maintain(store: LanceStore, settings: Settings, similarity: str | None, exclusive: bool) -> MaintenanceReport:
    """Indexes and upkeep after the run's last commit. A failure here leaves the data committed and searchable
    (exactly, without the missing indexes), so it is recorded and logged rather than failing the run."""
    try:
        report = maintain_store(
            store, settings.index, settings.maintenance, similarity, exclusive, vectors=settings.store
        )
    except Exception as exc:  # noqa: BLE001 - recorded in the runs row; the next run or jobs.index retries
        log.error("maintenance_failed", error=f"{type(exc).__name__}: {exc}")
        report = MaintenanceReport(skipped=f"failed: {type(exc).__name__}: {exc}"[:2000])
    for line in report.lines():
        log.debug("maintenance", detail=line)  # the job prints these lines; the runs row keeps them
    return report


def table_metadata(plan: RunPlan) -> dict:
    """What the chunks table's schema metadata records of how its vectors were made; the table adds, when it is
    created, their width, dtype, whether they are of unit length and the distance to search them with
    (GroupCommitter.created_with)."""
    model = plan.model
    return {
        "model": plan.model_id,
        "model_fingerprint": model.fingerprint,
        "pooling": model.pooling.mode,
        "similarity": model.similarity,
        "max_model_len": plan.engine.max_model_len,
        "chunk_tokens": plan.chunk.max_tokens,
        "overlap_tokens": plan.chunk.overlap_tokens,
        "boundary_window": plan.chunk.boundary_window,
        "chunking": plan.chunk.fingerprint,
        "pipeline_version": __version__,
    }
