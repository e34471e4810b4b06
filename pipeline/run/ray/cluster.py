"""The Ray cluster a run works on: joining it or starting a local one, and what its alive nodes hold (CPUs, GPUs,
and the GPUs' model and memory, read on each node by a probe task, never by CUDA in the driver)."""

from __future__ import annotations

import atexit
import logging
import os
import time
import warnings

import ray
import structlog
from ray.exceptions import RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.errors import ConfigError
from pipeline.plan.placement import LOCAL_CPU_HEADROOM, Cluster, Node, bundle_shape
from pipeline.runtime.devices import NodeDevices, read_node_devices
from pipeline.runtime.faults import forwarded_env
from pipeline.runtime.process_tree import children, started_since, stop_leftovers, with_descendants
from pipeline.settings import RunSettings

log = structlog.get_logger(__name__)

LOCAL_RAY_CONFIG = {
    "enable_metrics_collection": False,
    "metrics_report_interval_ms": 600_000,
    "task_events_report_interval_ms": 0,
    "event_stats": False,
}
"""A local Ray's own bookkeeping that nothing reads in an embedded run (no dashboard): metric exports and task
events from every process. Off, a local run's start-up was 2-4.6 s shorter in three paired runs on 2 cores."""
PROBE_TIMEOUT_S = 60.0
"""Longest wait for the probe tasks that read each node's devices (a worker process starts on each)."""
GPU_WAIT_POLL_S = 10.0
LEFTOVER_GRACE_S = 3.0
"""How long a local Ray's processes get to exit after its shutdown before they are killed."""
_LOCAL_NODES: list = []
"""The node processes `ray.init` started for a local Ray (none when the run joined a cluster)."""


WORKER_LOGS = (
    "each node's Ray session logs (/tmp/ray/session_latest/logs: worker-*.out/err per process); `ray logs cluster` "
    "lists them, `ray logs actor --id <id>` shows an engine's"
)


def joins_cluster() -> bool:
    return bool(os.environ.get("RAY_ADDRESS")) and not ray.is_initialized()


def start_ray(run: RunSettings) -> None:
    """Join the cluster RAY_ADDRESS names, or start a local Ray sized for this machine. A local Ray keeps its
    workers' output (vLLM's messages among it) in its session's log files, not on the screen."""
    if ray.is_initialized():
        return
    # Ray starts its processes with fork+exec; lancedb's at-fork hook warns about fork alone.
    warnings.filterwarnings("ignore", message="lancedb fork support is experimental")
    # Known and tracked (the README's notes): the per-engine placement uses it until Ray 2.64 removes it.
    warnings.filterwarnings("ignore", message=".*ray_remote_args_fn.*deprecated")
    # A local Ray enables token authentication by itself and says so at every start.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if os.environ.get("RAY_ADDRESS"):
        # The job's log (`ray job logs`, a RayJob's submitter pod) holds the run's own lines: the engines' and the
        # libraries' output (vLLM's warnings, each engine's start) stays in each node's session logs.
        faults = forwarded_env()
        ray.init(log_to_driver=False, **({"runtime_env": {"env_vars": faults}} if faults else {}))
        quiet_console()
        log.info("worker_logs", where=WORKER_LOGS)
        return
    total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    store_mb = run.object_store_mb or min(2048, max(256, total_mb // 10))
    before = children()
    ray.init(
        num_cpus=(run.num_cpus or os.cpu_count()) + LOCAL_CPU_HEADROOM,
        object_store_memory=store_mb * 2**20,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        _system_config={"worker_niceness": run.worker_niceness, **LOCAL_RAY_CONFIG},
    )
    _LOCAL_NODES[:] = started_since(before)
    atexit.unregister(stop_ray)
    atexit.register(stop_ray)  # after Ray's own handler, so it runs first (last in, first run)
    quiet_console()


def stop_ray() -> None:
    """Shut Ray down; a local Ray's processes (its nodes and the workers below them) get LEFTOVER_GRACE_S to exit,
    then what still runs is killed by pid. A worker can hang forever in Ray's own exit handler (a deadlock in its
    core worker's teardown, seen twice in one CI run, ~210 MB each), and nothing stops it once its raylet is gone."""
    processes = with_descendants(_LOCAL_NODES)
    _LOCAL_NODES.clear()
    ray.shutdown()
    killed = stop_leftovers(processes, LEFTOVER_GRACE_S)
    if killed:
        log.debug("local_ray_leftovers_stopped", processes=killed)  # at exit: the job's last line stays its own


def quiet_console() -> None:
    """Ray Data's progress bars and notices go to its log file (ray-data.log), not the screen: the run's own
    progress display replaces them."""
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.ERROR)


def logs_dir() -> str | None:
    """Where this Ray's processes write their logs (the engines' among them), on the driver's node."""
    node = getattr(ray._private.worker, "_global_node", None)  # noqa: SLF001 - Ray has no public logs-dir API
    return node.get_logs_dir_path() if node is not None else None


def is_local() -> bool:
    """Whether this run started its own Ray (no RAY_ADDRESS): one machine, no autoscaler."""
    return not os.environ.get("RAY_ADDRESS")


@ray.remote(num_cpus=0)
def _probe() -> NodeDevices:
    return read_node_devices()


def cluster_inventory(timeout_s: float = PROBE_TIMEOUT_S) -> Cluster:
    """The alive nodes with their logical CPUs and GPUs, and what a probe on each read of its devices: a task on
    each node of a cluster (one that does not answer in time leaves its node's devices unknown), or this process
    for a local Ray, whose one node is this machine."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if is_local():
        devices = [read_node_devices()] * len(nodes)
    else:
        devices = _probe_all(nodes, timeout_s)
    found = []
    for node, read in zip(nodes, devices, strict=True):
        resources = node.get("Resources", {})
        gpus = float(resources.get("GPU", 0.0))
        if gpus and (read is None or read.gpu_memory_bytes is None):
            why = read.note if read else f"its probe did not answer within {timeout_s:g} s"
            log.warning("gpu_unread", node=node["NodeID"][:8], reason=why)
        found.append(
            Node(
                node_id=node["NodeID"],
                address=f"{node.get('NodeManagerAddress', '?')} ({node['NodeID'][:8]})",
                cpus=float(resources.get("CPU", 0.0)),
                gpus=gpus,
                gpu_name=read.gpu_name if read and gpus else None,
                gpu_memory_bytes=read.gpu_memory_bytes if read and gpus else None,
                host_memory_bytes=read.host_memory_bytes if read else None,
                driver_version=read.driver_version if read and gpus else None,
            )
        )
    return Cluster(tuple(found), cpu_headroom=LOCAL_CPU_HEADROOM if is_local() else 0)


def _probe_all(nodes: list[dict], timeout_s: float) -> list[NodeDevices | None]:
    refs = [
        _probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
        for n in nodes
    ]
    done, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    answered = set(done)
    return [_answer(ref) if ref in answered else None for ref in refs]


def _answer(ref) -> NodeDevices | None:
    try:
        return ray.get(ref)
    except RayError as exc:
        log.warning("probe_failed", error=str(exc).strip().splitlines()[-1][:300])
        return None


def on_driver_node() -> dict:
    """Remote options that keep an actor the run cannot do without (the engines' supervisor and start gates, the
    progress board) on the driver's node: a node lost elsewhere must not take it, and losing the driver's node
    ends the run anyway."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)}


def alive_nodes() -> set[str]:
    """The ids of the cluster's nodes Ray counts alive."""
    return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}


def lost_nodes(cluster: Cluster) -> list[str]:
    """The nodes of `cluster` (as the plan saw it) that are no longer alive."""
    alive = alive_nodes()
    return [n.address for n in cluster.nodes if n.node_id not in alive]


def actor_restarts(actor_id: str) -> int | None:
    """How often Ray restarted the actor: None once Ray gave up on it (dead), 0 where the GCS cannot say. The GCS's
    actor table: the state API needs a dashboard, which a local Ray does not start."""
    try:
        info = ray._private.state.actors(actor_id)  # noqa: SLF001
    except Exception:  # noqa: BLE001 - a GCS that cannot say leaves the actor as it was
        return 0
    return None if info.get("State") == "DEAD" else int(info.get("NumRestarts", 0))


def cluster_cpus() -> int:
    """Logical CPUs to size the plan's shuffle by (a local Ray's headroom left out)."""
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, cpus - LOCAL_CPU_HEADROOM) if is_local() else cpus


def scale_settled(
    wanted: float, got: float, waited_s: float, since_first_s: float | None, timeout_s: float, settle_s: float
) -> bool:
    """Whether a run scaling from zero GPUs stops waiting: every GPU it asked for joined; or some did and the rest
    had `settle_s` since the first; or none did within `timeout_s`."""
    if got >= wanted:
        return True
    if got > 0:
        return since_first_s is not None and since_first_s >= settle_s
    return waited_s >= timeout_s


def wait_for_gpu_nodes(
    cluster: Cluster, bundle: dict[str, float], engines: int, timeout_s: float, settle_s: float = 0.0
) -> Cluster:
    """A cluster asked for GPU engines that has no GPU node yet: ask Ray's autoscaler for the engines' bundles and
    wait for GPU nodes to join: the first within `timeout_s` (else refuse, saying what was asked), the rest within
    `settle_s` after it; the plan then uses what joined. A local Ray has no autoscaler and is refused at once."""
    if cluster.gpus > 0:
        return cluster
    if is_local():
        msg = (
            "model.device = cuda but this machine's Ray has no GPUs; run on a machine or cluster with GPUs, or set "
            "model.device = auto (or cpu) for vLLM's CPU backend"
        )
        raise ConfigError(msg)
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[bundle] * engines)
    wanted = bundle.get("GPU", 1) * engines
    log.warning("waiting_for_gpu_nodes", bundles=engines, bundle=bundle, gpus=wanted, timeout_s=timeout_s)
    started = time.monotonic()
    first_at: float | None = None
    try:
        while True:
            now = time.monotonic()
            if scale_settled(wanted, cluster.gpus, now - started, first_at and now - first_at, timeout_s, settle_s):
                break
            time.sleep(GPU_WAIT_POLL_S)
            cluster = cluster_inventory()
            if cluster.gpus > 0 and first_at is None:
                first_at = time.monotonic()
    finally:
        request_resources(bundles=[])  # the request outlives the job otherwise, and keeps GPU nodes up
    if cluster.gpus > 0:
        log.info("gpu_nodes_joined", requested_gpus=wanted, got_gpus=cluster.gpus, waited_s=round(now - started))
        return cluster
    msg = (
        f"model.device = cuda but no node of the cluster has a GPU ({cluster.describe_gpus()}); the job asked Ray's "
        f"autoscaler for {engines} bundles of {bundle_shape(bundle)} and waited {timeout_s:g} s "
        f"(run.placement_timeout_s) without a GPU node joining. On an autoscaling cluster check its GPU worker "
        f"group (maxReplicas, the GPU type, quotas) and `ray status`; otherwise add GPU nodes, or set "
        f"model.device = auto to run on CPUs"
    )
    raise ConfigError(msg)
