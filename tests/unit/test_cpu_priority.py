"""The CPU priority rules: which processes run below the engines, and demotion that reaches every thread."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.cpu_priority import PriorityKeeper, demote_process, helper_pids, raise_niceness

THREADS = (
    "import threading, time\n"
    "for _ in range(3): threading.Thread(target=time.sleep, args=(60,)).start()\n"
    "time.sleep(60)"
)


def _thread_niceness(pid: int) -> list[int]:
    stats = [Path(t, "stat").read_text() for t in Path(f"/proc/{pid}/task").iterdir()]
    return [int(stat.rsplit(")", 1)[1].split()[16]) for stat in stats]


@pytest.fixture
def spawn():
    procs: list[subprocess.Popen] = []

    def start(code: str, *argv: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", code, *argv])
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def _wait_threads(pid: int, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(os.listdir(f"/proc/{pid}/task")) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def test_helpers_are_demoted_and_engines_chunkers_raylet_and_idle_workers_are_not():
    processes = [
        (10, "ray::MapWorker(MapBatches(EmbedActor))"),
        (11, "ray::MapWorker(MapBatches(ChunkActor))"),
        (12, "ray::MapBatches(_write)"),
        (13, "/x/ray/core/src/ray/raylet/raylet --node_id=abc"),
        (14, "/x/ray/core/src/ray/gcs/gcs_server --port 0"),
        (15, "ray::IDLE"),
        (16, "ray::_StatsActor"),
        (17, "python -u /x/ray/_private/log_monitor.py"),
        (18, "ray::SomethingElse"),
        (1, "python -m jobs.ingest"),
    ]
    assert helper_pids(processes, driver_pid=1) == [12, 14, 16, 17]  # chunk actors feed the engines: not demoted


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="per-thread niceness is Linux's")
def test_demoting_a_process_reaches_every_thread_and_never_raises_priority(spawn):
    proc = spawn(THREADS)
    _wait_threads(proc.pid, 4)
    assert set(_thread_niceness(proc.pid)) == {os.getpriority(os.PRIO_PROCESS, 0)}
    assert demote_process(proc.pid, 7) == 4
    assert set(_thread_niceness(proc.pid)) == {7}
    assert demote_process(proc.pid, 3) == 0  # lower niceness would need privileges, and is not what we ask
    assert set(_thread_niceness(proc.pid)) == {7}
    assert raise_niceness(9, 2**22 + 12345) is False  # a thread that does not exist


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="per-thread niceness is Linux's")
def test_keeper_demotes_the_executor_thread_and_helper_children_only(spawn):
    gcs = spawn("import time; time.sleep(60)", "/x/ray/gcs/gcs_server")
    raylet = spawn("import time; time.sleep(60)", "/x/ray/raylet/raylet")
    stop = threading.Event()
    executor = threading.Thread(target=stop.wait, name="StreamingExecutor-dataset_1", daemon=True)
    executor.start()
    try:
        keeper = PriorityKeeper(niceness=11)
        keeper.sweep()
        assert os.getpriority(os.PRIO_PROCESS, executor.native_id) == 11
        assert set(_thread_niceness(gcs.pid)) == {11}
        assert set(_thread_niceness(raylet.pid)) == {os.getpriority(os.PRIO_PROCESS, 0)}
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < 11  # the driver's own thread stays
    finally:
        stop.set()
        executor.join()
