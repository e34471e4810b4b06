import time
from datetime import datetime, timedelta, timezone

import pytest

from pipeline.run.run_clock import RunClock

pytestmark = pytest.mark.unit


def test_wall_time_is_on_the_clock_that_engines_stamp_their_ready_time_with():
    # An engine's ready time is a UTC timestamp from its own process, perhaps on another node; the run's wall time
    # must be on that clock, or start-up can outlast the run when the monotonic clock falls behind.
    clock = RunClock(datetime.now(timezone.utc) - timedelta(seconds=30))
    before = time.perf_counter()
    wall = clock.wall_s()
    assert 30 <= wall < 30 + (time.perf_counter() - before) + 1


def test_a_fresh_clock_starts_near_zero_and_grows():
    clock = RunClock.now()
    first = clock.wall_s()
    time.sleep(0.05)
    assert 0 <= first < clock.wall_s()
