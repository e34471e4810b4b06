"""A Ray cluster of several nodes on this machine, started with `ray start` as a user starts one: each node with
its own logical CPUs and GPUs (Ray's GPUs are logical: placement, bundles and CUDA_VISIBLE_DEVICES behave as on
GPU nodes), all under one temp dir, stopped by the ids of the processes that name that dir (never by a name
pattern: other Ray instances on the machine are not ours)."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.job_process import REPO, job_env

BIN = Path(sys.executable).parent


PORTS_PER_WORKER = 2500
PORTS_FROM = 20000
"""Ports the tests' servers and Ray nodes take: a block per pytest-xdist worker, below Linux's ephemeral range
(32768-60999, where Ray and the OS pick random ports) and above Ray's own defaults (6379, 8265, 10001, 10002-19999), so
that clusters and servers started at the same time never share a port."""
_NEXT: list[int] = []


def free_port(count: int = 1) -> int:
    """The first of `count` consecutive ports, free now and not handed out before by this process, from this xdist
    worker's block."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    low = PORTS_FROM + PORTS_PER_WORKER * (int(worker) if worker.isdigit() else 0)
    start = _NEXT[0] if _NEXT else low
    for port in range(max(start, low), low + PORTS_PER_WORKER - count):
        if all(_bindable(p) for p in range(port, port + count)):
            _NEXT[:] = [port + count]
            return port
    raise RuntimeError(f"no {count} free ports in {low}-{low + PORTS_PER_WORKER}")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def ray_cli(*args: str, env: dict, timeout: float = 180, wrap: list[str] | None = None) -> subprocess.CompletedProcess:
    """`ray *args`, run under `wrap` (a command that execs its arguments) when given."""
    for _ in range(12):  # right after `ray start` the job agent may not be registered yet
        proc = subprocess.run(
            [*(wrap or []), str(BIN / "ray"), *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if "No available agent to submit job" not in proc.stderr + proc.stdout:
            break
        time.sleep(5)
    assert proc.returncode == 0, f"ray {' '.join(args)}:\n{proc.stderr[-1500:]}\n{proc.stdout[-5000:]}"
    return proc


def processes_naming(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return [""]


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(proc.name))
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, []))
    return found


def stop_cluster(temp_dir: Path, port: int | None = None) -> None:
    """Stop only the processes of this cluster: those whose command line names its temp dir, and every process
    under them (the raylets' workers name no temp dir), and the head's Ray client server, which names neither
    and outlives `ray start` as a child of init: it names the cluster's GCS port."""
    named = processes_naming(str(temp_dir))
    if port is not None:
        named += [
            pid
            for pid in processes_naming("ray.util.client.server")
            if any(a.startswith("--address=") and a.endswith(f":{port}") for a in _cmdline(pid))
        ]
    mine = sorted({pid for found in named for pid in descendants(found)})
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in mine:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(3)


WORKER_PORTS = 40
"""Ports of a node's worker processes: enough for every worker a test's node starts."""


def node_ports(metrics_ports: list[int]) -> list[str]:
    """`ray start` flags that give a node ports of its own, for every listener Ray would otherwise put on a default
    port or on a range every node shares: its node and object managers, its dashboard agent (HTTP and gRPC), its
    runtime-env agent, its metrics export port (kept in `metrics_ports` for a scraper) and its workers. Two Ray
    instances on one machine otherwise collide on the agents' defaults: the later one's agent then serves no HTTP,
    and `ray job submit` answers "No available agent to submit job"."""
    agent, grpc, runtime_env, metrics, manager, objects = (free_port() for _ in range(6))
    workers = free_port(WORKER_PORTS)
    metrics_ports.append(metrics)
    return [
        *("--node-manager-port", str(manager), "--object-manager-port", str(objects)),
        *("--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(grpc)),
        *("--runtime-env-agent-port", str(runtime_env), "--metrics-export-port", str(metrics)),
        *("--min-worker-port", str(workers), "--max-worker-port", str(workers + WORKER_PORTS - 1)),
    ]


def hiding(directories: tuple[Path, ...], empty: Path) -> list[str]:
    """A command prefix that runs its command in a mount namespace of its own where each of `directories` is an
    empty directory (needs root: `unshare -m`); the machine's own view is untouched."""
    empty.mkdir(parents=True, exist_ok=True)
    mounts = " && ".join(f"mount --bind {shlex.quote(str(empty))} {shlex.quote(str(d))}" for d in directories)
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", f'{mounts} && exec "$@"', "sh"]


class LocalCluster:
    """A head node, then more nodes joining it; `env` is what its nodes and the jobs talking to it run with."""

    def __init__(self, name: str, env: dict[str, str], dashboard: bool = False):
        self.temp_dir = Path("/tmp") / f"ray-{name}-{os.getpid()}"  # short: Ray's socket paths have a length limit
        path = f"{BIN}:{env.get('PATH', os.environ['PATH'])}"
        # `ray start` turns token authentication on; its clients (drivers, `ray job submit`) must agree
        self.env = job_env(**{"RAY_AUTH_MODE": "token", **env, "PATH": path, "RAY_USAGE_STATS_ENABLED": "0"})
        self.port = free_port()
        self.dashboard_port = free_port() if dashboard else None
        self.nodes = 0
        self.metrics_ports: list[int] = []
        """Each node's Ray metrics export port, as KubeRay gives every pod one for Prometheus to scrape."""

    @property
    def address(self) -> str:
        """What a driver joins with (RAY_ADDRESS)."""
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def add_node(self, cpus: int, gpus: int = 0, resources: str | None = None, hidden: tuple[Path, ...] = ()) -> None:
        """A node with `cpus` and `gpus` (logical); its processes see each directory of `hidden` empty (a mount
        namespace of their own, as a pod that does not mount a volume sees it)."""
        wrap = hiding(hidden, self.temp_dir / f"empty-{self.nodes}") if hidden else None
        common = ["--num-cpus", str(cpus), "--num-gpus", str(gpus), "--object-store-memory", str(256 * 2**20)]
        common += ["--temp-dir", str(self.temp_dir), *(["--resources", resources] if resources else [])]
        common += node_ports(self.metrics_ports)
        if self.nodes == 0:
            head = ["--head", "--port", str(self.port), "--disable-usage-stats"]
            head += ["--ray-client-server-port", str(free_port())]
            if self.dashboard_port:
                head += ["--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port)]
                head += ["--include-dashboard", "true"]
            else:
                head += ["--include-dashboard", "false"]
            ray_cli("start", *head, *common, env=self.env, wrap=wrap)
        else:
            ray_cli("start", "--address", self.address, *common, env=self.env, wrap=wrap)
        self.nodes += 1

    def job_env(self, **extra: str) -> dict[str, str]:
        """The environment of a driver joining this cluster."""
        return {**self.env, "RAY_ADDRESS": self.address, **extra}

    def kill_node(self, index: int) -> list[int]:
        """SIGKILL node `index` (1 = the first node that joined the head): its raylet and every process under it
        (its workers and agents), by their ids, as a lost machine would go. Returns the ids killed."""
        socket = "sockets/raylet" + (f".{index}" if index else "")
        raylets = [
            pid
            for pid in processes_naming(str(self.temp_dir))
            if any(arg.endswith(socket) for arg in _cmdline(pid)) and _cmdline(pid)[0].endswith("/raylet")
        ]
        assert len(raylets) == 1, f"node {index}'s raylet: {raylets}"
        doomed = descendants(raylets[0])
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return doomed

    def stop(self) -> None:
        stop_cluster(self.temp_dir, self.port)
