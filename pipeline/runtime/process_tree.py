"""The processes a library started below this one, and stopping those that outlive their end. Plain psutil."""

from __future__ import annotations

import psutil


def children() -> set[int]:
    """The ids of this process's direct children."""
    return {p.pid for p in psutil.Process().children()}


def started_since(before: set[int]) -> list[psutil.Process]:
    """This process's direct children that were not among `before`."""
    return [p for p in psutil.Process().children() if p.pid not in before]


def with_descendants(processes: list[psutil.Process]) -> list[psutil.Process]:
    """`processes` still running, and every process below them."""
    found = []
    for proc in processes:
        try:
            found += [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return found


def stop_leftovers(processes: list[psutil.Process], grace_s: float) -> list[str]:
    """Wait up to `grace_s` for `processes` to exit, then SIGKILL those still running, by their ids (psutil
    checks each one's start time, so a reused id is left alone). Returns what was killed, as "pid name"."""
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    killed = []
    for proc in alive:
        try:
            name = proc.name()
            proc.kill()
        except psutil.NoSuchProcess:
            continue
        killed.append(f"{proc.pid} {name}")
    psutil.wait_procs(alive, timeout=5)
    return killed
