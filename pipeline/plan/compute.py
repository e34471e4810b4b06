"""Compute per token and per forward pass, and what a device can do: the arithmetic that decides whether one
engine keeps a GPU busy, and that the benchmark's MFU divides by. Pure: no ray, vllm or torch imports.

FLOPs per token follow the usual forward-pass count: 2 per weight of every matrix a token passes through
(attention projections and MLP; embedding lookups are free), plus attention itself, QK^T and AV at 2 x L x q
each per layer for a sequence of L tokens (half of that on average for causal attention).
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.plan.model_params import ModelShape, params_from_shape

PEAK_TFLOPS_16BIT = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIE": 756.0,
    "H100": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "T4": 65.0,
    "V100": 125.0,
}
"""Dense (no sparsity) bf16/fp16 tensor-core peaks from the vendors' data sheets, in TFLOP/s. Longer names
first where one contains another; looked up by substring of the device name."""

SATURATING_FORWARD_MS = 20.0
"""A forward pass at max_num_batched_tokens that takes at least this long at the device's 16-bit peak keeps the
GPU busy with one engine. Between two forward passes a vLLM engine does host work (scheduling, input
preparation, pooling and returning the vectors) of a few milliseconds that one process cannot overlap with its
own compute; processes sharing a GPU without MPS are time-sliced, so a second engine only fills those gaps. At
20 ms of compute against a ~2 ms gap one engine keeps the GPU ~90% busy, and a real pass runs at 40-60% of the
data-sheet peak, so it is longer still. Shorter passes (small encoders: MiniLM at 8,192 tokens is ~0.4 ms at an
H100's peak) leave the GPU idle between them, and several engines fill it. An estimate from vLLM's published
overheads (its small-model throughput sits at <= 10% of the FLOP ceiling); not yet measured on a GPU."""


def flops_per_token(shape: ModelShape, lengths: Sequence[int]) -> float:
    """Average forward FLOPs per token over chunks of these lengths (longer chunks weigh more per token)."""
    counts = params_from_shape(shape, pooler=False)
    matmul = counts["attention"] + counts["mlp"]
    tokens = sum(lengths)
    if tokens == 0:
        return 0.0
    weighted_len = sum(n * n for n in lengths) / tokens
    per_layer = 4 * shape.q_size * weighted_len * (0.5 if shape.kind == "decoder" else 1.0)
    return 2.0 * matmul + shape.num_layers * per_layer


def peak_tflops(
    device_name: str | None, dtype: str, override: float | None = None, override_name: str = "override"
) -> tuple[float | None, str]:
    """The device's dense 16-bit peak and where it came from; None for a device or dtype the table lacks."""
    if override:
        return override, override_name
    if not device_name or dtype not in ("bfloat16", "float16", "auto"):
        return None, f"no known peak (set {override_name})"
    name = device_name.upper()
    for key, value in PEAK_TFLOPS_16BIT.items():
        if key in name:
            return value, f"data sheet, {key} 16-bit dense"
    return None, f"{device_name} is not in the peak table (set {override_name})"


def forward_ms(shape: ModelShape, batched_tokens: int, chunk_tokens: int, peak: float) -> float:
    """Milliseconds one forward pass over `batched_tokens` tokens (in chunks of `chunk_tokens`) takes at `peak`
    TFLOP/s."""
    return batched_tokens * flops_per_token(shape, [chunk_tokens]) / (peak * 1e12) * 1e3
