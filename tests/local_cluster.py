"""A Ray cluster of several nodes on this machine, started with `ray start` as a user starts one: each node with
its own logical CPUs and GPUs (Ray's GPUs are logical: placement, bundles and CUDA_VISIBLE_DEVICES behave as on
GPU nodes), all under one temp dir, stopped by the ids of the processes that name that dir (never by a name
pattern: other Ray instances on the machine are not ours)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.job_process import REPO, job_env

BIN = Path(sys.executable).parent


def free_port(low: int = 6400, high: int = 6999) -> int:
    for port in range(low, high):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError("no free port")


def ray_cli(*args: str, env: dict, timeout: float = 180) -> subprocess.CompletedProcess:
    for _ in range(12):  # right after `ray start` the job agent may not be registered yet
        proc = subprocess.run(
            [str(BIN / "ray"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
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


class LocalCluster:
    """A head node, then more nodes joining it; `env` is what its nodes and the jobs talking to it run with."""

    def __init__(self, name: str, env: dict[str, str], dashboard: bool = False):
        self.temp_dir = Path("/tmp") / f"ray-{name}-{os.getpid()}"  # short: Ray's socket paths have a length limit
        path = f"{BIN}:{env.get('PATH', os.environ['PATH'])}"
        # `ray start` turns token authentication on; its clients (drivers, `ray job submit`) must agree
        self.env = job_env(**{"RAY_AUTH_MODE": "token", **env, "PATH": path, "RAY_USAGE_STATS_ENABLED": "0"})
        self.port = free_port()
        self.dashboard_port = free_port(8300, 8999) if dashboard else None
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

    def add_node(self, cpus: int, gpus: int = 0, resources: str | None = None) -> None:
        common = ["--num-cpus", str(cpus), "--num-gpus", str(gpus), "--object-store-memory", str(256 * 2**20)]
        common += ["--temp-dir", str(self.temp_dir), *(["--resources", resources] if resources else [])]
        self.metrics_ports.append(free_port(7000, 7999))
        common += ["--metrics-export-port", str(self.metrics_ports[-1])]
        if self.nodes == 0:
            head = ["--head", "--port", str(self.port), "--disable-usage-stats"]
            if self.dashboard_port:
                head += ["--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port)]
                head += ["--include-dashboard", "true"]
            else:
                head += ["--include-dashboard", "false"]
            ray_cli("start", *head, *common, env=self.env)
        else:
            ray_cli("start", "--address", self.address, *common, env=self.env)
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
