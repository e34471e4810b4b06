"""The run's progress board: an actor on the driver's node that the plan and chunk stages and the engines send
their counts to (fire and forget), read by the driver's progress display."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict

import ray

from pipeline.run.progress import Progress
from pipeline.run.ray.cluster import on_driver_node


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Counts the plan and chunk stages send as they go (fire and forget), for the driver's progress display."""

    def __init__(self):
        self.progress = Progress()

    def add(self, counts: dict[str, int]) -> None:
        self.progress.add(counts)

    def snapshot(self) -> dict[str, int]:
        return asdict(self.progress)


@contextmanager
def progress_board() -> Iterator:
    """The run's progress board, killed when the run ends: an actor outlives the run that made it, so every later run
    in the same Ray session (the benchmark's points are) kept one more idle actor process (0.3-0.9 CPU-seconds per
    steady window on 2 cores, with five left over)."""
    board = ProgressBoard.options(**on_driver_node()).remote()
    try:
        yield board
    finally:
        ray.kill(board)


def board_reader(board) -> Callable[[], dict[str, int]]:
    return lambda: ray.get(board.snapshot.remote(), timeout=2.0)
