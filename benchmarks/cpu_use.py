"""Where the CPU goes while a run is steady: every process of the run (the driver and all it started: Ray's
GCS, raylet and agents, Ray Data's actors, the chunk and engine actors, the write tasks), sampled every second,
and the CPU-seconds each role used inside a time window. The table arithmetic is pure; the sampler uses psutil.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass

from pipeline.runtime.process_roles import role_of


@dataclass(frozen=True)
class Sample:
    t: float
    """Wall-clock seconds (time.time())."""
    pid: int
    role: str
    cpu_s: float
    """The process's user + system CPU seconds so far."""


def cpu_by_role(samples: list[Sample], start: float, end: float) -> dict[str, dict[str, float]]:
    """CPU-seconds per role inside [start, end], and how many processes held the role. The CPU a process used
    between two samples counts for the role of the later sample, in proportion to the overlap with the window."""
    by_pid: dict[int, list[Sample]] = {}
    for sample in samples:
        by_pid.setdefault(sample.pid, []).append(sample)
    out: dict[str, dict[str, float]] = {}
    for series in by_pid.values():
        series.sort(key=lambda x: x.t)
        for a, b in itertools.pairwise(series):
            if b.t <= a.t:
                continue
            overlap = max(0.0, min(b.t, end) - max(a.t, start))
            if overlap == 0.0:
                continue
            used = max(0.0, b.cpu_s - a.cpu_s) * overlap / (b.t - a.t)
            row = out.setdefault(b.role, {"cpu_s": 0.0, "pids": set()})
            row["cpu_s"] += used
            row["pids"].add(b.pid)
    return {role: {"cpu_s": row["cpu_s"], "processes": len(row["pids"])} for role, row in out.items()}


class CpuSampler:
    """Samples the CPU time of this process and all its descendants every `interval_s` on a thread."""

    def __init__(self, interval_s: float = 1.0):
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu-sampler", daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        now = time.time()
        for proc in [me, *me.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                command = " ".join(proc.cmdline()) or proc.name()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            self.samples.append(Sample(now, proc.pid, role_of(command, proc.pid, me.pid), times.user + times.system))
