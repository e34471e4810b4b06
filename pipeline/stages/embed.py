"""The embed stage: chunk rows in, the same rows with vectors out, whatever engine embeds them (the Embedder
protocol). No ray or vllm imports."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import structlog

from pipeline import schema as s
from pipeline.errors import EngineError, InputRejected
from pipeline.records import BatchPayload
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
        rows = [i for i, ok in enumerate(pc.is_valid(batch.column(s.CHUNK_ID)).to_pylist()) if ok]
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
                reasons[i], details[i] = s.RejectReason.ENGINE_REJECTED, err
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
        engine = {**self.embedder.info(), "ready_at": self.ready_at.isoformat()} if self.batch_index == 0 else None
        self.batch_index += 1
        stats_col = [BatchPayload(stats, engine).to_json()] + [None] * (len(batch) - 1)
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
