"""What a node's GPUs are, read without CUDA: `nvidia-smi` lists every GPU of the node whatever the process's
CUDA_VISIBLE_DEVICES says, needs no GPU reserved and initialises no CUDA context in the reading process. No ray,
vllm or torch imports."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

NVIDIA_SMI_QUERY = ["--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"]
MIB = 2**20


@dataclass(frozen=True)
class NodeDevices:
    host_memory_bytes: int
    gpu_name: str | None = None
    gpu_memory_bytes: int | None = None
    """The smallest GPU's memory: engines must fit there."""
    gpu_count: int = 0
    driver_version: str | None = None
    """The NVIDIA driver's version, as nvidia-smi says it (e.g. 580.65.06)."""
    note: str | None = None
    """Why the GPUs could not be read, when they could not."""


def parse_nvidia_smi(text: str) -> list[tuple[str, int, str | None]]:
    """(name, total memory in bytes, driver version) per GPU from `nvidia-smi --query-gpu=name,memory.total,
    driver_version --format=csv,noheader,nounits` (memory in MiB; an older query without the driver gives None)."""
    gpus = []
    for line in text.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        driver = fields.pop() if len(fields) >= 3 and not fields[-1].isdigit() else None
        name, memory = ",".join(fields[:-1]).strip(), fields[-1] if fields else ""
        if name and memory.isdigit():
            gpus.append((name, int(memory) * MIB, driver))
    return gpus


def read_node_devices(timeout_s: float = 20.0) -> NodeDevices:
    """This node's host memory and, where nvidia-smi answers, its GPUs."""
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return NodeDevices(host, note="nvidia-smi is not on this node's PATH")
    try:
        out = subprocess.run([smi, *NVIDIA_SMI_QUERY], capture_output=True, text=True, timeout=timeout_s, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return NodeDevices(host, note=f"nvidia-smi failed: {exc}")
    gpus = parse_nvidia_smi(out.stdout)
    if not gpus:
        return NodeDevices(host, note=f"nvidia-smi listed no GPU: {out.stdout.strip()[:200]!r}")
    name, memory, driver = min(gpus, key=lambda g: g[1])
    return NodeDevices(host, name, memory, len(gpus), driver)
