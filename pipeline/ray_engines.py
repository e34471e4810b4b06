"""The engines on Ray: their placement group (waited on for a bounded time), the actors that host them, the gate
that starts the engines sharing one GPU one after another, and the embed stage's feeders."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow as pa
import ray
import structlog
from ray.exceptions import GetTimeoutError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from pipeline.engine.factory import make_embedder
from pipeline.engine.slots import SLOT_ENV, node_slots
from pipeline.engine.vllm import EngineSpec
from pipeline.errors import EngineError, PipelineError, PlacementError
from pipeline.log import configure_logging
from pipeline.plan.job import JobPlan
from pipeline.plan.placement import Cluster, bundle_shape
from pipeline.runtime.cpu_priority import HelperPriority, mark_engines_ready
from pipeline.runtime.progress import embedded_counts
from pipeline.settings import LoggingSettings, RunSettings
from pipeline.stages.embed import EmbedStep, has_chunks, passed_through

log = structlog.get_logger(__name__)

ENGINE_ENV = "EMBEDPIPE_ENGINE_INDEX"
"""Environment variable naming the engine actor an embed-stage feeder sends its batches to."""
ENGINE_RESTARTS = 4
"""Times Ray restarts an engine actor whose process died, retrying the calls it held."""
PLACEMENT_LOG_EVERY_S = 30.0
NO_DEMOTION = HelperPriority(0, "")


@ray.remote(num_cpus=0)
class StartGate:
    """Lets one engine at a time start on each GPU. vLLM sizes an engine's KV cache from how much the whole
    device's free memory drops during its profile run, so engines starting together on one GPU are charged for
    each other's weights and activations: "No available memory for the cache blocks", a failed profiling assertion,
    or silently a smaller cache (vllm#55827, vllm#9198). Started one after another, each profiles alone, and each
    takes its share of the device (gpu_memory_utilization / engines) from what vLLM itself measured. Giving vLLM
    kv_cache_memory_bytes from the memory planner would also skip the delta sizing, but it overrides
    gpu_memory_utilization with an estimate no GPU has checked yet, and the profile runs would still overlap."""

    def __init__(self):
        self.locks: dict[str, asyncio.Lock] = {}

    async def enter(self, key: str) -> None:
        await self.locks.setdefault(key, asyncio.Lock()).acquire()

    async def leave(self, key: str) -> None:
        lock = self.locks.get(key)
        if lock is not None and lock.locked():
            lock.release()


@ray.remote
class EngineActor:
    """Hosts one engine and embeds chunk batches by their token ids. Started by the driver as soon as the plan
    places it, so the engine loads while Ray Data starts, reads and chunks; its process runs nothing but the
    engine. Once ready, it leaves the flag that lets the helper stages on its node step aside."""

    def __init__(
        self,
        logs: LoggingSettings,
        spec: EngineSpec,
        board=None,
        priority: HelperPriority = NO_DEMOTION,
        gate=None,
        start_timeout_s: float = 1200.0,
    ):
        configure_logging(logs.level, logs.json_format)
        self.board = board
        self.failure: PipelineError | None = None
        slot = os.environ.get(SLOT_ENV)
        context = ray.get_runtime_context()
        device_key = f"{context.get_node_id()}:{','.join(context.get_accelerator_ids().get('GPU', []))}"
        entered = _enter(gate, device_key, start_timeout_s)
        try:
            embedder = make_embedder(spec, int(slot) if slot else None)
        except Exception as exc:  # noqa: BLE001 - raised by each call instead: an actor that fails to start dies
            self.failure = _message_only(exc)  # with a message only, and the run's error would lose what it said
        finally:
            if entered:
                gate.leave.remote(device_key)
        if self.failure is not None:
            _release_device_memory()
            return
        self.step = EmbedStep(embedder, engine_label(context.get_node_id(), embedder.info()))
        if priority.niceness:
            mark_engines_ready(priority.engines_ready_flag)
        if board is not None:
            board.add.remote({"engines_ready": 1})

    def start_failure(self) -> PipelineError | None:
        return self.failure

    def embed(self, batch: pa.Table) -> pa.Table:
        if self.failure is not None:
            raise type(self.failure)(str(self.failure))
        out = self.step(batch)
        if self.board is not None:
            self.board.add.remote(embedded_counts(batch))
        return out


def _enter(gate, key: str, timeout_s: float) -> bool:
    """Wait for this engine's turn on its GPU; after `timeout_s` (an engine before it that never finished its
    start) go ahead anyway."""
    if gate is None:
        return False
    try:
        ray.get(gate.enter.remote(key), timeout=timeout_s)
    except GetTimeoutError:
        log.warning("engine_start_not_gated", device=key, waited_s=timeout_s)
        return False
    return True


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


class EngineFeeder:
    """Ray Data's embed stage: hands each batch to its engine actor (the one its ENGINE_ENV names) and waits for
    the vectors. Two calls at a time, so the engine finds its next batch queued when it finishes one. A batch with
    nothing to embed (unchanged documents, rejects) passes without the engine where the table's vector dimension
    is known, so a run that embeds nothing does not wait for an engine to start."""

    def __init__(self, engines: list, dim: int | None = None):
        self.engine = engines[int(os.environ.get(ENGINE_ENV, "0")) % len(engines)]
        self.dim = dim

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.dim is not None and not has_chunks(batch):
            return passed_through(batch, self.dim)
        return ray.get(self.engine.embed.remote(batch))


def engine_label(node_id: str, info: dict) -> str:
    """How batch rows name their engine: node and process, and the cores it is bound to when it shares a node."""
    label = f"{node_id[:8]}:{os.getpid()}"
    if info.get("engines_per_device", 1) > 1 and info.get("cpu_bind") not in (None, "nobind"):
        label += f" cores {info['cpu_bind']}"
    return label


@dataclass(frozen=True)
class Engines:
    """The run's engine actors, and the remote args of the feeder for each: its engine's index and node."""

    actors: list
    nodes: list[str]
    feeders: Iterator[int]

    def feeder_args(self) -> dict:
        index = next(self.feeders) % len(self.actors)
        return {
            "scheduling_strategy": NodeAffinitySchedulingStrategy(self.nodes[index], soft=True),
            "runtime_env": {"env_vars": {ENGINE_ENV: str(index)}},
        }

    def start_failure(self) -> PipelineError | None:
        """What stopped an engine from starting, if one did: Ray Data reports a failed call by its own message."""
        for actor in self.actors:
            try:
                failure = ray.get(actor.start_failure.remote(), timeout=30)
            except RayError:
                continue
            if failure is not None:
                return failure
        return None


@contextmanager
def engine_actors(
    plan: JobPlan,
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
    starts; they, the gate and the bundles are released at the end."""
    bundle = plan.placement.bundle
    group = ray.util.placement_group([bundle] * plan.actors, strategy="SPREAD")
    try:
        _wait_placed(group, plan, cluster, run.placement_timeout_s)
    except BaseException:
        ray.util.remove_placement_group(group)
        raise
    nodes = ray.util.placement_group_table(group)["bundles_to_node_id"]
    node_of = [nodes[i] for i in range(plan.actors)]
    slots = node_slots(node_of)
    shares_gpus = plan.engine.device == "cuda" and plan.engine.engines_per_device > 1
    gate = StartGate.remote() if shares_gpus else None
    actors = [
        EngineActor.options(
            num_cpus=bundle["CPU"],
            num_gpus=bundle.get("GPU", 0),
            max_restarts=ENGINE_RESTARTS,
            max_task_retries=ENGINE_RESTARTS,
            scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i),
            runtime_env={"env_vars": {SLOT_ENV: str(slots[i] % plan.engine.engines_per_device)}},
        ).remote(logs, plan.engine, board, priority, gate, run.engine_start_timeout_s)
        for i in range(plan.actors)
    ]
    try:
        yield Engines(actors, node_of, itertools.count())
    finally:
        for actor in actors:
            ray.kill(actor)
        if gate is not None:
            ray.kill(gate)
        ray.util.remove_placement_group(group)


def _wait_placed(group, plan: JobPlan, cluster: Cluster, timeout_s: float) -> None:
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


def _unplaced(plan: JobPlan, cluster: Cluster, timeout_s: float) -> str:
    bundle = bundle_shape(plan.placement.bundle)
    return (
        f"Ray could not place the {plan.actors} engines ({plan.actors} bundles of {bundle}) within {timeout_s:g} s "
        f"(run.placement_timeout_s). The cluster's nodes have {cluster.describe()}, so another job may hold "
        f"some of them, or nodes left: see `ray status` (Usage, and Pending demands) and `ray list "
        f"placement-groups`; free them, lower run.actors, or raise run.placement_timeout_s to wait longer. Nothing "
        f"was embedded or recorded"
    )
