"""The start gate: the engines sharing one GPU start one after another."""

from __future__ import annotations

import asyncio

import ray
import structlog
from ray.exceptions import GetTimeoutError

log = structlog.get_logger(__name__)


@ray.remote(num_cpus=0)
class StartGate:
    """Lets one engine at a time start on each GPU. vLLM sizes an engine's KV cache from how much the whole
    device's free memory drops during its profile run, so engines starting together on one GPU are charged for
    each other's weights and activations: "No available memory for the cache blocks", a failed profiling assertion,
    or silently a smaller cache (vllm#55827, vllm#9198). Started one after another, each profiles alone, and each
    takes its share of the device (gpu_memory_utilization / engines) from what vLLM itself measured. Giving vLLM
    kv_cache_memory_bytes from the memory planner would also skip the delta sizing, but it overrides
    gpu_memory_utilization with an estimate no GPU has checked yet, and the profile runs would still overlap."""

    def __init__(self):
        self.locks: dict[str, asyncio.Lock] = {}

    async def enter(self, key: str) -> None:
        await self.locks.setdefault(key, asyncio.Lock()).acquire()

    async def leave(self, key: str) -> None:
        lock = self.locks.get(key)
        if lock is not None and lock.locked():
            lock.release()


def wait_turn(gate, key: str, timeout_s: float) -> bool:
    """Wait for this engine's turn on its GPU; after `timeout_s` (an engine before it that never finished its
    start) go ahead anyway."""
    if gate is None:
        return False
    try:
        ray.get(gate.enter.remote(key), timeout=timeout_s)
    except GetTimeoutError:
        log.warning("engine_start_not_gated", device=key, waited_s=timeout_s)
        return False
    return True
