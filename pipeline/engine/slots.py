"""Which cores each engine gets on a CPU node, and each engine's slot among those sharing its node. Pure: no ray,
vllm or torch. (How many engines share a device is the plan's: pipeline/plan/placement.py.)

On a CPU node engines share the node's cores, and each is bound to a core set of its own
(VLLM_CPU_OMP_THREADS_BIND), so their OpenMP threads never compete for one core.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.errors import ConfigError

SLOT_ENV = "EMBEDPIPE_ENGINE_SLOT"
"""Environment variable naming an engine actor's slot on its node (0 .. engines_per_device - 1)."""


def core_sets(cores: Sequence[int], engines: int) -> list[list[int]]:
    """The cores split into `engines` disjoint, contiguous, equal sets (the remainder left to the other
    processes on the node)."""
    cores = sorted(cores)
    if engines < 1 or engines > len(cores):
        msg = f"{engines} engines cannot each have a core of their own among {len(cores)} cores"
        raise ConfigError(msg)
    each = len(cores) // engines
    return [cores[i * each : (i + 1) * each] for i in range(engines)]


def bind_spec(cores: Sequence[int]) -> str:
    """VLLM_CPU_OMP_THREADS_BIND's form for a core set: ranges joined by commas, e.g. '0-3' or '0-1,4'."""
    parts, cores = [], sorted(cores)
    start = prev = cores[0]
    for core in [*cores[1:], None]:
        if core is not None and core == prev + 1:
            prev = core
            continue
        parts.append(f"{start}-{prev}" if prev > start else str(start))
        if core is not None:
            start = prev = core
    return ",".join(parts)


def node_slots(bundle_nodes: Sequence[str]) -> list[int]:
    """Each placement bundle's slot on its node: its rank among the bundles placed on the same node."""
    seen: dict[str, int] = {}
    slots = []
    for node in bundle_nodes:
        slots.append(seen.get(node, 0))
        seen[node] = slots[-1] + 1
    return slots
