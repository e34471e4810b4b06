"""The start gate: the engines sharing one GPU start one after another. Its bookkeeping (DeviceGates) is plain
asyncio; the Ray actor around it asks Ray whether a holder is still alive."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import ray
import structlog
from ray.exceptions import GetTimeoutError, RayError

from pipeline.run.ray.cluster import actor_restarts

log = structlog.get_logger(__name__)
CHECK_S = 2.0
"""How often a waiter looks again at a holder that has not left: is it still alive, is its lease over."""
REPLY_MARGIN_S = 30.0
"""How much longer than its own wait an engine waits for the gate's answer before going ahead without it."""


@dataclass
class Holder:
    actor: str
    restarts: int
    """The actor's restarts when it entered: one more since means the process that entered died."""
    since: float


class DeviceGates:
    """One gate per device: held by one engine actor (by id) while it starts. The gate opens when its holder
    leaves, when the process that entered is gone (Ray restarted the actor since, or gave up on it: a start that
    died gives its device back), or when the holder has held it longer than `lease_s` (a start that hangs). A
    restarted holder re-enters the gate it holds; a waiter gives up after its own timeout, inside the gate, so that
    no stale waiter takes the gate later. `restarts(actor)`: how often Ray restarted the actor, None once it is
    dead (an actor in its constructor is not yet "alive" to Ray: its restarts tell its processes apart)."""

    def __init__(self, lease_s: float, restarts: Callable[[str], Awaitable[int | None]], check_s: float = CHECK_S):
        self.lease_s, self.restarts, self.check_s = lease_s, restarts, check_s
        self.holders: dict[str, Holder] = {}
        self.changed = asyncio.Condition()

    async def enter(self, key: str, actor: str, timeout_s: float) -> bool:
        """Wait for `key`'s gate and hold it for `actor`; False after `timeout_s` without it (the waiter goes ahead
        unheld, and nothing of its wait stays queued)."""
        deadline = time.monotonic() + timeout_s
        async with self.changed:
            while True:
                holder = self.holders.get(key)
                if holder is None or holder.actor == actor or await self._gone(key, holder):
                    self.holders[key] = Holder(actor, await self.restarts(actor) or 0, time.monotonic())
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                try:
                    await asyncio.wait_for(self.changed.wait(), timeout=min(self.check_s, left))
                except asyncio.TimeoutError:
                    pass

    async def leave(self, key: str, actor: str) -> None:
        async with self.changed:
            holder = self.holders.get(key)
            if holder is not None and holder.actor == actor:
                del self.holders[key]
                self.changed.notify_all()

    async def _gone(self, key: str, holder: Holder) -> bool:
        held_s = time.monotonic() - holder.since
        if held_s > self.lease_s:
            log.warning("start_gate_lease_over", device=key, holder=holder.actor, held_s=round(held_s))
            return True
        now = await self.restarts(holder.actor)
        if now is None or now > holder.restarts:
            log.warning("start_gate_holder_gone", device=key, holder=holder.actor, restarted=now is not None)
            return True
        return False


@ray.remote(num_cpus=0)
class StartGate:
    """Lets one engine at a time start on each GPU. vLLM sizes an engine's KV cache from how much the whole
    device's free memory drops during its profile run, so engines starting together on one GPU are charged for
    each other's weights and activations: "No available memory for the cache blocks", a failed profiling assertion,
    or silently a smaller cache (vllm#55827, vllm#9198). Started one after another, each profiles alone, and each
    takes its share of the device (gpu_memory_utilization / engines) from what vLLM itself measured. Giving vLLM
    kv_cache_memory_bytes from the memory planner would also skip the delta sizing, but it overrides
    gpu_memory_utilization with an estimate no GPU has checked yet, and the profile runs would still overlap."""

    def __init__(self, lease_s: float):
        self.gates = DeviceGates(lease_s, _restarts)

    async def enter(self, key: str, actor: str, timeout_s: float) -> bool:
        return await self.gates.enter(key, actor, timeout_s)

    async def leave(self, key: str, actor: str) -> None:
        await self.gates.leave(key, actor)


async def _restarts(actor: str) -> int | None:
    return actor_restarts(actor)  # a GCS that cannot say (0): the holder keeps the gate until its lease ends


def wait_turn(gate, key: str, actor: str, timeout_s: float) -> bool:
    """Wait for this engine's turn on its GPU; after `timeout_s` (an engine before it that never finished its
    start, and is neither dead nor past its lease) go ahead anyway."""
    if gate is None:
        return False
    try:
        entered = ray.get(gate.enter.remote(key, actor, timeout_s), timeout=timeout_s + REPLY_MARGIN_S)
    except (GetTimeoutError, RayError):
        entered = False
    if not entered:
        log.warning("engine_start_not_gated", device=key, waited_s=timeout_s)
    return entered
