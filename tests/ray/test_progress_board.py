"""The Ray side's own resources on real Ray: what a run starts, it stops."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.ray


def test_the_progress_board_counts_while_the_run_lives_and_is_gone_after_it(ray_local):
    from ray.exceptions import RayActorError

    from pipeline.run.ray.progress_board import board_reader, progress_board

    with progress_board() as board:
        # The reader's 2 s bound is for a board that is up; on a loaded machine the actor's own start can take longer.
        ray_local.get(board.snapshot.remote(), timeout=120)
        board.add.remote({"docs_chunked": 3})
        board.add.remote({"docs_chunked": 2, "chunks_made": 7})
        seen = board_reader(board)()
        assert (seen["docs_chunked"], seen["chunks_made"]) == (5, 7)
    deadline = time.monotonic() + 30
    with pytest.raises(RayActorError):  # the kill is asynchronous: a call sent at once may still be answered
        while time.monotonic() < deadline:
            ray_local.get(board.snapshot.remote(), timeout=30)
            time.sleep(0.2)
