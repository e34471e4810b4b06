"""The engine queries are embedded with: the model and engine settings the table was built with, read from the
chunks table's metadata and its last ingestion run, and checked against any model the caller names.
vllm is imported only when the engine starts (through VllmEmbedder), torch only when an embedder loads."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from pipeline import schema as s
from pipeline.engine.reference import ReferenceEmbedder, cosine
from pipeline.engine.vllm import VllmEmbedder
from pipeline.errors import ConfigError, Refusal
from pipeline.plan.engine_spec import EngineSpec
from pipeline.plan.job import needs_long_len
from pipeline.plan.memory import PlanRequest, query_memory_share
from pipeline.plan.model_dir import ModelDir
from pipeline.runtime.devices import read_node_devices
from pipeline.settings import ModelSettings
from pipeline.stages.tokenizer import Tokenizer, load_tokenizer
from pipeline.store.built_with import BuiltWith


class QueryTooLong(Refusal):
    """A query has more tokens than the engine takes in one sequence; it is never truncated."""


@dataclass(frozen=True)
class QueryEngine:
    spec: EngineSpec
    model: ModelDir
    model_id: str
    dim: int
    """The table's vector dimension, which the engine's vectors must have."""
    notes: list[str] = field(default_factory=list)


def query_engine(built: BuiltWith, caller: ModelSettings, engine_log_level: str = "WARNING") -> QueryEngine:
    """The engine settings of the table's last run, on the model the caller names (its settings' model.path),
    which must be the table's model: same fingerprint, or the same id for tables made before fingerprints.
    The engine runs where the query does: the caller's device, or for 'auto' this machine's GPU if it has one, else
    its CPU; one GPU (tensor_parallel_size 1) and a memory share sized for a query engine, unless the caller sets
    them."""
    try:
        model = ModelDir.read(caller.path, caller.name)
    except ConfigError as exc:
        msg = (
            f"{exc}. The table was built with model {built.model_id!r} from {built.model_dir}; pass "
            f"--model-path with a copy of that model on this machine"
        )
        raise ConfigError(msg) from None
    check_same_model(built, model)
    notes = []
    if str(model.path) != built.model_dir:
        notes.append(f"model {built.model_id!r} read from {model.path} (the run read it from {built.model_dir})")
    device = caller.device if caller.device != "auto" else ("cuda" if read_node_devices().gpu_count else "cpu")
    if device != built.device:
        notes.append(f"engine on {device}; the table was embedded on {built.device} (vectors agree to ~1e-3)")
    recorded = {k: v for k, v in built.model.items() if k in ModelSettings.model_fields}
    given = {
        k: getattr(caller, k)
        for k in ("tensor_parallel_size", "gpu_memory_utilization")
        if k in caller.model_fields_set
    }
    settings = ModelSettings(**{**recorded, "tensor_parallel_size": 1, **given, "path": caller.path, "device": device})
    if "gpu_memory_utilization" not in given:
        settings = _query_sized(settings, model, built.max_model_len, notes)
    spec = EngineSpec.resolve(
        settings,
        device=device,
        model_dir=str(model.path),
        max_model_len=built.max_model_len,
        cpu_threads=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        allow_long_max_model_len=needs_long_len(settings.allow_long_max_model_len, model.limits, built.max_model_len),
        engine_log_level=engine_log_level,
        language_model_only=model.multimodal,
    )
    return QueryEngine(spec, model, built.model_id, built.dim, notes)


def _query_sized(settings: ModelSettings, model: ModelDir, max_model_len: int, notes: list[str]) -> ModelSettings:
    """The settings with a memory share sized for one query engine on this machine's device, not the run's."""
    devices = read_node_devices()
    memory = devices.gpu_memory_bytes if settings.device == "cuda" else devices.host_memory_bytes
    request = PlanRequest(
        dtype=settings.dtype,
        max_model_len=max_model_len,
        max_num_batched_tokens=settings.max_num_batched_tokens,
        device=settings.device,
        device_memory_bytes=memory,
    )
    share = query_memory_share(model.config, request, model.checkpoint)
    if share is None:
        notes.append(
            f"device memory unknown here: the engine takes {settings.gpu_memory_utilization} of it, as the run did"
        )
        return settings
    return settings.model_copy(update={"gpu_memory_utilization": share})


def check_same_model(built: BuiltWith, model: ModelDir) -> None:
    """Refuse a model whose vectors are not comparable with the table's."""
    if built.fingerprint:
        if model.fingerprint == built.fingerprint:
            return
        msg = (
            f"the table holds vectors of model {built.model_id!r} (fingerprint {built.fingerprint}); {model.path} "
            f"is a different model (fingerprint {model.fingerprint}), whose vectors cannot be compared with them. "
            f"Query with the table's model, or ingest into another store.table_prefix with this one"
        )
        raise ConfigError(msg)
    if model.model_id != built.model_id:
        msg = (
            f"the table holds vectors of model {built.model_id!r}; the model given is {model.model_id!r}, whose "
            f"vectors cannot be compared with them. Query with the table's model (set model.name if only the name "
            f"differs)"
        )
        raise ConfigError(msg)


def query_token_ids(tokenizer: Tokenizer, text: str, max_model_len: int) -> list[int]:
    """The ids the engine gets for a query, special tokens included, as the chunker counts them."""
    ids = tokenizer.with_special_tokens(tokenizer.encode(text)[0])
    if len(ids) > max_model_len - 1:
        msg = (
            f"the query is {len(ids)} tokens; the engine takes at most {max_model_len - 1} (max_model_len "
            f"{max_model_len} - 1). Shorten it: queries are never truncated"
        )
        raise QueryTooLong(msg)
    return ids


EMBEDDERS = ("auto", "engine", "transformers")
MATCH_COSINE = 0.9999
"""How close the transformers forward pass must come to a stored vector of the same text to embed queries."""


@dataclass(frozen=True)
class StoredChunk:
    """One chunk of the table, whose text and vector show whether an embedder reproduces the table's vectors."""

    text: str
    vector: np.ndarray


def stored_chunk(table) -> StoredChunk | None:
    rows = table.search().select([s.TEXT, s.VECTOR]).limit(1).to_list()
    return StoredChunk(rows[0][s.TEXT], np.asarray(rows[0][s.VECTOR], np.float32)) if rows else None


class QueryEmbedder:
    """The model's tokenizer and an embedder in this process: text in, vectors the table can be searched with out.
    A text longer than the engine's sequence limit is refused, never truncated.

    The embedder is the vLLM engine, or (`choice` auto or transformers) a plain transformers forward pass of the
    same model where the table was embedded on CPU: it starts in seconds where the engine takes 10-20 s (mostly
    importing vLLM), and it is used only after it reproduced a stored chunk's vector from that chunk's text
    (cosine >= MATCH_COSINE). Otherwise auto falls back to the engine and says why."""

    def __init__(self, engine: QueryEngine, choice: str = "engine", probe: StoredChunk | None = None):
        if choice not in EMBEDDERS:
            msg = f"embedder {choice!r} is not one of {', '.join(EMBEDDERS)}"
            raise ConfigError(msg)
        self.spec = engine.spec
        self.model = engine.model
        self.notes: list[str] = []
        started = time.perf_counter()
        self.tokenizer = load_tokenizer(self.spec.model_dir, self.spec.trust_remote_code)
        self.engine: VllmEmbedder | None = None
        self.reference = self._reference(choice, probe) if choice != "engine" else None
        if self.reference is None:
            self.engine = VllmEmbedder(self.spec)
            self.dim = self.engine.dim
        else:
            self.dim = len(probe.vector)
        self.kind = "transformers" if self.reference is not None else "engine"
        self.start_s = time.perf_counter() - started
        if self.dim != engine.dim:
            self.close()
            msg = f"the engine makes {self.dim}-dimensional vectors; the table holds {engine.dim}-dimensional ones"
            raise ConfigError(msg)

    def _reference(self, choice: str, probe: StoredChunk | None) -> ReferenceEmbedder | None:
        """The transformers forward pass if it reproduces the table's vectors; None (with a note) for the engine."""
        why_not = None
        if self.spec.device != "cpu":
            why_not = f"the engine runs on {self.spec.device}, so the table's vectors are the engine's on that device"
        elif probe is None:
            why_not = "the table has no chunk to check it against"
        else:
            try:
                reference = ReferenceEmbedder(self.model, self.spec.trust_remote_code)
                similarity = cosine(reference.embed_ids(self.token_ids(probe.text)), probe.vector)
            except (ConfigError, QueryTooLong) as exc:
                why_not = str(exc)
            else:
                if similarity >= MATCH_COSINE:
                    return reference
                why_not = f"its vector of a stored chunk's text has cosine {similarity:.6f} to the stored one"
        if choice == "transformers":
            msg = f"cannot embed queries with transformers: {why_not}; use --embedder engine"
            raise ConfigError(msg)
        self.notes.append(f"queries embedded by the vLLM engine, not transformers: {why_not}")
        return None

    def token_ids(self, text: str) -> list[int]:
        return query_token_ids(self.tokenizer, text, self.spec.max_model_len)

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embed_ids([self.token_ids(t) for t in texts])

    def embed_ids(self, ids: list[list[int]]) -> np.ndarray:
        if self.reference is not None:
            return np.stack([self.reference.embed_ids(one) for one in ids])
        return self.engine.embed(ids)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
