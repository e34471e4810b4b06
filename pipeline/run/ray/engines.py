"""The engines on Ray: their placement group (waited on for a bounded time) and the actors that host them. The
gate that starts the engines sharing a GPU one after another is in start_gate.py, their supervisor in supervisor.py
and the embed stage's feeders in feeder.py."""

from __future__ import annotations

import gc
import itertools
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pyarrow as pa
import ray
import structlog
from ray.exceptions import RayError
from ray.util.placement_group import NODE_ID_LABEL_KEY as NODE_ID_LABEL
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from pipeline.engine.factory import make_embedder
from pipeline.engine.slots import SLOT_ENV, node_slots
from pipeline.errors import EngineError, PipelineError, PlacementError
from pipeline.log import configure_logging
from pipeline.plan.engine_spec import EngineSpec
from pipeline.plan.job import RunPlan
from pipeline.plan.placement import Cluster, bundle_shape
from pipeline.run.progress import embedded_counts
from pipeline.run.ray.cluster import on_driver_node
from pipeline.run.ray.cpu_priority import HelperPriority, mark_engines_ready
from pipeline.run.ray.feeder import ENGINE_ENV
from pipeline.run.ray.start_gate import StartGate, wait_turn
from pipeline.run.ray.supervisor import CONTROL_TIMEOUT_S, NODE_VERDICT_S, EngineSupervisor
from pipeline.runtime.faults import fault_point
from pipeline.settings import LoggingSettings, RunSettings
from pipeline.stages.embed import EmbedStep

log = structlog.get_logger(__name__)

ENGINE_RESTARTS = 4
"""Times Ray restarts an engine actor whose process died, retrying the calls it held."""
PLACEMENT_LOG_EVERY_S = 30.0
NO_DEMOTION = HelperPriority(0, "")
LAST_WORDS = 50
"""Log lines an engine keeps for the supervisor to quote if it hangs."""


@ray.remote(concurrency_groups={"control": 1})
class EngineActor:
    """Hosts one engine and embeds chunk batches by their token ids. Started by the driver as soon as the plan
    places it, so the engine loads while Ray Data starts, reads and chunks; its process runs nothing but the
    engine. Once ready, it leaves the flag that lets the helper stages on its node step aside. It tells the run's
    supervisor when it (re)starts, and answers the supervisor on a thread of its own even while a call hangs."""

    def __init__(self, index: int, logs: LoggingSettings, spec: EngineSpec, run: EngineRun):
        configure_logging(logs.level, logs.json_format)
        self.last_lines = _capture_log_lines()
        self.index, self.board, self.supervisor = index, run.board, run.supervisor
        failure: PipelineError | None = None
        context = ray.get_runtime_context()
        slot = os.environ.get(SLOT_ENV)
        device_key = f"{context.get_node_id()}:{','.join(context.get_accelerator_ids().get('GPU', []))}"
        actor_id = context.get_actor_id()
        # each engine before it on the GPU may take a whole start
        entered = wait_turn(run.gate, device_key, actor_id, run.start_timeout_s * max(1, spec.engines_per_device))
        if run.supervisor is not None:  # its start counts from here, not from its wait at the gate
            run.supervisor.starting.remote(index, context.was_current_actor_reconstructed, context.get_node_id())
        try:
            fault_point("engine.start")
            embedder = make_embedder(spec, int(slot) if slot else None)
        except Exception as exc:  # noqa: BLE001 - a failed start is reported with its message, then the process exits
            failure = _message_only(exc)  # the original's frames would hold the half-built engine's memory
        finally:
            if entered:
                run.gate.leave.remote(device_key, actor_id)
        if failure is not None:
            self._exit(str(failure))
        if run.supervisor is not None:
            run.supervisor.started.remote(index)
        self.step = EmbedStep(embedder, engine_label(context.get_node_id(), embedder.info()))
        if run.priority.niceness:
            mark_engines_ready(run.priority.engines_ready_flag)
        if self.board is not None:
            self.board.add.remote({"engines_ready": 1})

    @ray.method(concurrency_group="control")
    def last_words(self) -> list[str]:
        """The engine's last log lines (vLLM's and the stand-ins'), answered while an embed call runs."""
        return list(self.last_lines)

    def embed(self, batch: pa.Table) -> pa.Table:
        fault_point("engine.before_embed")
        try:
            out = self.step(batch)
        except Exception as exc:  # noqa: BLE001 - EmbedStep keeps a rejected input as a reject row: this is the engine
            self._exit(f"{type(exc).__name__}: {exc}" if not isinstance(exc, PipelineError) else str(exc))
        if self.board is not None:
            self.board.add.remote(embedded_counts(batch))
        return out

    def _exit(self, reason: str) -> None:
        """The engine is broken (a CUDA error, a dead tensor-parallel worker, vLLM's "Executor failed", a failed
        start): tell the supervisor why, then end this process, so that Ray restarts the actor on a fresh process
        (its device context gone with it) and the feeder hands the batch to another engine. Once Ray's restarts are
        spent the engine is lost; the run goes on while run.min_engines are left."""
        reason = reason.strip().splitlines()[0][:500] if reason.strip() else "an engine failed"
        log.error("engine_failed", engine=self.index, error=reason, action="exiting so that Ray restarts it")
        if self.supervisor is not None:
            try:
                ray.get(self.supervisor.failed.remote(self.index, reason), timeout=CONTROL_TIMEOUT_S)
            except RayError:
                pass
        _release_device_memory()
        os._exit(1)


@dataclass(frozen=True)
class EngineRun:
    """What every engine actor of a run shares: the run's progress board, supervisor and start gate, its helpers'
    priority and how long a start may hold the next engine on its GPU."""

    board: object = None
    supervisor: object = None
    gate: object = None
    priority: HelperPriority = NO_DEMOTION
    start_timeout_s: float = 1200.0


class _Lines(logging.Handler):
    def __init__(self, lines: deque):
        super().__init__(logging.INFO)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}"[:500])


def _capture_log_lines() -> deque:
    """The last lines this process logs through the standard library (vLLM's own logger does not propagate)."""
    lines: deque = deque(maxlen=LAST_WORDS)
    for name in ("", "vllm"):
        logging.getLogger(name).addHandler(_Lines(lines))
    return lines


def _message_only(exc: BaseException) -> PipelineError:
    """A start failure as a fresh exception holding the message alone: the original's traceback frames hold the
    half-built engine, and with it its GPU memory, for as long as the exception lives."""
    if isinstance(exc, PipelineError):
        return type(exc)(str(exc))
    return EngineError(f"an engine could not start: {type(exc).__name__}: {exc}")


def _release_device_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def engine_label(node_id: str, info: dict) -> str:
    """How batch rows name their engine: node and process, and the cores it is bound to when it shares a node."""
    label = f"{node_id[:8]}:{os.getpid()}"
    if info.get("engines_per_device", 1) > 1 and info.get("cpu_bind") not in (None, "nobind"):
        label += f" cores {info['cpu_bind']}"
    return label


@dataclass(frozen=True)
class Engines:
    """The run's engine actors, their supervisor, and the remote args of the feeder for each: its engine's index
    and node."""

    actors: list
    nodes: list[str]
    feeders: Iterator[int]
    supervisor: object = None
    bundle: dict = field(default_factory=dict)
    """What each engine's bundle holds."""
    min_engines: int = 1

    def feeder_args(self) -> dict:
        index = next(self.feeders) % len(self.actors)
        return {
            "scheduling_strategy": NodeAffinitySchedulingStrategy(self.nodes[index], soft=True),
            "runtime_env": {"env_vars": {ENGINE_ENV: str(index)}},
        }

    def failure(self) -> PipelineError | None:
        """Why the engines cannot go on, when fewer than run.min_engines are left (the first failure's message; Ray
        Data reports a failed call by its own), else None."""
        if self.supervisor is None:
            return None
        try:
            why = ray.get(self.supervisor.verdict.remote(self.min_engines), timeout=NODE_VERDICT_S)
        except RayError:
            return None
        return EngineError(why) if why else None

    def report(self) -> dict:
        """Restarts and hangs of the run's engines, as the supervisor counted them (empty if it cannot say)."""
        if self.supervisor is None:
            return {}
        try:
            return ray.get(self.supervisor.report.remote(), timeout=NODE_VERDICT_S + 4 * CONTROL_TIMEOUT_S)
        except RayError:
            return {}


@contextmanager
def engine_actors(
    plan: RunPlan,
    logs: LoggingSettings,
    run: RunSettings,
    cluster: Cluster,
    board=None,
    priority: HelperPriority = NO_DEMOTION,
) -> Iterator[Engines]:
    """Start the run's engines now: one bundle per engine (its CPUs, and its GPU share or whole tensor-parallel
    group), spread over nodes (one per node before two on one) and reserved before any task of the run can take
    the room, and one engine actor in each, with its slot among the engines on its node (which cores it is bound
    to on a CPU node). Engines sharing a GPU start one after another. The engines load while the rest of the run
    starts; they, the gate, the supervisor and the bundles are released at the end."""
    bundle, node_of = plan.placement.bundle, list(plan.placement.nodes)
    group = ray.util.placement_group(
        [bundle] * plan.actors, strategy="SPREAD", bundle_label_selector=[{NODE_ID_LABEL: n} for n in node_of]
    )
    try:
        _wait_placed(group, plan, cluster, run.placement_timeout_s)
    except BaseException:
        ray.util.remove_placement_group(group)
        raise
    slots = node_slots(node_of)
    shares_gpus = plan.engine.device == "cuda" and plan.engine.engines_per_device > 1
    shared = EngineRun(
        board=board,
        supervisor=EngineSupervisor.options(**on_driver_node()).remote(run.engine_hangs, run.engine_start_timeout_s),
        gate=StartGate.options(**on_driver_node()).remote(run.engine_start_timeout_s) if shares_gpus else None,
        priority=priority,
        start_timeout_s=run.engine_start_timeout_s,
    )
    actors = [
        EngineActor.options(
            num_cpus=bundle["CPU"],
            num_gpus=bundle.get("GPU", 0),
            max_restarts=ENGINE_RESTARTS,
            max_task_retries=ENGINE_RESTARTS,
            scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i),
            runtime_env={"env_vars": {SLOT_ENV: str(slots[i] % plan.engine.engines_per_device)}},
        ).remote(i, logs, plan.engine, shared)
        for i in range(plan.actors)
    ]
    shared.supervisor.attach.remote(actors, node_of)
    try:
        yield Engines(actors, node_of, itertools.count(), shared.supervisor, plan.placement.bundle, run.min_engines)
    finally:
        for actor in actors:
            ray.kill(actor)
        for helper in (shared.gate, shared.supervisor):
            if helper is not None:
                ray.kill(helper)
        ray.util.remove_placement_group(group)


def _wait_placed(group, plan: RunPlan, cluster: Cluster, timeout_s: float) -> None:
    """Wait for Ray to reserve every engine's bundle, at most `timeout_s`, saying so every half minute."""
    started = time.monotonic()
    ready = group.ready()
    while True:
        left = timeout_s - (time.monotonic() - started)
        if left <= 0:
            raise PlacementError(_unplaced(plan, cluster, timeout_s))
        done, _ = ray.wait([ready], timeout=min(PLACEMENT_LOG_EVERY_S, left))
        if done:
            return
        log.warning(
            "waiting_for_placement",
            engines=plan.actors,
            bundle=plan.placement.bundle,
            waited_s=round(time.monotonic() - started),
            timeout_s=timeout_s,
        )


def _unplaced(plan: RunPlan, cluster: Cluster, timeout_s: float) -> str:
    bundle = bundle_shape(plan.placement.bundle)
    return (
        f"Ray could not place the {plan.actors} engines ({plan.actors} bundles of {bundle}) within {timeout_s:g} s "
        f"(run.placement_timeout_s). The cluster's nodes have {cluster.describe()}, so another job may hold "
        f"some of them, or nodes left: see `ray status` (Usage, and Pending demands) and `ray list "
        f"placement-groups`; free them, lower run.actors, or raise run.placement_timeout_s to wait longer. Nothing "
        f"was embedded or recorded"
    )
