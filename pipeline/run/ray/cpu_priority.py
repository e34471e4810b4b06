"""Engines first on a shared CPU: the processes around the engines run at a high niceness, so they use the CPU the
engines leave instead of preempting them. A CPU engine's threads meet at a barrier every layer, so a preempted
thread stalls all of them: on a 2-core machine, about a tenth of the CPU taken by other processes at niceness 0
cost the engine 13% of its speed, and 3% when those processes ran at 19.

The demotion starts once an engine on the node is ready (its actor leaves a flag file on its node), not before:
while the engines start, the reading, planning and chunking they will need must run beside them, or the engines
are ready with nothing to embed (measured: helpers at 19 while an engine started were starved until it was
ready, and the engine then waited 1-3.5 s for its first batch). Nodes without an engine never demote anything.

Only ever raises niceness (lowering it back needs privileges). Linux keeps a nice value per thread, so a process
is demoted thread by thread; threads started later inherit it from the thread that starts them.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pipeline.runtime.process_roles import HELPER_ROLES, role_of

_process_niceness = 0


def raise_niceness(niceness: int, who: int = 0) -> bool:
    """Lower one thread's (or, off Linux, one process's) priority to `niceness`. False where it was already as
    low, the thread is gone, or the system refused."""
    try:
        if os.getpriority(os.PRIO_PROCESS, who) >= niceness:
            return False
        os.setpriority(os.PRIO_PROCESS, who, niceness)
    except OSError:
        return False
    return True


def demote_process(pid: int, niceness: int) -> int:
    """Every thread of a process to `niceness`; how many threads changed."""
    try:
        threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        threads = [pid]
    return sum(raise_niceness(niceness, tid) for tid in threads)


def engines_ready_flag(run_id: str) -> str:
    """The file an engine actor leaves on its node when it is ready (the node's temporary directory)."""
    return str(Path(tempfile.gettempdir()) / f"embedpipe-{run_id}.engines-ready")


def mark_engines_ready(flag: str) -> None:
    Path(flag).touch()


@dataclass(frozen=True)
class HelperPriority:
    """What a helper stage (read, plan, write; not chunk, which feeds the engines) needs to step aside: the niceness,
    and the flag that says an engine on this node is ready."""

    niceness: int
    engines_ready_flag: str

    def apply(self) -> None:
        """Called by every helper stage on the worker it runs on: demotes this process once an engine on its node is
        ready; a stat until then, nothing after. Engines never share these workers: their actors carry their own
        runtime environment, so Ray starts them apart."""
        global _process_niceness
        if self.niceness > _process_niceness and os.path.exists(self.engines_ready_flag):
            demote_process(os.getpid(), self.niceness)
            _process_niceness = self.niceness


def helper_pids(processes: Iterable[tuple[int, str]], driver_pid: int) -> list[int]:
    """Of (pid, title or command line) pairs, the processes whose role may run below the engines."""
    return [pid for pid, command in processes if role_of(command, pid, driver_pid) in HELPER_ROLES]


class PriorityKeeper:
    """While a run lives, once an engine on this machine is ready, demotes (every `interval_s`) this machine's helper
    processes started by this driver (a local Ray's daemons but the raylet, Ray Data's helper actors, the helper
    stages' workers) and every thread of the driver but its main one (Ray Data's scheduling loop, which took 15-20%
    of a core in a steady window, and Ray's own threads). The main thread keeps its priority: it commits the groups,
    and it is the caller's. On a cluster the driver reaches only its own threads; workers demote themselves. Removes
    the flag when the run ends."""

    def __init__(self, priority: HelperPriority, interval_s: float = 2.0, poll_s: float = 0.25):
        self.niceness = priority.niceness
        self.flag = priority.engines_ready_flag
        self.interval_s = interval_s
        self.poll_s = poll_s
        self.demoted: set[tuple[int, float]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="priority-keeper", daemon=True)

    def __enter__(self) -> PriorityKeeper:
        if self.niceness > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        Path(self.flag).unlink(missing_ok=True)

    def _loop(self) -> None:
        while not os.path.exists(self.flag):
            if self._stop.wait(self.poll_s):
                return
        while not self._stop.is_set():
            self.sweep()
            self._stop.wait(self.interval_s)

    def sweep(self) -> None:
        import psutil

        main = threading.main_thread().native_id
        for tid in _own_threads():
            if tid != main:
                raise_niceness(self.niceness, tid)
        me = psutil.Process()
        created: dict[int, float] = {}
        named: list[tuple[int, str]] = []
        for proc in me.children(recursive=True):
            try:
                if (proc.pid, proc.create_time()) not in self.demoted:
                    created[proc.pid] = proc.create_time()
                    named.append((proc.pid, " ".join(proc.cmdline()) or proc.name()))
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        for pid in helper_pids(named, me.pid):
            demote_process(pid, self.niceness)
            self.demoted.add((pid, created[pid]))


def _own_threads() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [t.native_id for t in threading.enumerate() if t.native_id is not None]
