"""Where the engines go: how many share one device, how many each node of the cluster holds, and what each engine
asks Ray for. Pure: decided from a description of the cluster (its alive nodes with their CPUs and GPUs, and what
a probe on the GPU nodes read of their devices); no ray, vllm or torch imports.

A tensor-parallel engine is one Ray bundle of `tensor_parallel_size` GPUs, so its GPUs are always on one node:
a node holds floor(GPUs / tensor_parallel_size) engines, and a plan that no node can hold is refused here, naming
every node's GPUs, instead of waiting for a placement Ray can never make.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipeline.errors import ConfigError
from pipeline.plan.compute import SATURATING_FORWARD_MS

LOCAL_CPU_HEADROOM = 1
"""Logical CPUs a local Ray gets beyond the machine's: with the engine and chunk actors holding theirs, a 2-core
machine would leave the read, plan and write tasks next to nothing."""


@dataclass(frozen=True)
class Node:
    """An alive node of the cluster as Ray reports it, and its GPUs as a probe on it read them."""

    node_id: str
    address: str
    cpus: float
    gpus: float
    gpu_name: str | None = None
    gpu_memory_bytes: int | None = None
    """Memory of one of its GPUs (the smallest); None where no probe could read it."""
    host_memory_bytes: int | None = None
    driver_version: str | None = None
    """Its NVIDIA driver's version, where the probe read it."""


@dataclass(frozen=True)
class Cluster:
    nodes: tuple[Node, ...]
    cpu_headroom: int = 0
    """Logical CPUs a local Ray has beyond the machine's (for the plan's shuffle), not counted for engines."""

    @classmethod
    def one_node(cls, gpus: float = 0.0, cpus: float = 1.0, **device) -> Cluster:
        """This machine as the local Ray a job starts sees it: its `cpus` and the shuffle's headroom."""
        node = Node("local", "local", cpus + LOCAL_CPU_HEADROOM, gpus, **device)
        return cls((node,), cpu_headroom=LOCAL_CPU_HEADROOM)

    @property
    def gpus(self) -> float:
        return sum(n.gpus for n in self.nodes)

    @property
    def cpus(self) -> int:
        return max(1, int(sum(n.cpus for n in self.nodes)) - self.cpu_headroom)

    def gpu_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.gpus > 0]

    def smallest_gpu(self) -> Node | None:
        """The GPU node whose device has the least memory, among those a probe read (engines must fit there)."""
        probed = [n for n in self.gpu_nodes() if n.gpu_memory_bytes]
        return min(probed, key=lambda n: n.gpu_memory_bytes) if probed else None

    def describe_gpus(self) -> str:
        return ", ".join(f"{n.address} {n.gpus:g}" for n in self.nodes) or "no alive nodes"

    def describe(self) -> str:
        return "; ".join(f"{n.address}: {n.cpus:g} CPUs, {n.gpus:g} GPUs" for n in self.nodes) or "no alive nodes"


@dataclass(frozen=True)
class DeviceShare:
    engines_per_device: int
    note: str
    """Why this many, in one sentence."""


def choose_engines_per_device(
    setting: int | None,
    cap: int,
    device: str,
    tensor_parallel_size: int,
    fitting: int | None,
    cores: int,
    forward_ms: float | None = None,
) -> DeviceShare:
    """run.engines_per_device if set (checked against the memory fit). Unset, on a GPU: one engine unless the
    model is small enough that one cannot keep the GPU busy (`forward_ms`, its forward pass at the batch budget at
    the device's peak, below SATURATING_FORWARD_MS), then as many as fill that time, at most what the memory planner
    fits (`fitting`) and `cap`; unknown memory or an unknown device peak means one. On a CPU node one engine with
    every core unless set. `cores`: CPU cores of a node."""
    if device == "cuda" and tensor_parallel_size > 1:
        if setting not in (None, 1):
            msg = (
                f"run.engines_per_device={setting} with model.tensor_parallel_size={tensor_parallel_size}: an engine "
                f"that spans several GPUs cannot share them; set run.engines_per_device = 1 or tensor_parallel_size=1"
            )
            raise ConfigError(msg)
        return DeviceShare(1, f"one engine per group of {tensor_parallel_size} GPUs (tensor parallel)")
    if device == "cpu":
        return _cpu_share(setting, cores)
    if setting is not None:
        if fitting is not None and setting > fitting:
            msg = (
                f"run.engines_per_device={setting} does not fit: the memory planner fits {fitting} engines per GPU at "
                f"these settings; lower run.engines_per_device to {fitting} or lower max_num_batched_tokens"
            )
            raise ConfigError(msg)
        return DeviceShare(setting, f"{setting} engines per GPU (setting)")
    if fitting is None:
        return DeviceShare(1, "one engine per GPU: device memory unknown, so the planner cannot size more")
    if forward_ms is None:
        return DeviceShare(
            1, "one engine per GPU: the device's peak is unknown, so the planner cannot tell whether one fills it"
        )
    if forward_ms >= SATURATING_FORWARD_MS:
        return DeviceShare(
            1,
            f"one engine per GPU: a forward pass at max_num_batched_tokens takes {forward_ms:.1f} ms at the device's "
            f"peak (>= {SATURATING_FORWARD_MS:g} ms), so one engine keeps the GPU busy",
        )
    wanted = math.ceil(SATURATING_FORWARD_MS / max(forward_ms, 1e-6))
    chosen = max(1, min(wanted, fitting, cap))
    limits = [f"{wanted} fill {SATURATING_FORWARD_MS:g} ms", f"the memory planner fits {fitting}"]
    if cap < min(wanted, fitting):
        limits.append(f"capped by run.max_engines_per_device={cap}")
    return DeviceShare(
        chosen,
        f"{chosen} engines per GPU: a forward pass at max_num_batched_tokens takes {forward_ms:.2f} ms at the "
        f"device's peak, too short for one engine to keep the GPU busy; " + ", ".join(limits),
    )


def _cpu_share(setting: int | None, cores: int) -> DeviceShare:
    if setting is None:
        return DeviceShare(1, f"one engine per CPU node with all {cores} cores (set run.engines_per_device to split)")
    if setting > cores:
        msg = (
            f"run.engines_per_device={setting} exceeds the node's {cores} CPU cores: each engine needs a core "
            f"of its own; lower it to at most {cores}"
        )
        raise ConfigError(msg)
    return DeviceShare(setting, f"{setting} engines per CPU node, {cores // setting} cores each (setting)")


def engine_cpus(device: str, tensor_parallel_size: int, engines_per_device: int) -> float:
    """Logical CPUs an engine reserves. On a GPU the engine's process drives its device and runs vLLM's scheduler:
    a whole CPU; at tensor parallelism > 1 vLLM also spawns one worker process per GPU inside the actor (Ray does
    not see them), each driving its GPU: one more CPU each. Engines sharing a CPU node split one CPU's worth: their
    real cores come from the binding, and the rest stays free for the plan's shuffle tasks."""
    if device == "cpu":
        return 1.0 / engines_per_device
    return 1.0 + (tensor_parallel_size if tensor_parallel_size > 1 else 0)


def engine_bundle(device: str, tensor_parallel_size: int, engines_per_device: int) -> dict[str, float]:
    """One engine's placement bundle: its CPUs, and on GPUs its whole tensor-parallel group or its share of one."""
    bundle = {"CPU": engine_cpus(device, tensor_parallel_size, engines_per_device)}
    if device == "cuda":
        bundle["GPU"] = tensor_parallel_size / engines_per_device
    return bundle


@dataclass(frozen=True)
class Placement:
    """The engines' bundles and where they can go."""

    actors: int
    bundle: dict[str, float]
    per_node: dict[str, int]
    """Engines each node can hold, by node address, for messages and records."""
    notes: list[str] = field(default_factory=list)
    nodes: tuple[str, ...] = ()
    """The node each engine is pinned to (its bundle's label selector): a bundle whose node is lost is never
    re-placed on another node, where it would take the CPUs or GPUs the rest of the run needs."""


def lay_out(
    cluster: Cluster, device: str, tensor_parallel_size: int, per_device: int, actors: int | None
) -> Placement:
    """How many engines the cluster holds of this bundle, node by node; ConfigError with every node's GPUs when
    the plan cannot be placed."""
    bundle = engine_bundle(device, tensor_parallel_size, per_device)
    if device == "cpu":
        return Placement(actors or per_device, bundle, {})
    tp = tensor_parallel_size
    holds = [min(int(n.gpus // tp) * per_device, int(n.cpus // bundle["CPU"])) for n in cluster.gpu_nodes()]
    per_node = {n.address: held for n, held in zip(cluster.gpu_nodes(), holds, strict=True)}
    capacity = sum(holds)
    if capacity == 0:
        raise ConfigError(_unplaceable(cluster, tp, bundle))
    notes = []
    wanted = actors or capacity
    if wanted > capacity:
        shared = f" at {per_device} engines per GPU" if per_device > 1 else ""
        msg = (
            f"run.actors={wanted} engines of {bundle_shape(bundle)}{shared} do not fit the cluster: its nodes hold "
            f"{_per_node(per_node)} (GPUs per node: {cluster.describe_gpus()}); lower run.actors to at most "
            f"{capacity}" + (" or raise run.engines_per_device" if tp == 1 else "")
        )
        raise ConfigError(msg)
    if wanted % per_device:
        notes.append(
            f"run.actors={wanted} at {per_device} engines per GPU leaves part of a GPU idle; set run.actors to a "
            f"multiple of {per_device}"
        )
    return Placement(wanted, bundle, per_node, notes)


def _unplaceable(cluster: Cluster, tp: int, bundle: dict[str, float]) -> str:
    gpus_needed = f"{tp} GPUs on one node" if tp > 1 else "a GPU"
    cpu_short = [n for n in cluster.gpu_nodes() if n.gpus >= tp and n.cpus < bundle["CPU"]]
    if cpu_short:
        return (
            f"an engine ({bundle_shape(bundle)}) needs {bundle['CPU']:g} CPUs beside its GPUs, but the GPU nodes have "
            f"{', '.join(f'{n.address} {n.cpus:g}' for n in cpu_short)} CPUs; give the GPU nodes more CPUs"
        )
    fix = (
        f"lower model.tensor_parallel_size to at most {max(int(n.gpus) for n in cluster.gpu_nodes())}, or add nodes "
        f"with {tp} GPUs each"
        if cluster.gpu_nodes()
        else "add GPU nodes, or set model.device = cpu"
    )
    return (
        f"no node can hold an engine: each needs {gpus_needed} (a bundle of {bundle_shape(bundle)}, "
        f"model.tensor_parallel_size={tp}), and the cluster's nodes have GPUs: {cluster.describe_gpus()}; {fix}"
    )


MIN_NVIDIA_DRIVER = (580, 0)
"""The oldest NVIDIA driver the GPU image runs on: vllm 0.32's torch 2.13 wheels carry CUDA 13.0, which needs driver
580 or later (infra/docker/Dockerfile.gpu)."""


def check_drivers(cluster: Cluster) -> None:
    """ConfigError naming the GPU nodes whose NVIDIA driver is too old for the image's CUDA (where the probe read
    it): every engine there would fail at its start, one after another."""
    old = [n for n in cluster.gpu_nodes() if n.driver_version and _version(n.driver_version) < MIN_NVIDIA_DRIVER]
    if not old:
        return
    need = ".".join(map(str, MIN_NVIDIA_DRIVER))
    msg = (
        f"GPU nodes run an NVIDIA driver older than {need}, which CUDA 13.0 (the GPU image's torch) needs: "
        f"{', '.join(f'{n.address} driver {n.driver_version}' for n in old)}; upgrade their driver, or run on a "
        f"node pool with driver {need} or later"
    )
    raise ConfigError(msg)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


def bundle_shape(bundle: dict[str, float]) -> str:
    """A bundle as the messages write it: {CPU: 1, GPU: 0.5}."""
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in bundle.items()) + "}"


def _per_node(per_node: dict[str, int]) -> str:
    return ", ".join(f"{address} {n}" for address, n in per_node.items())


TASK_STAGES = ("read", "shuffle", "plan", "write", "split")


@dataclass(frozen=True)
class StageCpus:
    """Logical CPUs each stage of the run asks Ray for. Ray Data 2.60 gives each task of its hash shuffle (the plan's
    repartition by document id) a whole CPU, with no setting to change it; the run lowers it to `shuffle`
    (pipeline/run/ray/shuffle.py), since a whole CPU free on one node may never come while the engines and chunk actors
    hold theirs and read tasks wait, holding theirs, for the shuffle to take their blocks."""

    read: float = 0.5
    shuffle: float = 0.25
    plan: float = 0.25
    chunk_actor: float = 0.5
    write: float = 0.25
    split: float = 0.25

    @property
    def largest_task(self) -> float:
        """The most CPU any one task (not actor) of the run asks."""
        return max(getattr(self, name) for name in TASK_STAGES)

    def largest_name(self) -> str:
        tasks = {name: getattr(self, name) for name in TASK_STAGES}
        return ", ".join(f"{name} {cpus:g}" for name, cpus in tasks.items() if cpus == self.largest_task)


STAGE_CPUS = StageCpus()
MAX_PLAN_PARTITIONS = 64


def plan_partitions(setting: int | None, cpus: float, blocks: int) -> int:
    """Partitions of the plan's shuffle on document id: run.plan_partitions when set, else as many as the blocks that
    go in (a read piece or a stored fragment each), at most the cluster's CPUs and MAX_PLAN_PARTITIONS. Every
    partition is a reduce task, and a task that takes a CPU no worker process holds yet starts one (about a second of
    imports): partitions beyond the blocks cost a small run processes and hold no data."""
    if setting:
        return setting
    return max(1, min(blocks, int(cpus), MAX_PLAN_PARTITIONS))


def assign_nodes(cluster: Cluster, placement: Placement, device: str) -> list[str]:
    """The node of each engine, spread: one per node in turn, each node up to what it holds (on CPU nodes, what its
    CPUs hold)."""
    holds = {n.node_id: _holds(n, placement, device) for n in cluster.nodes}
    placed = dict.fromkeys(holds, 0)
    order: list[str] = []
    while len(order) < placement.actors:
        open_nodes = [n for n in holds if placed[n] < holds[n]]
        if not open_nodes:
            break
        for node in open_nodes[: placement.actors - len(order)]:
            placed[node] += 1
            order.append(node)
    return order


def engines_per_node(cluster: Cluster, placement: Placement, device: str) -> dict[str, int]:
    placed = dict.fromkeys((n.node_id for n in cluster.nodes), 0)
    for node in assign_nodes(cluster, placement, device):
        placed[node] += 1
    return placed


def _holds(node: Node, placement: Placement, device: str) -> int:
    if device == "cuda":
        return placement.per_node.get(node.address, 0)
    return int(node.cpus // placement.bundle["CPU"])


def check_stage_room(cluster: Cluster, placement: Placement, device: str, chunk_actors: int) -> None:
    """The engines must leave the other stages room, or the run waits forever for a CPU Ray cannot give. Engines
    and chunk actors hold their CPUs for the whole run; every other stage is a task, the largest asking
    STAGE_CPUS.largest_task free on one node. So some node must keep that beside its engines even after the chunk
    actors take theirs wherever Ray puts them: the chunk actors must be too few to take every node's spare CPU. Each
    node counts as it is (a head with 0 CPUs takes no stage). ConfigError with every node's numbers if not."""
    if chunk_actors <= chunk_actor_room(cluster, placement, device):
        return
    placed = engines_per_node(cluster, placement, device)
    free = {n.node_id: n.cpus - placed[n.node_id] * placement.bundle["CPU"] for n in cluster.nodes}
    s, need = STAGE_CPUS, STAGE_CPUS.largest_task
    nodes = "; ".join(
        f"{n.address}: {n.cpus:g} CPUs, {placed[n.node_id]} engines ({placed[n.node_id] * placement.bundle['CPU']:g} "
        f"CPUs), {free[n.node_id]:g} free"
        for n in cluster.nodes
    )
    msg = (
        f"the engines leave the other stages no room: {placement.actors} engines of {bundle_shape(placement.bundle)} "
        f"on {nodes}. Besides the engines the run needs a node with {need:g} free CPU for its largest task "
        f"({s.largest_name()}) after its {chunk_actors} chunk actors take {s.chunk_actor:g} CPU each; lower "
        f"run.actors or run.chunk_actors, or give the nodes more CPUs"
    )
    raise ConfigError(msg)


def chunk_actor_room(cluster: Cluster, placement: Placement, device: str) -> int:
    """The most chunk actors that, wherever Ray puts them, still leave some node the largest task's CPUs beside its
    engines (check_stage_room): one fewer than it takes to bring every node below that."""
    placed = engines_per_node(cluster, placement, device)
    s, need = STAGE_CPUS, STAGE_CPUS.largest_task
    free = [n.cpus - placed[n.node_id] * placement.bundle["CPU"] for n in cluster.nodes]
    return sum(math.floor((f - need) / s.chunk_actor) + 1 for f in free if f >= need) - 1


def held_by_engines(bundle: dict[str, float], engine_nodes: list[str], alive: set[str]) -> dict[str, float]:
    """CPUs and GPUs the engines' bundles still hold: those on a lost node hold nothing any more (their bundles are
    pinned there and never re-placed), so the run's other stages may use what is left of the cluster."""
    held = sum(1 for node in engine_nodes if node in alive)
    return {"CPU": bundle.get("CPU", 0.0) * held, "GPU": bundle.get("GPU", 0.0) * held}
