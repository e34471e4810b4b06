"""Resolve settings against the model's own limits and the machine, before any work starts. No ray or vllm.

Every value the engine and the chunker will use is decided here, with the reason logged when it differs
from what the settings say.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from pipeline.errors import ConfigError
from pipeline.plan.chunk_actors import CHUNK_TOKENS_PER_S, EXPECTED_MFU, chunk_actors_for, engines_tokens_per_s
from pipeline.plan.chunk_plan import ChunkPlan
from pipeline.plan.compute import forward_ms, peak_tflops
from pipeline.plan.engine_spec import EngineSpec
from pipeline.plan.memory import GIB, MemoryPlan, PlanRequest, engines_that_fit, plan_memory, resolve_dtype
from pipeline.plan.model_dir import ModelDir, ModelLimits, check_remote_code
from pipeline.plan.placement import (
    Cluster,
    DeviceShare,
    Placement,
    assign_nodes,
    check_drivers,
    check_stage_room,
    choose_engines_per_device,
    chunk_actor_room,
    lay_out,
)
from pipeline.settings import Settings


@dataclass(frozen=True)
class LengthPlan:
    """The sequence and chunk lengths, fixed by the settings and the model alone."""

    model: ModelDir
    max_model_len: int
    chunk: ChunkPlan
    allow_long_max_model_len: bool
    notes: list[str] = field(default_factory=list)
    """Why a resolved value differs from the settings, one sentence each."""


@dataclass(frozen=True)
class RunPlan:
    """Everything a run decides before work starts: lengths, the engines and where they go, and the memory
    planner's verdict (one composition, `plan_run`, for the run, its dry run and the benchmarks)."""

    model: ModelDir
    engine: EngineSpec
    chunk: ChunkPlan
    actors: int
    notes: list[str] = field(default_factory=list)
    placement: Placement | None = None
    device_memory_bytes: int | None = None
    """Memory of one engine's device, as the plan was fitted to (None: unknown)."""
    memory: MemoryPlan | None = None
    """The memory planner's verdict for one engine (None until check_memory ran)."""
    chunk_actors: int = 1
    """Chunk actors the run starts (run.chunk_actors, or as many as keep the engines fed that the CPUs allow)."""

    @property
    def model_id(self) -> str:
        return self.model.model_id


def plan_run(settings: Settings, cluster: Cluster, lengths: LengthPlan | None = None) -> RunPlan:
    """The run's plan on `cluster`: lengths from the settings and the model (unless planned already), engines placed
    on the nodes, memory checked; ConfigError with the fix when any of them cannot work. The chunk's room for the
    tokenizer's special tokens is checked where the tokenizer loads (`check_chunk_room`), beside the cluster's
    start (pipeline/run/start.py composes the two)."""
    plan = place_engines(settings, lengths or plan_lengths(settings), cluster)
    return replace(plan, memory=check_memory(settings, plan))


def plan_lengths(settings: Settings, model: ModelDir | None = None) -> LengthPlan:
    """max_model_len and chunk size against the model's own limits (`model`: read already, perhaps on another
    node; else read here); needs no cluster and no tokenizer (the engines are placed from it while the tokenizer
    loads; `check_chunk_room` follows once it has)."""
    m = settings.model
    model = model or ModelDir.read(m.path, m.name)
    check_remote_code(model, m.trust_remote_code)
    notes: list[str] = []
    max_model_len = _max_model_len(settings, model.limits, notes)
    chunk_tokens = _chunk_tokens(settings, max_model_len, notes)
    if m.max_num_batched_tokens < max_model_len and model.splits_long_prompts():
        notes.append(
            f"max_num_batched_tokens {m.max_num_batched_tokens} is below max_model_len {max_model_len}: vLLM splits "
            f"longer prompts over several forward passes (chunked prefill, for last-token pooling on a causal model)"
        )
    elif m.max_num_batched_tokens < max_model_len:
        msg = (
            f"model.max_num_batched_tokens={m.max_num_batched_tokens} is below model.max_model_len={max_model_len}: "
            f"vLLM cannot fit one whole sequence in a forward pass of a pooling model; "
            f"raise max_num_batched_tokens to at least {max_model_len} or lower max_model_len"
        )
        raise ConfigError(msg)
    chunk = ChunkPlan(chunk_tokens, settings.chunk.overlap_tokens, settings.chunk.boundary_window, model.model_id)
    allow_long = needs_long_len(m.allow_long_max_model_len, model.limits, max_model_len)
    return LengthPlan(model, max_model_len, chunk, allow_long, notes)


def resolve_device(setting: str, gpus: float) -> str:
    """model.device with "auto" resolved: GPUs when the cluster has any."""
    return setting if setting != "auto" else ("cuda" if gpus >= 1 else "cpu")


def place_engines(settings: Settings, lengths: LengthPlan, cluster: Cluster) -> RunPlan:
    """Device, number of engines (and how many share each device), where they go and their threads, from the
    cluster's nodes and, on GPUs, the memory planner's fit and the model's compute per forward pass."""
    m, r = settings.model, settings.run
    device = resolve_device(m.device, cluster.gpus)
    if device == "cpu" and m.tensor_parallel_size != 1:
        msg = f"model.tensor_parallel_size={m.tensor_parallel_size} needs GPUs; set it to 1 on the CPU backend"
        raise ConfigError(msg)
    if device == "cuda":
        check_drivers(cluster)
    memory = device_memory_bytes(settings, device, cluster)
    share = _device_share(settings, lengths, device, cluster, memory)
    per_device = share.engines_per_device
    groups = sum(int(n.gpus // m.tensor_parallel_size) for n in cluster.gpu_nodes())
    if device == "cuda" and r.actors and r.engines_per_device is None and groups:
        # run.actors alone never leaves a GPU's share unused: fewer engines each take a larger share
        per_device = min(per_device, -(-r.actors // groups))
    placement = lay_out(cluster, device, m.tensor_parallel_size, per_device, r.actors)
    notes = [*lengths.notes, *placement.notes]
    placement = _leave_stage_room(cluster, placement, device, r.actors, r.chunk_actors or 1, notes)
    chunk_actors = r.chunk_actors or _planned_chunk_actors(settings, lengths, cluster, placement, per_device, notes)
    if r.min_engines > placement.actors:
        msg = (
            f"run.min_engines={r.min_engines} is more than the {placement.actors} engines the plan places on this "
            f"cluster; lower run.min_engines to at most {placement.actors}"
        )
        raise ConfigError(msg)
    if m.enforce_eager is None and device == "cpu":
        notes.append(
            "enforce_eager on: on the CPU backend the engine starts about twice as fast without torch.compile and "
            "embeds as fast (set model.enforce_eager = false to compile)"
        )
    if per_device != share.engines_per_device:
        notes.append(f"engines_per_device {per_device}: run.actors={r.actors} engines on {groups} GPUs")
    elif per_device > 1 or r.engines_per_device is not None or device == "cuda":
        notes.append(f"engines_per_device {per_device}: {share.note}")
    cpus = cluster.cpus
    engine = EngineSpec.resolve(
        m,
        device=device,
        model_dir=str(lengths.model.path),
        max_model_len=lengths.max_model_len,
        cpu_threads=m.cpu_threads or max(1, cpus // (per_device if r.engines_per_device else placement.actors)),
        allow_long_max_model_len=lengths.allow_long_max_model_len,
        engine_log_level=settings.logging.engine_level,
        engines_per_device=per_device,
        language_model_only=lengths.model.multimodal,
    )
    return RunPlan(
        lengths.model, engine, lengths.chunk, placement.actors, notes, placement, memory, chunk_actors=chunk_actors
    )


def _leave_stage_room(
    cluster: Cluster, placement: Placement, device: str, actors: int | None, chunk_actors: int, notes: list
) -> Placement:
    """The placement with room left for the other stages: fewer engines when run.actors is unset, else as set or
    refused (check_stage_room's message)."""
    if actors is None:
        while placement.actors > 1:
            try:
                check_stage_room(cluster, placement, device, chunk_actors)
                break
            except ConfigError:
                placement = replace(placement, actors=placement.actors - 1)
        if placement.actors < sum(placement.per_node.values()):
            notes.append(
                f"{placement.actors} engines, not {sum(placement.per_node.values())}: the rest of the run needs "
                f"CPUs beside them (set run.actors to choose)"
            )
    check_stage_room(cluster, placement, device, chunk_actors)
    return replace(placement, nodes=tuple(assign_nodes(cluster, placement, device)))


def _planned_chunk_actors(
    settings: Settings, lengths: LengthPlan, cluster: Cluster, placement: Placement, per_device: int, notes: list
) -> int:
    """run.chunk_actors unset: as many chunk actors as keep the engines fed at their expected rate, as many as the
    CPUs the engines leave allow (check_stage_room)."""
    m = settings.model
    device = resolve_device(m.device, cluster.gpus)
    gpu = cluster.smallest_gpu() if device == "cuda" else None
    if gpu is None or not gpu.gpu_name:  # CPU engines, or GPUs no probe read: the stage is not the bottleneck
        return 1
    peak, _ = peak_tflops(gpu.gpu_name, resolve_dtype(m.dtype, lengths.model.shape))
    if not peak:
        return 1
    gpus = placement.actors * m.tensor_parallel_size / per_device
    rate = engines_tokens_per_s(lengths.model.shape, lengths.chunk.max_tokens, gpus, peak)
    wanted = chunk_actors_for(rate)
    fitting = max(1, min(wanted, chunk_actor_room(cluster, placement, device)))
    notes.append(
        f"chunk_actors {fitting}: the engines' expected {rate:,.0f} tokens/s ({gpus:g} GPUs at "
        f"{EXPECTED_MFU:.0%} of {peak:g} TFLOP/s) over {CHUNK_TOKENS_PER_S:,.0f} tokens/s per chunk actor"
        + (f" wants {wanted}; the CPUs beside the engines hold {fitting}" if fitting < wanted else "")
    )
    return fitting


def _device_share(
    settings: Settings, lengths: LengthPlan, device: str, cluster: Cluster, memory: int | None
) -> DeviceShare:
    """Engines per device: on a GPU from the memory planner's fit and the model's forward pass at the device's
    peak, read from the probed GPU (never from the driver, which on a cluster has none)."""
    m, r = settings.model, settings.run
    fitting = forward = None
    if device == "cuda" and memory:
        request = _memory_request(settings, lengths.max_model_len, device, memory)
        fitting = engines_that_fit(lengths.model.config, request, lengths.model.checkpoint)
        gpu = cluster.smallest_gpu()
        dtype = resolve_dtype(m.dtype, lengths.model.shape)
        peak, _ = peak_tflops(gpu.gpu_name if gpu else None, dtype)
        if peak:
            forward = forward_ms(lengths.model.shape, m.max_num_batched_tokens, lengths.chunk.max_tokens, peak)
    return choose_engines_per_device(
        r.engines_per_device, r.max_engines_per_device, device, m.tensor_parallel_size, fitting, cluster.cpus, forward
    )


def device_memory_bytes(settings: Settings, device: str, cluster: Cluster) -> int | None:
    """Memory of one engine's device: the setting, else what the probe read on the cluster's nodes (the smallest
    GPU; host memory on the CPU backend)."""
    if settings.model.device_memory_gib:
        return int(settings.model.device_memory_gib * GIB)
    if device == "cuda":
        gpu = cluster.smallest_gpu()
        return gpu.gpu_memory_bytes if gpu else None
    hosts = [n.host_memory_bytes for n in cluster.nodes if n.host_memory_bytes]
    return min(hosts) if hosts else None


def _max_model_len(settings: Settings, limits: ModelLimits, notes: list[str]) -> int:
    """The model's serving limit unless the user opts past it; its positions are the hard ceiling."""
    m = settings.model
    positions = limits.position_limit
    serving = limits.serving()
    if m.max_model_len is not None:
        if positions is not None and m.max_model_len > positions and not m.allow_long_max_model_len:
            msg = (
                f"model.max_model_len={m.max_model_len} exceeds the model's limit of {positions} positions "
                f"(max_position_embeddings in config.json); lower it to at most {positions}, or set "
                f"model.allow_long_max_model_len = true if the model really extrapolates"
            )
            raise ConfigError(msg)
        if serving is not None and m.max_model_len > serving[0] and not m.allow_long_max_model_len:
            msg = (
                f"model.max_model_len={m.max_model_len} is past the {serving[0]} tokens the model is served at "
                f"({serving[1]}; it was trained on inputs that long); lower it to at most {serving[0]}, or set "
                f"model.allow_long_max_model_len = true to run it up to its {positions} positions"
            )
            raise ConfigError(msg)
        return m.max_model_len
    if positions is None:
        msg = "config.json states no max_position_embeddings; set model.max_model_len explicitly"
        raise ConfigError(msg)
    if serving is not None and not m.allow_long_max_model_len:
        limit, why = serving[0], f"the model's serving limit ({serving[1]}; its positions allow {positions})"
    elif serving is not None:
        limit, why = (
            positions,
            f"the model's {positions} positions (model.allow_long_max_model_len: past {serving[1]})",
        )
    else:
        limit, why = positions, f"the model's limit of {positions} positions"
    wanted = settings.chunk.tokens + 1
    if wanted < limit:
        notes.append(
            f"max_model_len set to {wanted} (chunk.tokens {settings.chunk.tokens} + 1) instead of {why}: longer "
            f"sequences never reach the engine"
        )
        return wanted
    notes.append(f"max_model_len set to {why}")
    return limit


def _chunk_tokens(settings: Settings, max_model_len: int, notes: list[str]) -> int:
    c = settings.chunk
    ceiling = max_model_len - 1  # some pooling models hang on a prompt of exactly max_model_len tokens
    tokens = c.tokens
    if tokens > ceiling:
        if "tokens" in c.model_fields_set:
            msg = (
                f"chunk.tokens={tokens} does not fit model.max_model_len={max_model_len}: a chunk, special tokens "
                f"included, may hold at most max_model_len - 1 = {ceiling} tokens; lower chunk.tokens to {ceiling} "
                f"or raise model.max_model_len to {tokens + 1}"
            )
            raise ConfigError(msg)
        notes.append(
            f"chunk.tokens lowered from {tokens} to {ceiling}: max_model_len is {max_model_len} and a chunk may "
            f"hold at most max_model_len - 1 tokens"
        )
        tokens = ceiling
    return tokens


def check_chunk_room(settings: Settings, chunk: ChunkPlan, num_special: int) -> None:
    """A chunk's text must hold more than its overlaps once the tokenizer's special tokens are in."""
    overlap = settings.chunk.overlap_tokens
    budget = chunk.max_tokens - num_special
    if budget <= 2 * overlap:
        msg = (
            f"chunk.overlap_tokens={overlap} leaves no room: chunks hold {budget} tokens besides the "
            f"{num_special} special tokens; lower chunk.overlap_tokens below {max(budget // 2, 0)}"
        )
        raise ConfigError(msg)


def needs_long_len(allowed: bool, limits: ModelLimits, max_model_len: int) -> bool:
    # vLLM caps max_model_len at sentence_bert_config.json's max_seq_length; positions beyond it are real.
    serving_cap = limits.serving_limit is not None and max_model_len > limits.serving_limit
    return allowed or serving_cap


def _memory_request(
    settings: Settings, max_model_len: int, device: str, device_memory_bytes: int | None, **more
) -> PlanRequest:
    """What the memory planner is asked for an engine of these settings at `max_model_len` on `device`."""
    m = settings.model
    return PlanRequest(
        dtype=m.dtype,
        max_model_len=max_model_len,
        max_num_batched_tokens=m.max_num_batched_tokens,
        tensor_parallel_size=m.tensor_parallel_size,
        gpu_memory_utilization=m.gpu_memory_utilization,
        device=device,
        device_memory_bytes=device_memory_bytes,
        **more,
    )


def check_memory(settings: Settings, plan: RunPlan) -> MemoryPlan:
    """The memory planner's verdict for this job on the device memory it was placed by; ConfigError, with its
    advice, when the model cannot fit."""
    m = settings.model
    on_cpu = plan.engine.device == "cpu"
    request = _memory_request(
        settings,
        plan.engine.max_model_len,
        plan.engine.device,
        plan.device_memory_bytes,
        engines_per_device=plan.actors if on_cpu else plan.engine.engines_per_device,
        chunk_tokens=plan.chunk.max_tokens,
        batch_rows=settings.run.batch_rows,
    )
    memory = plan_memory(plan.model.config, request, plan.model.checkpoint)
    if memory.fits is False:
        needed, budget = memory.per_rank["needed"] / GIB, memory.per_rank["budget"] / GIB
        msg = (
            f"the model does not fit: each engine needs {needed:.2f} GiB (weights, activations at "
            f"max_num_batched_tokens={m.max_num_batched_tokens}, KV cache, runtime) but gets {budget:.2f} GiB "
            f"(device memory x model.gpu_memory_utilization={m.gpu_memory_utilization}"
            f"{f' / {request.engines_per_device} engines' if request.engines_per_device > 1 else ''}). "
            + " ".join(a for a in memory.advice if a.startswith(("largest", "smallest")))
            + "; see python -m jobs.plan"
        )
        raise ConfigError(msg)
    return memory
