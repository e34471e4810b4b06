"""The vLLM engine: its resolved settings (EngineSpec), the environment and arguments it starts with, and the
embedder that hosts it. vllm is imported only inside VllmEmbedder.__init__."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Sequence

import numpy as np

from pipeline.engine.slots import bind_spec, core_sets
from pipeline.errors import ChunkBudgetError, EngineError, InputRejected
from pipeline.plan.engine_spec import EngineSpec


def engine_environment(spec: EngineSpec, slot: int | None = None) -> dict[str, str]:
    """Environment vLLM reads at import: one process per engine, CPU threads and core binding, offline hub.
    `slot`: this engine's place among the engines sharing its CPU node; it is bound to that slot's cores."""
    env = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_LOGGING_LEVEL": spec.engine_log_level,
        "VLLM_NO_USAGE_STATS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # Inductor starts one compile process per core it counts, and in a pod it counts the node's (32 per engine
        # on a 32-core node, whatever the pod's limit): as many as the engine's CPU share.
        "TORCHINDUCTOR_COMPILE_THREADS": str(max(1, spec.cpu_threads // max(1, spec.tensor_parallel_size))),
        # vLLM 0.32's AOT compile artifacts fail to load on the CPU build ("'function' object has no attribute
        # 'finalize_loading'") and every start compiled again; the load path is the same Python on CUDA, so it is
        # off there too. The older compile cache loads.
        "VLLM_USE_AOT_COMPILE": "0",
    }
    if spec.allow_long_max_model_len:
        env["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] = "1"
    if spec.device == "cpu":
        bind, threads = cpu_bind(spec.cpu_threads), spec.cpu_threads
        if slot is not None and spec.engines_per_device > 1:
            cores = core_sets(_cores(), spec.engines_per_device)[slot]
            bind, threads = bind_spec(cores), len(cores)
        if spec.tensor_parallel_size > 1:  # each rank is a process of its own: the OS places their threads
            bind, threads = "nobind", max(1, spec.cpu_threads // spec.tensor_parallel_size)
        env |= {
            "VLLM_CPU_OMP_THREADS_BIND": bind,
            "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
            "OMP_NUM_THREADS": str(threads),
        }
    return env


def engine_kwargs(spec: EngineSpec) -> dict:
    """vllm.LLM / `vllm serve` engine arguments besides the model: the pipeline's engines and every benchmark
    baseline are built from this one dict."""
    sharing = spec.engines_per_device if spec.device == "cuda" else 1
    kwargs = {
        "max_model_len": spec.max_model_len,
        "max_num_batched_tokens": spec.max_num_batched_tokens,
        "tensor_parallel_size": spec.tensor_parallel_size,
        "distributed_executor_backend": executor_backend(spec.tensor_parallel_size),
        # vLLM reads the fraction as of the whole device: engines sharing one split it.
        "gpu_memory_utilization": spec.gpu_memory_utilization / sharing,
        "dtype": spec.dtype,
        "enforce_eager": spec.enforce_eager,
        "trust_remote_code": spec.trust_remote_code,
        "seed": 0,
    }
    if spec.language_model_only:
        # Only token ids are sent, so the vision (or audio) tower would never run, yet vLLM would build it, load its
        # weights and profile it with a worst-case image at start. With every modality's limit at 0 it skips
        # the towers vLLM marks as such (`_mark_tower_model`); the text path and its weights are unchanged (for
        # Phi-3-vision, VLM2Vec's base, vLLM then takes the token table from the language model's weights, which
        # is where the checkpoint stores it).
        kwargs["language_model_only"] = True
    return kwargs


def executor_backend(tensor_parallel_size: int) -> str:
    """vLLM's executor, chosen here rather than left to vLLM. An engine runs inside a Ray actor that sits in the
    run's placement group, and there vLLM 0.32 picks its `ray` executor for any world size above 1
    (ParallelConfig.__post_init__ sees get_current_placement_group()); that executor refuses a bundle of more
    than one GPU and, given one-GPU bundles, takes the first of the whole group, which belong to other engines.
    `mp` spawns the tensor-parallel workers inside the actor, on the GPUs Ray gave it (CUDA_VISIBLE_DEVICES), so an
    engine is one bundle of tensor_parallel_size GPUs on one node (NVLink between them, no cross-node TP) and the
    group stays the run's alone. One GPU needs no workers: `uni` runs the model in the actor's own process."""
    return "mp" if tensor_parallel_size > 1 else "uni"


def _cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def cpu_bind(threads: int) -> str:
    """Pin the engine to this process's cores when it uses all of them; otherwise let the OS place threads."""
    cores = _cores()
    if threads == len(cores) and cores == list(range(cores[0], cores[-1] + 1)):
        return f"{cores[0]}-{cores[-1]}"
    return "nobind"


class VllmEmbedder:
    """One vllm.LLM with the pooling runner; receives token ids, never text."""

    def __init__(self, spec: EngineSpec, slot: int | None = None):
        os.environ.update(engine_environment(spec, slot))
        from vllm import LLM  # only here: importing vllm is slow and needs its engine build
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import TokensPrompt

        # The objects the imports left (about a million) go where the garbage collector no longer scans them, as
        # vLLM puts its own after a start: the start's five full collections then took 0.1 s, not 1.8 s.
        gc.freeze()
        self._prompt = TokensPrompt
        self._client_error = VLLMClientError
        self.tokens_processed = 0
        self.max_model_len = spec.max_model_len
        started = time.perf_counter()
        try:
            self.llm = LLM(model=spec.model_dir, runner="pooling", **engine_kwargs(spec))
        except ValueError as exc:
            hint = (
                " (set model.trust_remote_code = true if you trust this model)"
                if "trust_remote_code" in str(exc)
                else ""
            )
            msg = f"vLLM refused the engine settings{hint}: {exc}"
            raise EngineError(msg) from exc
        self.start_s = time.perf_counter() - started
        probe = self.llm.embed([self._prompt(prompt_token_ids=[0, 1])], use_tqdm=False)
        self.dim = len(probe[0].outputs.embedding)
        self._info = self._describe(spec)

    def embed(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        for ids in token_ids:
            if len(ids) >= self.max_model_len:
                msg = f"a chunk of {len(ids)} tokens reached the engine; the limit is max_model_len - 1 = "
                raise ChunkBudgetError(msg + str(self.max_model_len - 1))
        try:
            outputs = self.llm.embed([self._prompt(prompt_token_ids=list(ids)) for ids in token_ids], use_tqdm=False)
        except self._client_error as exc:
            raise InputRejected(str(exc)) from exc
        for ids, out in zip(token_ids, outputs, strict=True):
            if len(out.prompt_token_ids) != len(ids):
                msg = f"engine processed {len(out.prompt_token_ids)} tokens of a {len(ids)}-token chunk"
                raise EngineError(msg)
        self.tokens_processed += sum(len(out.prompt_token_ids) for out in outputs)
        return np.asarray([out.outputs.embedding for out in outputs], dtype=np.float32)

    def info(self) -> dict:
        return self._info

    def _describe(self, spec: EngineSpec) -> dict:
        import torch
        import vllm

        config = self.llm.llm_engine.vllm_config
        return {
            "engine": "vllm",
            "vllm_version": vllm.__version__,
            "torch_version": torch.__version__,
            "device": spec.device,
            "dim": self.dim,
            "start_s": round(self.start_s, 3),
            "max_model_len": config.model_config.max_model_len,
            "max_num_batched_tokens": config.scheduler_config.max_num_batched_tokens,
            "max_num_seqs": config.scheduler_config.max_num_seqs,
            "chunked_prefill": config.scheduler_config.enable_chunked_prefill,
            "dtype": str(config.model_config.dtype),
            "cpu_threads": int(os.environ["OMP_NUM_THREADS"]) if spec.device == "cpu" else None,
            "cpu_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND") if spec.device == "cpu" else None,
            "engines_per_device": spec.engines_per_device,
        }

    def close(self) -> None:
        engine = getattr(self, "llm", None)
        if engine is not None:
            engine.llm_engine.engine_core.shutdown()
            self.llm = None
