"""The Ray executor: a run's stages on a Ray cluster (the one RAY_ADDRESS names, else a local Ray of this machine's
size). The only way the run reaches Ray: it composes the modules beside it (cluster, engines, stages, progress
board, metrics) behind the executor protocol (pipeline/run/executor.py)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass

import ray
import structlog

from pipeline.errors import ModelNotHere
from pipeline.plan.estimate import Sample, SampledTally
from pipeline.plan.job import RunPlan, resolve_device
from pipeline.plan.model_dir import ModelDir
from pipeline.plan.placement import Cluster
from pipeline.records import GroupRecord
from pipeline.run.executor import FleetReport
from pipeline.run.live_metrics import LiveMetrics
from pipeline.run.ray import cluster as ray_cluster
from pipeline.run.ray.cpu_priority import HelperPriority, PriorityKeeper, engines_ready_flag
from pipeline.run.ray.engines import Engines, engine_actors
from pipeline.run.ray.group_records import iter_records
from pipeline.run.ray.metrics import ray_series
from pipeline.run.ray.model_reader import read_model_on_cluster
from pipeline.run.ray.progress_board import board_reader, progress_board
from pipeline.run.ray.stages import build_dataset
from pipeline.run.ray.tally import tally_chunks
from pipeline.settings import RunSettings, Settings
from pipeline.stages.sources import Inputs
from pipeline.stages.tokenizer import FastTokenizer
from pipeline.store.session import StoreSession
from pipeline.store.stored_keys import StoredKeys

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RayFleet:
    """The run's engine actors, with its progress board and the priority its helper stages step aside to."""

    engines: Engines
    board: object
    priority: HelperPriority
    cluster: Cluster
    """The cluster as the plan saw it: what a node lost is measured against."""

    def progress(self) -> dict[str, int]:
        return board_reader(self.board)()

    def report(self) -> FleetReport:
        try:
            told = self.engines.report()
            lost = ray_cluster.lost_nodes(self.cluster)
        except Exception as exc:  # noqa: BLE001 - a cluster too broken to say is recorded as such
            log.warning("fleet_unknown", error=f"{type(exc).__name__}: {exc}"[:500])
            return FleetReport()
        return FleetReport(
            told.get("engines_lost"),
            told.get("engine_restarts"),
            told.get("engines_hung"),
            lost,
            told.get("engine_failures"),
        )


class RayExecutor:
    def start(self, run: RunSettings, pending: Future | None = None) -> None:
        if ray_cluster.joins_cluster() and pending is not None:
            # Joining a cluster from `ray job submit`, ray.init moves the process into the job's working
            # directory; an import running beside it then fails (transformers resolves a path at import).
            pending.result()
        ray_cluster.start_ray(run)
        self.settle_s = run.scale_settle_s

    def inventory(self) -> Cluster:
        return ray_cluster.cluster_inventory()

    def wait_for_gpus(self, cluster: Cluster, bundle: dict[str, float], engines: int, timeout_s: float) -> Cluster:
        settle_s = getattr(self, "settle_s", RunSettings().scale_settle_s)
        return ray_cluster.wait_for_gpu_nodes(cluster, bundle, engines, timeout_s, settle_s)

    def logs_dir(self) -> str | None:
        return ray_cluster.logs_dir()

    def read_model(self, settings: Settings, cluster: Cluster, here: ModelNotHere) -> tuple[ModelDir, FastTokenizer]:
        device = resolve_device(settings.model.device, cluster.gpus)
        return read_model_on_cluster(settings.model, cluster, here, device)

    @contextmanager
    def engines(self, plan: RunPlan, settings: Settings, cluster: Cluster, run_id: str) -> Iterator[RayFleet]:
        """The progress board and the engines, loading from now on while the store is read and Ray Data starts,
        reads and chunks; the helper stages step aside once an engine on their node is ready."""
        priority = HelperPriority(settings.run.helper_niceness, engines_ready_flag(run_id))
        with progress_board() as board:
            with engine_actors(plan, settings.logging, settings.run, cluster, board, priority) as engines:
                with PriorityKeeper(priority):
                    yield RayFleet(engines, board, priority, cluster)

    def records(
        self,
        settings: Settings,
        plan: RunPlan,
        inputs: Inputs,
        tokenizer: FastTokenizer,
        session: StoreSession,
        fleet: RayFleet,
    ) -> Iterator[GroupRecord]:
        dataset = build_dataset(settings, plan, inputs, tokenizer, session, fleet.engines, fleet.board, fleet.priority)
        return iter_records(dataset, fleet.engines)

    def tally(
        self,
        settings: Settings,
        plan: RunPlan,
        inputs: Inputs,
        tokenizer: FastTokenizer,
        keys: StoredKeys | None,
        sample: Sample | None,
    ) -> SampledTally:
        return tally_chunks(settings, plan, inputs, tokenizer, keys, sample)

    def live_metrics(self, store: str) -> LiveMetrics:
        return LiveMetrics(store, ray_series)

    @staticmethod
    def stop() -> None:
        """Shut Ray down (and a local Ray's processes) before the next engine starts outside it."""
        if ray.is_initialized():
            ray_cluster.stop_ray()
