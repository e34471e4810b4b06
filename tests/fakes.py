"""Test doubles for the logic around an engine; never the only test of a feature."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from pipeline.errors import InputRejected


class FakeEmbedder:
    """Deterministic unit vectors from a hash of the token ids; for tests of the logic around an engine."""

    def __init__(self, dim: int = 8, refuse_token: int | None = None):
        self.dim = dim
        self.refuse_token = refuse_token
        self.tokens_processed = 0

    def embed(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        if self.refuse_token is not None and any(self.refuse_token in ids for ids in token_ids):
            msg = f"Token id {self.refuse_token} is out of vocabulary"
            raise InputRejected(msg)
        out = np.empty((len(token_ids), self.dim), dtype=np.float32)
        for row, ids in enumerate(token_ids):
            seed = int.from_bytes(hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).digest()[:8], "little")
            vec = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            out[row] = vec / np.linalg.norm(vec)
            self.tokens_processed += len(ids)
        return out

    def info(self) -> dict:
        return {"engine": "fake", "dim": self.dim}


class StandInEngine(FakeEmbedder):
    """A stand-in engine for jobs on Ray (model.embedder = "tests.fakes:StandInEngine"): FakeEmbedder's vectors at the
    model's dimension, started as the engine would be (from the plan's EngineSpec, in an engine actor), in no time
    and without torch or vLLM. For the faults, placement and exactly-once tests; never the only test of a feature."""

    def __init__(self, spec, slot: int | None = None):
        import json
        from pathlib import Path

        config = json.loads((Path(spec.model_dir) / "config.json").read_text())
        super().__init__(dim=config["hidden_size"])
        self.slot = slot

    def info(self) -> dict:
        return {"engine": "stand-in", "dim": self.dim}


class PacedEngine(StandInEngine):
    """StandInEngine at a CPU engine's pace (TOKENS_PER_S), so that a run has work left when a test acts on it
    (model.embedder = "tests.fakes:PacedEngine")."""

    TOKENS_PER_S = 5000.0

    def embed(self, token_ids):
        import time

        time.sleep(sum(len(ids) for ids in token_ids) / self.TOKENS_PER_S)
        return super().embed(token_ids)


class BrokenEngine:
    """A stand-in engine that cannot start, as vLLM says when its memory is gone (model.embedder =
    "tests.fakes:BrokenEngine")."""

    MESSAGE = (
        "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when "
        "initializing the engine."
    )

    def __init__(self, spec, slot: int | None = None):
        raise ValueError(self.MESSAGE.removeprefix("ValueError: "))


SICK_RESOURCE = "sick_gpu"
"""A custom resource a test node is started with (`ray start --resources '{"sick_gpu": 1}'`): its GPU is bad."""


def on_sick_node() -> bool:
    """Whether this process runs on the node a test started with SICK_RESOURCE."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    return any(n["NodeID"] == here and SICK_RESOURCE in n.get("Resources", {}) for n in ray.nodes() if n["Alive"])


class SickGpuEngine(StandInEngine):
    """A stand-in engine (model.embedder = "tests.fakes:SickGpuEngine") that, on the sick node, starts and then
    raises on every call what PyTorch raises on a GPU whose memory fails (an ECC error, Xid 48), restarts included."""

    MESSAGE = "RuntimeError: CUDA error: uncorrectable ECC error encountered"

    def __init__(self, spec, slot: int | None = None):
        super().__init__(spec, slot)
        self.sick = on_sick_node()

    def embed(self, token_ids):
        if self.sick:
            raise RuntimeError(self.MESSAGE.removeprefix("RuntimeError: "))
        return super().embed(token_ids)


class NoStartEngine(StandInEngine):
    """On the sick node, cannot start, as vLLM says when the GPU's memory is gone (BrokenEngine's message), on every
    try (model.embedder = "tests.fakes:NoStartEngine")."""

    def __init__(self, spec, slot: int | None = None):
        if on_sick_node():
            raise ValueError(BrokenEngine.MESSAGE.removeprefix("ValueError: "))
        super().__init__(spec, slot)


class RestartFailsEngine(StandInEngine):
    """On the sick node, starts, then every call raises what vLLM raises once a tensor-parallel worker died, and its
    restart cannot start (model.embedder = "tests.fakes:RestartFailsEngine")."""

    MESSAGE = "RuntimeError: Executor failed."
    RESTART_MESSAGE = "RuntimeError: CUDA error: CUDA-capable device(s) is/are busy or unavailable"

    def __init__(self, spec, slot: int | None = None):
        import ray

        self.sick = on_sick_node()
        if self.sick and ray.get_runtime_context().was_current_actor_reconstructed:
            raise RuntimeError(self.RESTART_MESSAGE.removeprefix("RuntimeError: "))
        super().__init__(spec, slot)

    def embed(self, token_ids):
        if self.sick:
            raise RuntimeError(self.MESSAGE.removeprefix("RuntimeError: "))
        return super().embed(token_ids)


NVIDIA_SMI = """#!/bin/sh
# stands in for nvidia-smi on a node of logical GPUs: the query the planner's probe makes, answered as an H100 would
echo "NVIDIA H100 80GB HBM3, 81559, 580.65.06"
"""
H100_MIB = 81559


def gpu_node_path(folder) -> str:
    """A PATH whose first directory, `folder`, holds the stand-in nvidia-smi: what a node of logical GPUs is started
    with so that the planner's probe reads an H100 there."""
    import os
    from pathlib import Path

    smi = Path(folder) / "nvidia-smi"
    smi.write_text(NVIDIA_SMI)
    smi.chmod(0o755)
    return f"{folder}:{os.environ['PATH']}"


RECORDS_ENV = "EMBEDPIPE_TEST_ENGINE_RECORDS"
"""Directory where RecordingEngine writes one JSON file per engine start (set on the cluster's nodes)."""


class RecordingEngine(StandInEngine):
    """A stand-in engine (model.embedder = "tests.fakes:RecordingEngine") for placement tests on a Ray cluster of
    logical GPUs: StandInEngine's vectors, and a record of what Ray gave the engine (its node, GPU ids,
    CUDA_VISIBLE_DEVICES, the bundle resources it holds), the vLLM arguments it would have started with, and when its
    start began and ended: a start that takes START_S, so starts that overlap show."""

    START_S = 2.0

    def __init__(self, spec, slot: int | None = None):
        import json
        import os
        import time
        from pathlib import Path

        import ray

        from pipeline.engine.vllm import engine_kwargs

        began = time.time()
        time.sleep(self.START_S)
        context = ray.get_runtime_context()
        super().__init__(spec, slot)
        record = {
            "node": context.get_node_id(),
            "gpu_ids": context.get_accelerator_ids().get("GPU", []),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "assigned": context.get_assigned_resources(),
            "slot": slot,
            "engine_kwargs": engine_kwargs(spec),
            "began": began,
            "ended": time.time(),
            "pid": os.getpid(),
        }
        out = Path(os.environ[RECORDS_ENV]) / f"{os.getpid()}-{began:.6f}.json"
        out.write_text(json.dumps(record))

    def info(self) -> dict:
        return {"engine": "recording", "dim": self.dim}


HANGS_ENV = "EMBEDPIPE_TEST_ENGINE_HANGS"
"""How many of HangingEngine's incarnations stop answering (their first call never returns); 'always' for all."""


class HangingEngine(RecordingEngine):
    """A stand-in engine whose first EMBEDPIPE_TEST_ENGINE_HANGS incarnations stop answering at their first call,
    as an engine does after a GPU fault or an NCCL hang: the process lives and answers its control thread, the
    call never returns. It says so in its log first (its last words)."""

    def embed(self, token_ids):
        import logging
        import os
        import time
        from pathlib import Path

        hangs = os.environ.get(HANGS_ENV, "1")
        seen = Path(os.environ[RECORDS_ENV]) / "hangs"
        seen.mkdir(exist_ok=True)
        if hangs == "always" or len(list(seen.iterdir())) < int(hangs):
            (seen / str(os.getpid())).touch()
            logging.getLogger("tests.fakes").warning("stand-in engine %s stops answering", os.getpid())
            time.sleep(3600)
        return super().embed(token_ids)
