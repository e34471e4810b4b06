"""How many engines share one device, and which cores each gets on a CPU node. Pure: no ray, vllm or torch.

A small embedder leaves most of a large GPU idle, so several engines can share it: each is placed with
num_gpus = 1 / n and gets 1 / n of the device's memory. On a CPU node engines share the node's cores, and each is
bound to a core set of its own (VLLM_CPU_OMP_THREADS_BIND), so their OpenMP threads never compete for one core.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.errors import ConfigError

SLOT_ENV = "EMBEDPIPE_ENGINE_SLOT"
"""Environment variable naming an engine actor's slot on its node (0 .. engines_per_device - 1)."""


@dataclass(frozen=True)
class DeviceShare:
    engines_per_device: int
    note: str
    """Why this many, in one sentence."""


def choose_engines_per_device(
    setting: int | None, cap: int, device: str, tensor_parallel_size: int, fitting: int | None, cores: int
) -> DeviceShare:
    """run.engines_per_device if set (checked), else on a GPU as many as the memory planner fits, at most `cap`;
    on a CPU node one engine with every core unless set. `fitting`: engines whose memory fits one device (None:
    device memory unknown). `cores`: CPU cores of a node."""
    if device == "cuda" and tensor_parallel_size > 1:
        if setting not in (None, 1):
            msg = (
                f"run.engines_per_device={setting} with model.tensor_parallel_size={tensor_parallel_size}: an engine "
                f"that spans several GPUs cannot share them; set run.engines_per_device = 1 or tensor_parallel_size=1"
            )
            raise ConfigError(msg)
        return DeviceShare(1, f"one engine per group of {tensor_parallel_size} GPUs (tensor parallel)")
    if device == "cpu":
        if setting is None:
            return DeviceShare(
                1, f"one engine per CPU node with all {cores} cores (set run.engines_per_device to split)"
            )
        if setting > cores:
            msg = (
                f"run.engines_per_device={setting} exceeds the node's {cores} CPU cores: each engine needs a core "
                f"of its own; lower it to at most {cores}"
            )
            raise ConfigError(msg)
        return DeviceShare(setting, f"{setting} engines per CPU node, {cores // setting} cores each (setting)")
    if setting is not None:
        if fitting is not None and setting > fitting:
            msg = (
                f"run.engines_per_device={setting} does not fit: the memory planner fits {fitting} engines per GPU at "
                f"these settings; lower run.engines_per_device to {fitting} or lower max_num_batched_tokens"
            )
            raise ConfigError(msg)
        return DeviceShare(setting, f"{setting} engines per GPU (setting)")
    if fitting is None:
        return DeviceShare(1, "one engine per GPU: device memory unknown, so the planner cannot size more")
    chosen = max(1, min(fitting, cap))
    why = f"the memory planner fits {fitting}" + (
        f", capped by run.max_engines_per_device={cap}" if fitting > cap else ""
    )
    return DeviceShare(chosen, f"{chosen} engines per GPU: {why}")


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
