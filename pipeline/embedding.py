"""Embedders and the embed step around them. vllm is imported only inside VllmEmbedder.__init__."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Protocol

import numpy as np
import pyarrow as pa
import structlog

from pipeline import schema as s
from pipeline.engine_slots import bind_spec, core_sets
from pipeline.errors import ChunkBudgetError, EngineError, InputRejected
from pipeline.settings import ModelSettings
from pipeline.stats import BatchStats

log = structlog.get_logger(__name__)


class Embedder(Protocol):
    dim: int
    tokens_processed: int
    """Running count of the tokens the engine reports having processed."""

    def embed(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """One float32 row per sequence of token ids (special tokens included)."""
        ...

    def info(self) -> dict: ...


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


@dataclass(frozen=True)
class EngineSpec:
    """Everything an engine needs, resolved on the driver."""

    model_dir: str
    model: ModelSettings
    max_model_len: int
    device: str
    cpu_threads: int
    allow_long_max_model_len: bool
    engine_log_level: str
    engines_per_device: int = 1
    """Engines sharing this engine's GPU or CPU node."""


def engine_environment(spec: EngineSpec, slot: int | None = None) -> dict[str, str]:
    """Environment vLLM reads at import: one process per engine, CPU threads and core binding, offline hub.
    `slot`: this engine's place among the engines sharing its CPU node; it is bound to that slot's cores."""
    env = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_LOGGING_LEVEL": spec.engine_log_level,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if spec.allow_long_max_model_len:
        env["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] = "1"
    if spec.device == "cpu":
        bind, threads = cpu_bind(spec.cpu_threads), spec.cpu_threads
        if slot is not None and spec.engines_per_device > 1:
            cores = core_sets(_cores(), spec.engines_per_device)[slot]
            bind, threads = bind_spec(cores), len(cores)
        env |= {
            # vLLM 0.32's AOT compile artifacts fail to load on the CPU build ("'function' object has no attribute
            # 'finalize_loading'") and every start compiled again; the older compile cache loads.
            "VLLM_USE_AOT_COMPILE": "0",
            "VLLM_CPU_OMP_THREADS_BIND": bind,
            "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
            "OMP_NUM_THREADS": str(threads),
        }
    return env


def engine_kwargs(spec: EngineSpec) -> dict:
    """vllm.LLM / `vllm serve` engine arguments besides the model: the pipeline's engines and every benchmark
    baseline are built from this one dict."""
    m = spec.model
    return {
        "max_model_len": spec.max_model_len,
        "max_num_batched_tokens": m.max_num_batched_tokens,
        "tensor_parallel_size": m.tensor_parallel_size,
        # vLLM reads the fraction as of the whole device: engines sharing one split it.
        "gpu_memory_utilization": m.gpu_memory_utilization / (spec.engines_per_device if spec.device == "cuda" else 1),
        "dtype": m.dtype,
        "enforce_eager": eager(m.enforce_eager, spec.device),
        "trust_remote_code": m.trust_remote_code,
        "seed": 0,
    }


def eager(setting: bool | None, device: str) -> bool:
    """model.enforce_eager resolved: unset means eager on the CPU backend only."""
    return device == "cpu" if setting is None else setting


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


class EmbedStep:
    """Chunk rows in, the same rows with vectors out; other rows pass through without a vector.

    A chunk the engine refuses for a reason tied to its data becomes a reject row with the engine's message
    (the batch is bisected to find it); any other engine failure raises. The first row of each output batch
    carries the batch's stats as JSON, so stats travel with the rows they describe and commit with them.
    """

    def __init__(self, embedder: Embedder, actor: str):
        self.embedder = embedder
        self.actor = actor
        self.batch_index = 0
        self.ready_at = datetime.now(timezone.utc)
        self.idle_since = time.perf_counter()

    def __call__(self, batch: pa.Table) -> pa.Table:
        started_at = datetime.now(timezone.utc)
        wait_s = time.perf_counter() - self.idle_since
        rows = [i for i, ok in enumerate(pa.compute.is_valid(batch.column(s.CHUNK_ID)).to_pylist()) if ok]
        all_ids = batch.column(s.TOKEN_IDS).to_pylist()
        token_ids = [all_ids[i] for i in rows]
        t0, processed_before = time.perf_counter(), self.embedder.tokens_processed
        vectors, errors = self._embed_isolating(token_ids)
        embed_s = time.perf_counter() - t0
        dim = self.embedder.dim
        row_vectors: list[np.ndarray | None] = [None] * len(batch)
        reasons = batch.column(s.REJECT_REASON).to_pylist()
        details = batch.column(s.REJECT_DETAIL).to_pylist()
        for i, vec, err in zip(rows, vectors, errors, strict=True):
            row_vectors[i] = vec
            if err is not None:
                reasons[i], details[i] = "engine_rejected", err
        embedded = [ids for ids, err in zip(token_ids, errors, strict=True) if err is None]
        stats = BatchStats(
            actor=self.actor,
            batch_index=self.batch_index,
            n_chunks=len(embedded),
            n_tokens=sum(len(ids) for ids in embedded),
            max_chunk_tokens=max((len(ids) for ids in embedded), default=0),
            embed_s=embed_s,
            wait_s=wait_s,
            started_at=started_at,
            engine_tokens=self.embedder.tokens_processed - processed_before,
        )
        payload = {"batch": stats.to_json_dict()}
        if self.batch_index == 0:
            payload["engine"] = {**self.embedder.info(), "ready_at": self.ready_at.isoformat()}
        self.batch_index += 1
        stats_col = [json.dumps(payload)] + [None] * (len(batch) - 1)
        out = _embedded_rows(batch, row_vectors, reasons, details, stats_col, dim)
        self.idle_since = time.perf_counter()
        log.debug("batch_embedded", **asdict(stats))
        return out

    def _embed_isolating(self, token_ids: list[list[int]]) -> tuple[list[np.ndarray | None], list[str | None]]:
        """Vectors, and for each chunk the engine refused, its message (vector None)."""
        if not token_ids:
            return [], []
        try:
            vectors = self.embedder.embed(token_ids)
        except InputRejected as exc:
            if len(token_ids) == 1:
                log.warning("chunk_rejected_by_engine", error=str(exc), n_tokens=len(token_ids[0]))
                return [None], [str(exc)]
            half = len(token_ids) // 2
            left, right = self._embed_isolating(token_ids[:half]), self._embed_isolating(token_ids[half:])
            return left[0] + right[0], left[1] + right[1]
        if vectors.shape != (len(token_ids), self.embedder.dim):
            msg = f"engine returned vectors of shape {vectors.shape} for {len(token_ids)} chunks of dimension "
            raise EngineError(msg + str(self.embedder.dim))
        return list(vectors), [None] * len(token_ids)


def has_chunks(batch: pa.Table) -> bool:
    """Whether a batch holds a chunk to embed (other rows pass through: rejects, unchanged documents)."""
    return batch.num_rows > 0 and batch.column(s.CHUNK_ID).null_count < batch.num_rows


def passed_through(batch: pa.Table, dim: int) -> pa.Table:
    """A batch without chunks as the embed stage returns it, without calling an engine: no vectors, no stats."""
    n = len(batch)
    reasons, details = batch.column(s.REJECT_REASON).to_pylist(), batch.column(s.REJECT_DETAIL).to_pylist()
    return _embedded_rows(batch, [None] * n, reasons, details, [None] * n, dim)


def _embedded_rows(
    batch: pa.Table, vectors: list[np.ndarray | None], reasons: list, details: list, stats: list, dim: int
) -> pa.Table:
    out = batch.drop_columns([s.TOKEN_IDS, s.REJECT_REASON, s.REJECT_DETAIL])
    out = out.append_column(s.REJECT_REASON, pa.array(reasons, pa.string()))
    out = out.append_column(s.REJECT_DETAIL, pa.array(details, pa.string()))
    out = out.append_column(s.VECTOR, _vector_array(vectors, dim))
    out = out.append_column(s.BATCH_STATS, pa.array(stats, pa.string()))
    return out.select(s.embedded_schema(dim).names).cast(s.embedded_schema(dim))


def _vector_array(rows: list[np.ndarray | None], dim: int) -> pa.Array:
    flat = np.zeros((len(rows), dim), dtype=np.float32)
    mask = np.ones(len(rows), dtype=bool)
    for i, vec in enumerate(rows):
        if vec is not None:
            flat[i] = vec
            mask[i] = False
    values = pa.array(flat.reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(values, dim, mask=pa.array(mask))
