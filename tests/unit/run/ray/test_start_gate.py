"""The start gate's bookkeeping in plain asyncio: one holder per device, released when it leaves, dies or outlives
its lease; a restarted holder re-enters; a waiter that gave up leaves nothing queued. (With engines on a logical-GPU
cluster and one killed mid-start: tests/ray/test_gpu_placement.py.)"""

from __future__ import annotations

import asyncio

import pytest

from pipeline.run.ray.start_gate import DeviceGates

pytestmark = pytest.mark.unit


def gates(dead: set[str] | None = None, lease_s: float = 60.0) -> DeviceGates:
    async def alive(actor: str) -> bool:
        return actor not in (dead if dead is not None else set())

    return DeviceGates(lease_s, alive, check_s=0.01)


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


def test_a_dead_holder_gives_the_gate_back_and_a_restarted_holder_re_enters():
    async def scenario():
        dead: set[str] = set()
        g = gates(dead)
        assert await g.enter("gpu0", "a", 1.0)
        assert await g.enter("gpu0", "a", 0.1)  # a restarted a (same actor id) re-enters its own gate
        waiting = asyncio.create_task(g.enter("gpu0", "b", 5.0))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        dead.add("a")  # a's process died mid-start
        assert await asyncio.wait_for(waiting, 1.0) and g.holders["gpu0"].actor == "b"
        await g.leave("gpu0", "a")  # a late leave from the dead holder does not open b's gate
        assert g.holders["gpu0"].actor == "b"

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
