"""Memory planner: what a model, max_model_len and max_num_batched_tokens cost on a device, and advice.
Pure arithmetic on config.json and safetensors headers: no ray, vllm or torch imports.

Working memory of one forward pass over T tokens (the scheduler's max_num_batched_tokens) is taken as
everything a layer keeps alive at once, per token:
    residual  2 * hidden                          (the stream and its normalized copy)
    attention 2 * q + 2 * kv + hidden            (q, k, v, the attention output and its projection)
    mlp       2 * intermediate + hidden          (plain: projection and activation; gated: 3 * intermediate)
times the dtype's bytes, times ACTIVATION_SLACK for the temporaries and allocator caching around it. vLLM's
attention kernels work in blocks, so no T x L score matrix is counted. Decoders (causal attention) also hold
a KV cache: one forward pass needs T * layers * 2 * kv entries, and vLLM hands the cache whatever of the
budget is left after the weights and the activation peak it profiles at start-up.

The two constants are measured, not derived: benchmarks/memory_cpu.py on the CPU backend (MiniLM at 512 positions
and a tiny BERT at 2,001, budgets 2,048-16,384 tokens) put process growth at weights + 1.4 x the live
activations + about 128 MiB. The GPU overhead (CUDA context, workspaces) is an estimate until measured.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.plan.model_params import (
    DTYPE_BYTES,
    CheckpointParams,
    ModelShape,
    params_from_safetensors,
    params_from_shape,
    shape_from_config,
)

GIB = 2**30
ACTIVATION_SLACK = 1.4
GPU_RUNTIME_OVERHEAD = int(0.75 * GIB)
"""CUDA context, cuBLAS/NCCL workspaces and allocator slack per GPU process (estimate)."""
CPU_RUNTIME_OVERHEAD = 128 * 2**20
"""oneDNN and vLLM's own structures in an engine process on the CPU backend (measured, 125-155 MiB)."""
TP_SIZES = (1, 2, 4, 8)
CPU_ENGINE_PROCESS = GIB
"""What a CPU engine's process holds before its model and cache: Python, torch and vLLM imported (measured
0.9 GiB in one process); vLLM's CPU backend counts it against gpu_memory_utilization of host memory."""
QUERY_SHARE_SLACK = 1.25
QUERY_SHARE_RANGE = (0.02, 0.9)


@dataclass(frozen=True)
class PlanRequest:
    dtype: str = "auto"
    max_model_len: int | None = None
    max_num_batched_tokens: int = 8192
    tensor_parallel_size: int = 1
    engines_per_device: int = 1
    gpu_memory_utilization: float = 0.9
    device: str = "cuda"
    device_memory_bytes: int | None = None
    chunk_tokens: int | None = None
    batch_rows: int | None = None
    """Chunks the job hands an engine per call; with chunk_tokens it bounds the tokens in flight."""


@dataclass
class MemoryPlan:
    model_type: str
    kind: str
    dtype: str
    dtype_bytes: int
    params: dict[str, int]
    params_source: str
    checkpoint_params: dict[str, int] | None
    mismatches: list[str]
    weight_bytes: int
    max_model_len: int
    max_num_batched_tokens: int
    activation: dict[str, int]
    kv_cache_needed_bytes: int
    per_rank: dict[str, int | float | None]
    fits: bool | None
    advice: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def load_config(path: str | Path) -> tuple[dict, CheckpointParams | None]:
    """A model directory or a config.json file: its config, and its weights' counts when a directory has them."""
    p = Path(path)
    config_file = p / "config.json" if p.is_dir() else p
    if not config_file.is_file():
        msg = f"no config.json at {path}; give a model directory or a config.json file"
        raise ConfigError(msg)
    return json.loads(config_file.read_text()), (params_from_safetensors(p) if p.is_dir() else None)


def detect_device_memory(device: str) -> int | None:
    """Total memory of this host (CPU backend) or of the first GPU torch sees here; None when there is none."""
    if device == "cpu":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        import torch  # only to ask the driver's GPU, when there is one
    except ImportError:
        return None
    return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None


FLOAT16_UNSUPPORTED = {"gemma2", "gemma3", "gemma3_text", "glm4"}
"""Model types vLLM 0.32 never runs in float16 (`_FLOAT16_NOT_SUPPORTED_MODELS`, numerical instability)."""


def resolve_dtype(dtype: str, shape: ModelShape) -> str:
    """The dtype vLLM 0.32 computes a pooling model in: the setting, or for 'auto' the checkpoint's own 16-bit
    dtype. A float32 (or unstated) checkpoint runs in float16, on GPUs and x86 CPUs alike: for pooling models
    vLLM prefers float16 over the platform's first dtype (`_resolve_auto_dtype`), except for the model types it
    keeps off float16, which take bfloat16."""
    if dtype != "auto":
        return dtype
    if shape.torch_dtype in ("float16", "bfloat16"):
        return shape.torch_dtype
    return "bfloat16" if shape.model_type in FLOAT16_UNSUPPORTED else "float16"


def activation_bytes(shape: ModelShape, tokens: int, dtype_bytes: int) -> dict[str, int]:
    residual = 2 * shape.hidden_size
    attention = 2 * shape.q_size + 2 * shape.kv_size + shape.hidden_size
    mlp = (3 if shape.gated_mlp else 2) * shape.intermediate_size + shape.hidden_size
    live = {"residual": residual, "attention": attention, "mlp": mlp}
    out = {name: tokens * width * dtype_bytes for name, width in live.items()}
    out["peak"] = int(sum(out.values()) * ACTIVATION_SLACK)
    return out


def plan_memory(config: dict, request: PlanRequest, checkpoint: CheckpointParams | None = None) -> MemoryPlan:
    """`checkpoint`: the weights' own counts (ModelDir.checkpoint, params_from_safetensors), checked against the
    config's arithmetic and used where given."""
    shape = shape_from_config(config)
    dtype = resolve_dtype(request.dtype, shape)
    b = DTYPE_BYTES[dtype]
    has_lm_head = bool(checkpoint and checkpoint.counts["heads"] > shape.hidden_size * (shape.hidden_size + 1))
    arithmetic = params_from_shape(shape, lm_head=has_lm_head)
    mismatches = []
    if checkpoint:
        for name, n in arithmetic.items():
            if checkpoint.counts[name] != n:
                mismatches.append(
                    f"{name}: config arithmetic {n:,} vs safetensors headers {checkpoint.counts[name]:,}"
                )
    params = checkpoint.counts if checkpoint else arithmetic
    weight_bytes = sum(params.values()) * b
    max_model_len = request.max_model_len or shape.max_positions
    tokens = request.max_num_batched_tokens
    act = activation_bytes(shape, tokens, b)
    kv_needed = kv_bytes(shape, tokens, b)
    per_rank = _per_rank(weight_bytes, act, kv_needed, request)
    plan = MemoryPlan(
        model_type=shape.model_type,
        kind=shape.kind,
        dtype=dtype,
        dtype_bytes=b,
        params=params,
        params_source="safetensors headers" if checkpoint else "config.json arithmetic",
        checkpoint_params=checkpoint.counts if checkpoint else None,
        mismatches=mismatches,
        weight_bytes=weight_bytes,
        max_model_len=max_model_len,
        max_num_batched_tokens=tokens,
        activation=act,
        kv_cache_needed_bytes=kv_needed,
        per_rank=per_rank,
        fits=per_rank["fits"],
    )
    _advise(plan, shape, request)
    return plan


def engines_that_fit(config: dict, request: PlanRequest, checkpoint: CheckpointParams | None = None) -> int | None:
    """How many engines one device holds at these settings (0: not even one); None when its memory is unknown."""
    if not request.device_memory_bytes:
        return None
    shape = shape_from_config(config)
    weights = plan_memory(config, request, checkpoint).weight_bytes
    return _largest(lambda n: _fits(weights, shape, request, engines_per_device=n), 1, 64, 1) or 0


def query_memory_share(config: dict, request: PlanRequest, checkpoint: CheckpointParams | None = None) -> float | None:
    """gpu_memory_utilization for a query engine: what one engine of `request` needs (weights, one forward pass at
    its budget, KV for it, the runtime; on CPU the process itself), with a quarter more, as a share of the device
    (None when its memory is unknown). A query embeds a few short texts: the run's share, sized to fill a GPU
    with cache, would reserve most of a laptop's memory."""
    if not request.device_memory_bytes:
        return None
    needed = plan_memory(config, request, checkpoint).per_rank["needed"]
    if request.device == "cpu":
        needed += CPU_ENGINE_PROCESS
    share = QUERY_SHARE_SLACK * needed / request.device_memory_bytes
    return round(min(max(share, QUERY_SHARE_RANGE[0]), QUERY_SHARE_RANGE[1]), 3)


def kv_bytes(shape: ModelShape, tokens: int, dtype_bytes: int) -> int:
    return 0 if shape.kind == "encoder" else tokens * shape.num_layers * 2 * shape.kv_size * dtype_bytes


def _per_rank(weight_bytes: int, act: dict[str, int], kv_needed: int, request: PlanRequest) -> dict:
    tp = request.tensor_parallel_size
    overhead = GPU_RUNTIME_OVERHEAD if request.device == "cuda" else CPU_RUNTIME_OVERHEAD
    # Tensor parallelism splits weights, the attention/MLP intermediates and the KV heads; not the residual.
    weights = weight_bytes // tp
    split = act["attention"] + act["mlp"]
    activation = int(act["peak"] * (act["residual"] + split / tp) / (act["residual"] + split))
    kv = kv_needed // tp
    needed = weights + activation + kv + overhead
    budget = None
    if request.device_memory_bytes:
        budget = int(request.device_memory_bytes * request.gpu_memory_utilization) // request.engines_per_device
    return {
        "weights": weights,
        "activation_peak": activation,
        "kv_cache_needed": kv,
        "runtime_overhead": overhead,
        "needed": needed,
        "budget": budget,
        "headroom": None if budget is None else budget - needed,
        "fits": None if budget is None else needed <= budget,
    }


def _fits(plan_weights: int, shape: ModelShape, request: PlanRequest, **changes) -> bool:
    r = PlanRequest(**{**asdict(request), **changes})
    b = DTYPE_BYTES[resolve_dtype(r.dtype, shape)]
    act = activation_bytes(shape, r.max_num_batched_tokens, b)
    return bool(_per_rank(plan_weights, act, kv_bytes(shape, r.max_num_batched_tokens, b), r)["fits"])


def _advise(plan: MemoryPlan, shape: ModelShape, request: PlanRequest) -> None:
    gib = lambda n: f"{n / GIB:.2f} GiB"  # noqa: E731
    b = plan.dtype_bytes
    if request.chunk_tokens:
        wanted = request.chunk_tokens + 1
        if wanted > shape.max_positions:
            plan.advice.append(
                f"max_model_len: use {shape.max_positions} (the model has {shape.max_positions} positions, so chunks "
                f"hold at most {shape.max_positions - 1} tokens, not {request.chunk_tokens}; a prompt of exactly "
                f"max_model_len tokens can hang some pooling models)"
            )
        else:
            plan.advice.append(
                f"max_model_len: use {wanted} (chunks of {request.chunk_tokens} tokens + 1; a prompt of exactly "
                f"max_model_len tokens can hang some pooling models)"
            )
        if shape.max_positions > 4 * wanted:
            default_act = activation_bytes(shape, shape.max_positions, b)
            kv_default = kv_bytes(shape, shape.max_positions, b)
            if shape.kind == "decoder":
                cost = (
                    f"vLLM must find KV cache for one {shape.max_positions:,}-token sequence at start-up "
                    f"({gib(kv_default)}) on top of the weights"
                )
            else:
                cost = (
                    f"vLLM schedules at least {shape.max_positions:,} tokens per forward pass (max_num_batched_tokens "
                    f">= max_model_len without chunked prefill): activation peak {gib(default_act['peak'])}"
                )
            plan.advice.append(
                f"leaving max_model_len at the model's {shape.max_positions:,} positions: {cost}, against "
                f"{gib(plan.activation['peak'] + plan.kv_cache_needed_bytes)} of activation and KV at "
                f"{plan.max_num_batched_tokens:,} tokens"
            )
    if plan.per_rank["budget"] is None:
        plan.warnings.append("device memory unknown: give --device-memory-gib to check the fit and size the budget")
    else:
        weights = plan.weight_bytes
        largest = _largest(lambda t: _fits(weights, shape, request, max_num_batched_tokens=t), 256, 1 << 20, 256)
        if largest:
            plan.advice.append(
                f"largest max_num_batched_tokens that fits: {largest:,} (budget {gib(plan.per_rank['budget'])} per "
                f"engine = device x {request.gpu_memory_utilization} / {request.engines_per_device} engines; weights "
                f"{gib(plan.per_rank['weights'])} + overhead {gib(plan.per_rank['runtime_overhead'])} + activation "
                f"and KV growing {_per_token(shape, request, b) / 2**10:.1f} KiB per token)"
            )
        else:
            plan.advice.append("no max_num_batched_tokens fits: the weights alone exceed the budget")
        engines = _largest(lambda n: _fits(weights, shape, request, engines_per_device=n), 1, 64, 1)
        plan.advice.append(f"engines per device that fit at this budget: {engines or 0}")
        tp = next((t for t in TP_SIZES if _fits(weights, shape, request, tensor_parallel_size=t)), None)
        plan.advice.append(
            f"smallest tensor_parallel_size that fits: {tp}" if tp else "no tensor_parallel_size up to 8 fits"
        )
        if plan.fits is False:
            plan.warnings.append(
                f"does not fit: needs {gib(plan.per_rank['needed'])} per rank, "
                f"budget is {gib(plan.per_rank['budget'])}"
            )
    if request.batch_rows and request.chunk_tokens:
        in_flight = request.batch_rows * request.chunk_tokens
        if in_flight < plan.max_num_batched_tokens:
            plan.warnings.append(
                f"at most {in_flight:,} tokens reach an engine per call (run.batch_rows {request.batch_rows} x "
                f"{request.chunk_tokens} tokens), below max_num_batched_tokens {plan.max_num_batched_tokens:,}: "
                f"a larger budget cannot help; raise run.batch_rows"
            )
    if plan.mismatches:
        plan.warnings.append("config arithmetic and safetensors headers disagree: " + "; ".join(plan.mismatches))


def _per_token(shape: ModelShape, request: PlanRequest, b: int) -> float:
    act = activation_bytes(shape, 1024, b)["peak"]
    return (act + kv_bytes(shape, 1024, b)) / 1024 / request.tensor_parallel_size


def _largest(fits, lo: int, hi: int, step: int) -> int | None:
    """Largest multiple of step in [lo, hi] for which fits() holds, assuming fits is monotone."""
    if not fits(lo):
        return None
    while lo + step <= hi:
        mid = lo + ((hi - lo) // step // 2 or 1) * step
        if fits(mid):
            lo = mid
        else:
            hi = mid - step
    return lo


def render_table(plan: MemoryPlan) -> str:
    gib = lambda n: f"{n / GIB:8.3f} GiB"  # noqa: E731
    lines = [
        f"model: {plan.model_type} ({plan.kind}), dtype {plan.dtype} ({plan.dtype_bytes} bytes), "
        f"params from {plan.params_source}",
        "",
        f"{'component':<18}{'parameters':>16}{'bytes':>16}",
    ]
    for name, n in plan.params.items():
        shown = "none: rotary" if name == "positional" and n == 0 and plan.kind == "decoder" else f"{n:,}"
        lines.append(f"{name:<18}{shown:>16}{gib(n * plan.dtype_bytes):>16}")
    total = sum(plan.params.values())
    lines += [f"{'total':<18}{total:>16,}{gib(plan.weight_bytes):>16}", ""]
    lines.append(
        f"one forward pass: max_num_batched_tokens {plan.max_num_batched_tokens:,}, max_model_len "
        f"{plan.max_model_len:,}"
    )
    for name, n in plan.activation.items():
        lines.append(f"  activation {name:<16}{gib(n):>16}")
    lines.append(f"  kv cache needed      {gib(plan.kv_cache_needed_bytes):>16}")
    lines += ["", "per tensor-parallel rank:"]
    for name, n in plan.per_rank.items():
        if isinstance(n, bool) or n is None:
            lines.append(f"  {name:<20}{'' if n is None else n!s:>16}")
        else:
            lines.append(f"  {name:<20}{gib(n):>16}")
    lines += ["", *[f"advice: {a}" for a in plan.advice], *[f"warning: {w}" for w in plan.warnings]]
    return "\n".join(lines)
