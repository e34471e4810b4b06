"""Engines first on a shared CPU: the processes around the engines run at a high niceness, so they use the CPU the
engines leave instead of preempting them. A CPU engine's threads meet at a barrier every layer, so a preempted
thread stalls all of them: on a 2-core machine, about a tenth of the CPU taken by other processes at niceness 0
cost the engine 13% of its speed, and 3% when those processes ran at 19.

Only ever raises niceness (lowering it back needs privileges). Linux keeps a nice value per thread, so a process
is demoted thread by thread; threads started later inherit it from the thread that starts them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

from pipeline.process_roles import HELPER_ROLES, role_of

EXECUTOR_THREAD = "StreamingExecutor-"
"""Name prefix of the driver thread that runs Ray Data's scheduling loop."""

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


def demote_self(niceness: int) -> None:
    """Called by every helper stage (read, plan, write; not chunk, which feeds the engines) on the worker it runs
    on; once per process. Engines never share these workers: their actors carry their own runtime environment, so
    Ray starts them apart."""
    global _process_niceness
    if niceness > _process_niceness:
        demote_process(os.getpid(), niceness)
        _process_niceness = niceness


def helper_pids(processes: Iterable[tuple[int, str]], driver_pid: int) -> list[int]:
    """Of (pid, title or command line) pairs, the processes whose role may run below the engines."""
    return [pid for pid, command in processes if role_of(command, pid, driver_pid) in HELPER_ROLES]


class PriorityKeeper:
    """While a run lives, demotes (every `interval_s`) this machine's helper processes started by this driver (a
    local Ray's daemons but the raylet, Ray Data's helper actors, the helper stages' workers) and the driver's Ray
    Data executor thread. On a cluster the driver reaches only its own executor thread; workers demote themselves."""

    def __init__(self, niceness: int, interval_s: float = 2.0):
        self.niceness = niceness
        self.interval_s = interval_s
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

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sweep()
            self._stop.wait(self.interval_s)

    def sweep(self) -> None:
        import psutil

        for thread in threading.enumerate():
            if thread.name.startswith(EXECUTOR_THREAD) and thread.native_id is not None:
                raise_niceness(self.niceness, thread.native_id)
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
