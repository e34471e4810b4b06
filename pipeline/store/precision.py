"""Vectors stored at reduced precision, and the recall gate that decides whether a store may: a sample of the store's
own chunks, as queries, must find the same top k among the reduced vectors as among the full-precision ones. No ray
or vllm imports."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from pipeline import schema as s

Quantizer = Callable[[np.ndarray], np.ndarray]
"""Full-precision vectors in, the vectors a reader of the reduced column gets back (as float32) out."""

QUANTIZERS: dict[str, Quantizer] = {"float16": lambda v: v.astype(np.float16).astype(np.float32)}
"""What each reduced store.vector_dtype keeps of a vector. (int8 is not offered: LanceDB 0.40 neither searches nor
indexes int8 vector columns.)"""

K = 10
SCAN_ROWS = 8192
"""Stored vectors scored per step of the gate's scan: the scan holds this many, never the table."""


@dataclass(frozen=True)
class GateResult:
    dtype: str
    recall_at_k: float
    """Mean over the queries of |top k among reduced vectors ∩ top k among full ones| / k."""
    min_recall: float
    queries: int
    rows: int
    k: int
    bytes_per_vector: tuple[int, int]
    """Full precision, then reduced."""
    seconds: float
    ann_recall: float | None = None
    """The rebuilt ANN index's recall@k on the same queries, searched as jobs.query searches (nprobes and
    refine_factor of the index settings), against the exact top k among the reduced vectors."""

    @property
    def passed(self) -> bool:
        return self.recall_at_k >= self.min_recall

    def to_json_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def line(self) -> str:
        verdict = "applied" if self.passed else f"refused (below store.min_recall {self.min_recall})"
        full, reduced = self.bytes_per_vector
        ann = f"; the ANN index's recall@{self.k} {self.ann_recall:.4f}" if self.ann_recall is not None else ""
        return (
            f"vectors as {self.dtype}: recall@{self.k} {self.recall_at_k:.4f} against full precision, {self.queries} "
            f"of the store's chunks as queries over {self.rows:,} rows{ann}; {full} -> {reduced} bytes a vector: "
            f"{verdict}"
        )


def scores(queries: np.ndarray, vectors: np.ndarray, metric: str) -> np.ndarray:
    """Higher is nearer, in the table's metric: queries (q, d) x vectors (n, d) -> (q, n)."""
    if metric == "l2":
        return 2 * queries @ vectors.T - (vectors * vectors).sum(axis=1)[None, :]
    if metric == "cosine":
        norms = np.linalg.norm(vectors, axis=1)
        return (queries @ vectors.T) / np.where(norms > 0, norms, 1)[None, :]
    return queries @ vectors.T


class TopK:
    """The k best rows so far of each query, over batches of rows seen one after another."""

    def __init__(self, queries: int, k: int):
        self.k = k
        self.best = np.full((queries, 0), -np.inf)
        self.rows = np.zeros((queries, 0), dtype=np.int64)

    def add(self, batch_scores: np.ndarray, first_row: int) -> None:
        rows = np.broadcast_to(np.arange(first_row, first_row + batch_scores.shape[1]), batch_scores.shape)
        both, both_rows = np.hstack([self.best, batch_scores]), np.hstack([self.rows, rows])
        keep = np.argsort(-both, axis=1, kind="stable")[:, : self.k]
        self.best = np.take_along_axis(both, keep, axis=1)
        self.rows = np.take_along_axis(both_rows, keep, axis=1)


def reduced_recall(
    batches: Iterable[np.ndarray],
    queries: np.ndarray,
    query_rows: np.ndarray,
    quantize: Quantizer,
    metric: str,
    k: int = K,
) -> tuple[float, int, np.ndarray]:
    """(recall@k, rows scanned, each query's top k rows among the reduced vectors): the stored vectors, in
    batches in table order, searched with `queries` (the vectors of rows `query_rows`, each left out of its own
    search); the top k among the quantized vectors against the top k among the full ones."""
    full, reduced = TopK(len(queries), k), TopK(len(queries), k)
    reduced_queries = quantize(queries)
    first = 0
    for batch in batches:
        own = np.nonzero((query_rows >= first) & (query_rows < first + len(batch)))[0]
        for top, q, v in ((full, queries, batch), (reduced, reduced_queries, quantize(batch))):
            batch_scores = scores(q, v, metric)
            batch_scores[own, query_rows[own] - first] = -np.inf
            top.add(batch_scores, first)
        first += len(batch)
    hits = [len(set(a) & set(b)) / k for a, b in zip(full.rows.tolist(), reduced.rows.tolist(), strict=True)]
    return float(np.mean(hits)), first, reduced.rows


def as_matrix(column: pa.Array) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    dim = column.type.list_size
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)


def vector_batches(dataset, rows: int = SCAN_ROWS) -> Iterable[np.ndarray]:
    """The chunks table's vectors as float32 arrays, in table order (a Lance dataset's scan)."""
    for batch in dataset.to_batches(columns=[s.VECTOR], batch_size=rows):
        yield as_matrix(batch.column(0))


def gate(
    dataset, dtype: str, metric: str, min_recall: float, queries: int, seed: int = 0, quantize: Quantizer | None = None
) -> tuple[GateResult, Probe]:
    """The recall gate on the chunks table's own vectors (full precision, as stored), and its probe of the index."""
    started = time.perf_counter()
    total = dataset.count_rows()
    rng = np.random.default_rng(seed)
    query_rows = np.sort(rng.choice(total, size=min(queries, total), replace=False))
    vectors = as_matrix(dataset.take(query_rows, columns=[s.VECTOR]).column(s.VECTOR))
    quantizer = quantize or QUANTIZERS[dtype]
    recall, scanned, nearest = reduced_recall(vector_batches(dataset), vectors, query_rows, quantizer, metric)
    dim = dataset.schema.field(s.VECTOR).type.list_size
    reduced_bytes = dim * pa.from_numpy_dtype(np.dtype(dtype)).bit_width // 8
    ids = chunk_ids(dataset, np.concatenate([query_rows, nearest.ravel()]))
    probe = Probe(vectors, ids[: len(query_rows)], ids[len(query_rows) :].reshape(nearest.shape))
    result = GateResult(
        dtype, recall, min_recall, len(query_rows), scanned, K, (dim * 4, reduced_bytes), time.perf_counter() - started
    )
    return result, probe


@dataclass(frozen=True)
class Probe:
    """The gate's queries, their chunks' ids and the ids of their exact top k among the reduced vectors: what the
    rebuilt ANN index is held to."""

    vectors: np.ndarray
    own: np.ndarray
    """(queries,) chunk ids."""
    nearest: np.ndarray
    """(queries, k) chunk ids."""


def chunk_ids(dataset, rows: np.ndarray) -> np.ndarray:
    unique, back = np.unique(rows, return_inverse=True)
    ids = np.array(dataset.take(unique, columns=[s.CHUNK_ID]).column(s.CHUNK_ID).to_pylist(), dtype=object)
    return ids[back]


def ann_recall(table, probe: Probe, metric: str, nprobes: int, refine_factor: int | None, k: int = K) -> float:
    """The ANN index's recall@k on the gate's queries, each query's own chunk left out. The query is the one
    pipeline.store.search.vector_options builds; that module imports maintenance, this module's caller, so it is
    spelled here."""
    found = []
    for vector, own, exact in zip(probe.vectors, probe.own, probe.nearest, strict=True):
        query = table.search(vector).distance_type(metric).nprobes(nprobes).limit(k + 1).select([s.CHUNK_ID])
        if refine_factor:
            query = query.refine_factor(refine_factor)
        hits = [row[s.CHUNK_ID] for row in query.to_list() if row[s.CHUNK_ID] != own][:k]
        found.append(len(set(hits) & set(exact)) / k)
    return float(np.mean(found))
