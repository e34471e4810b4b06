"""The CPU priority rules: which processes run below the engines, and demotion that reaches every thread."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.run.ray.cpu_priority import (
    HelperPriority,
    PriorityKeeper,
    demote_process,
    engines_ready_flag,
    helper_pids,
    mark_engines_ready,
    raise_niceness,
)

pytestmark = pytest.mark.unit

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


def test_helpers_and_idle_workers_are_demoted_and_engines_chunkers_and_raylet_are_not():
    processes = [
        (10, "ray::EngineActor.embed"),
        (11, "ray::MapWorker(MapBatches(ChunkActor))"),
        (12, "ray::MapBatches(_write)"),
        (13, "/x/ray/core/src/ray/raylet/raylet --node_id=abc"),
        (14, "/x/ray/core/src/ray/gcs/gcs_server --port 0"),
        (15, "ray::IDLE"),
        (16, "ray::_StatsActor"),
        (17, "python -u /x/ray/_private/log_monitor.py"),
        (18, "ray::SomethingElse"),
        (19, "ray::MapWorker(MapBatches(EngineFeeder))"),
        (1, "python -m jobs.ingest"),
    ]
    # chunk actors feed the engines: not demoted
    assert helper_pids(processes, driver_pid=1) == [12, 14, 15, 16, 17, 19]


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
def test_keeper_demotes_the_drivers_other_threads_and_helper_children_only(spawn):
    gcs = spawn("import time; time.sleep(60)", "/x/ray/gcs/gcs_server")
    raylet = spawn("import time; time.sleep(60)", "/x/ray/raylet/raylet")
    stop = threading.Event()
    executor = threading.Thread(target=stop.wait, name="StreamingExecutor-dataset_1", daemon=True)
    executor.start()
    other = threading.Thread(target=stop.wait, name="any-other", daemon=True)
    other.start()
    try:
        keeper = PriorityKeeper(HelperPriority(11, "unused"))
        keeper.sweep()
        assert os.getpriority(os.PRIO_PROCESS, executor.native_id) == 11
        assert os.getpriority(os.PRIO_PROCESS, other.native_id) == 11
        assert set(_thread_niceness(gcs.pid)) == {11}
        assert set(_thread_niceness(raylet.pid)) == {os.getpriority(os.PRIO_PROCESS, 0)}
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < 11  # the driver's own thread stays
    finally:
        stop.set()
        executor.join()
        other.join()


def _wait_for(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="per-thread niceness is Linux's")
def test_helpers_step_aside_only_once_an_engine_on_the_node_is_ready(tmp_path):
    flag = str(tmp_path / "engines-ready")
    code = (
        "import os, sys\n"
        "from pipeline.run.ray.cpu_priority import HelperPriority\n"
        f"p = HelperPriority(13, {flag!r})\n"
        "p.apply(); before = os.getpriority(os.PRIO_PROCESS, 0)\n"
        "open(p.engines_ready_flag, 'w').close()\n"
        "p.apply(); print(before, os.getpriority(os.PRIO_PROCESS, 0))"
    )
    repo = Path(__file__).parents[3]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo)
    before, after = map(int, out.stdout.split())
    assert before == os.getpriority(os.PRIO_PROCESS, 0)  # no engine ready: the feed keeps its priority
    assert after == 13


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="per-thread niceness is Linux's")
def test_keeper_waits_for_the_engines_flag_and_removes_it_at_the_end(spawn, tmp_path):
    gcs = spawn("import time; time.sleep(60)", "/x/ray/gcs/gcs_server")
    _wait_threads(gcs.pid, 1)
    flag = engines_ready_flag(f"test-{os.getpid()}")
    start = os.getpriority(os.PRIO_PROCESS, 0)
    with PriorityKeeper(HelperPriority(12, flag), interval_s=0.1, poll_s=0.05):
        time.sleep(0.5)
        assert set(_thread_niceness(gcs.pid)) == {start}  # engines still starting: helpers keep their priority
        mark_engines_ready(flag)
        assert _wait_for(lambda: set(_thread_niceness(gcs.pid)) == {12})
    assert not Path(flag).exists()
