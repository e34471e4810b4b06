"""The start gate's bookkeeping in plain asyncio: one holder per device, released when it leaves, dies or outlives
its lease; a restarted holder re-enters; a waiter that gave up leaves nothing queued. (With engines on a logical-GPU
cluster and one killed mid-start: tests/ray/test_gpu_placement.py.)"""

from __future__ import annotations

import asyncio

import pytest

from pipeline.run.ray.start_gate import DeviceGates

pytestmark = pytest.mark.unit


def gates(restarts: dict[str, int | None] | None = None, lease_s: float = 60.0) -> DeviceGates:
    """Gates whose actors' restarts are `restarts` (None: dead; absent: never restarted)."""
    known = restarts if restarts is not None else {}

    async def count(actor: str) -> int | None:
        return known.get(actor, 0)

    return DeviceGates(lease_s, count, check_s=0.01)


def run(coro):
    return asyncio.run(coro)


def test_one_holder_at_a_time_and_the_next_enters_when_it_leaves():
    async def scenario():
        g = gates()
        assert await g.enter("gpu0", "a", 1.0)
        second = asyncio.create_task(g.enter("gpu0", "b", 1.0))
        await asyncio.sleep(0.05)
        assert not second.done()  # held by a
        assert await g.enter("gpu1", "c", 0.1)  # another device is its own gate
        await g.leave("gpu0", "a")
        assert await second and g.holders["gpu0"].actor == "b"

    run(scenario())


def test_a_holder_whose_process_died_gives_the_gate_back_and_a_restarted_holder_re_enters():
    async def scenario():
        restarts: dict[str, int | None] = {}
        g = gates(restarts)
        assert await g.enter("gpu0", "a", 1.0)
        waiting = asyncio.create_task(g.enter("gpu0", "b", 5.0))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # a is starting (to Ray not yet alive, but not restarted either)
        restarts["a"] = 1  # a's process died mid-start and Ray restarts it
        assert await asyncio.wait_for(waiting, 1.0) and g.holders["gpu0"].actor == "b"
        await g.leave("gpu0", "a")  # a late leave from the dead holder does not open b's gate
        assert g.holders["gpu0"].actor == "b"
        second = gates({"c": 0})
        assert await second.enter("gpu0", "c", 1.0)
        assert await second.enter("gpu0", "c", 0.1)  # c restarted before anyone took its gate: it re-enters
        late = asyncio.create_task(second.enter("gpu0", "d", 5.0))
        await asyncio.sleep(0.05)
        assert not late.done()
        second.restarts = gates({"c": None}).restarts  # Ray gave up on c
        assert await asyncio.wait_for(late, 1.0) and second.holders["gpu0"].actor == "d"

    run(scenario())


def test_a_holder_past_its_lease_gives_the_gate_back():
    async def scenario():
        g = gates(lease_s=0.1)
        assert await g.enter("gpu0", "hung", 1.0)
        assert await g.enter("gpu0", "b", 2.0) and g.holders["gpu0"].actor == "b"

    run(scenario())


def test_a_waiter_that_gave_up_leaves_nothing_queued():
    async def scenario():
        g = gates()
        assert await g.enter("gpu0", "a", 1.0)
        assert not await g.enter("gpu0", "impatient", 0.05)  # gave up: goes ahead unheld
        await g.leave("gpu0", "a")
        assert "gpu0" not in g.holders  # the gate is free, not taken later for the waiter that left
        assert await g.enter("gpu0", "c", 0.1)

    run(scenario())
