"""The hardware side, measured with plain PyTorch in a spawned process: the dense matmul rate and the forward
pass rate of the model's own shape (random weights) at the corpus's chunk length. These are the ceilings an
engine's throughput is judged against where no data-sheet peak applies (CPUs), and a check on it where one does.
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

from pipeline.plan.compute import flops_per_token
from pipeline.plan.engine_spec import EngineSpec
from pipeline.plan.memory import resolve_dtype
from pipeline.plan.model_params import ModelShape


@dataclass(frozen=True)
class DeviceFigures:
    device: str
    name: str
    dtype: str
    threads: int | None
    matmul_tflops: float
    """Best of a few square-ish GEMMs at the model's MLP shape."""
    forward_tflops: float
    """Model FLOPs per second of a plain transformers forward pass, random weights, batch of chunk-length rows."""
    forward_tokens_per_s: float
    seq_len: int
    batch: int

    def to_dict(self) -> dict:
        return asdict(self)


def measure_device(spec: EngineSpec, shape: ModelShape, seq_len: int, tokens: int) -> DeviceFigures:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_measure, spec, shape, seq_len, tokens).result()


def engine_dtype(spec: EngineSpec, shape: ModelShape) -> str:
    """The dtype the engine computes in, as the memory planner resolves it (a float16 checkpoint stays float16)."""
    return resolve_dtype(spec.dtype, shape)


def _measure(spec: EngineSpec, shape: ModelShape, seq_len: int, tokens: int) -> DeviceFigures:
    import os

    if spec.device == "cpu":
        os.environ["OMP_NUM_THREADS"] = str(spec.cpu_threads)
    import torch
    from transformers import AutoConfig, AutoModel

    if spec.device == "cpu":
        torch.set_num_threads(spec.cpu_threads)
    device = torch.device("cuda" if spec.device == "cuda" else "cpu")
    dtype_name = engine_dtype(spec, shape)
    dtype = getattr(torch, dtype_name)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def best_of(fn, reps: int = 3) -> float:
        fn()
        sync()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return min(times)

    m_rows = max(tokens, seq_len)
    a = torch.randn(m_rows, shape.hidden_size, dtype=dtype, device=device)
    b = torch.randn(shape.hidden_size, shape.intermediate_size, dtype=dtype, device=device)
    with torch.inference_mode():
        gemm_s = best_of(lambda: a @ b)
    matmul_tflops = 2 * m_rows * shape.hidden_size * shape.intermediate_size / gemm_s / 1e12

    hf_config = AutoConfig.from_pretrained(spec.model_dir, trust_remote_code=spec.trust_remote_code)
    model = AutoModel.from_config(hf_config, dtype=dtype).to(device).eval()
    batch = max(1, tokens // seq_len)
    ids = torch.randint(0, shape.vocab_size, (batch, seq_len), device=device)
    with torch.inference_mode():
        forward_s = best_of(lambda: model(input_ids=ids))
    n_tokens = batch * seq_len
    if device.type == "cuda":
        name = torch.cuda.get_device_name(0)
    else:
        name = _cpu_name()
    return DeviceFigures(
        device=spec.device,
        name=name,
        dtype=dtype_name,
        threads=spec.cpu_threads if spec.device == "cpu" else None,
        matmul_tflops=matmul_tflops,
        forward_tflops=flops_per_token(shape, [seq_len] * batch) * n_tokens / forward_s / 1e12,
        forward_tokens_per_s=n_tokens / forward_s,
        seq_len=seq_len,
        batch=batch,
    )


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "cpu"
