"""Which indexes the chunks table needs and with what parameters: plain functions of its row count, the vector
dimension, the indexes it has and the settings. No LanceDB, ray or vllm imports."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from pipeline import schema as s
from pipeline.settings import IndexSettings

PQ_TRAINING_ROWS = 256
"""Product quantization trains 256 centroids (8 bits) per sub-vector: fewer rows cannot train it."""
HNSW_PARTITION_ROWS = 1_000_000
"""IVF_HNSW_SQ: a graph per partition does the fine search, so partitions can be large."""

# sentence-transformers' similarity_fn_name -> LanceDB distance type
_SIMILARITY_METRIC = {"cosine": "cosine", "dot": "dot", "euclidean": "l2"}


@dataclass(frozen=True)
class IndexAction:
    column: str
    kind: str
    """'ann', 'fts' or 'btree'."""
    action: str
    """'create', 'retrain' (replace with new training), 'update' (new rows folded in), 'skip'."""
    reason: str
    params: dict = field(default_factory=dict)

    def to_json_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ExistingAnn:
    index_type: str
    metric: str
    trained_rows: int | None
    """Rows the index was last trained on, from the runs table's maintenance records; None if unknown."""


NORM_TOLERANCE = 1e-3


def unit_length(vectors: pa.FixedSizeListArray | pa.ChunkedArray) -> bool | None:
    """Whether every vector is of unit length (within NORM_TOLERANCE); None for no vectors."""
    if not len(vectors):
        return None
    flat = vectors.combine_chunks() if isinstance(vectors, pa.ChunkedArray) else vectors
    matrix = np.asarray(flat.flatten(), dtype=np.float64).reshape(len(flat), -1)
    return bool(np.all(np.abs(np.linalg.norm(matrix, axis=1) - 1.0) < NORM_TOLERANCE))


def vector_metric(normalized: bool, similarity: str | None) -> str:
    """The distance the vectors are compared with. Unit-length vectors: 'dot', which orders them exactly as
    cosine (and l2) do, for the least work. Otherwise what the model was trained with (sentence-transformers'
    similarity_fn_name), and cosine when the model does not say."""
    if normalized:
        return "dot"
    return _SIMILARITY_METRIC.get(similarity or "cosine", "cosine")


def similarity_score(metric: str, distance: float) -> float:
    """What a user reads as the match score: cosine or dot similarity (LanceDB's distance is 1 - it); for l2,
    the negated distance, so that higher is better in every case."""
    return -distance if metric == "l2" else 1.0 - distance


def ivf_partitions(rows: int, index_type: str) -> int:
    if index_type == "IVF_HNSW_SQ":
        return max(1, round(rows / HNSW_PARTITION_ROWS))
    return max(1, round(math.sqrt(rows)))  # LanceDB's default for IVF_PQ


def pq_sub_vectors(dim: int) -> int:
    """LanceDB's rule: 16 dimensions per sub-vector, else 8 (both use SIMD), else one sub-vector."""
    if dim % 16 == 0:
        return dim // 16
    if dim % 8 == 0:
        return dim // 8
    return 1


def plan_ann(
    rows: int, dim: int, metric: str, settings: IndexSettings, existing: ExistingAnn | None, force: bool = False
) -> IndexAction:
    """The ANN index on the vectors: created once the table is large enough (or when forced), retrained when
    its type or metric no longer match or the table has grown ann_retrain_growth times since it was trained,
    and otherwise kept, with new rows folded in by maintenance."""
    params = _ann_params(rows, dim, metric, settings.ann_type)
    if existing is None:
        if rows < PQ_TRAINING_ROWS:
            reason = f"{rows:,} chunks: an ANN index needs at least {PQ_TRAINING_ROWS} to train; search is exact"
            return IndexAction(s.VECTOR, "ann", "skip", reason)
        if rows < settings.ann_min_rows and not force:
            reason = (
                f"{rows:,} chunks < index.ann_min_rows={settings.ann_min_rows:,}: every query compares all vectors "
                f"exactly, which is fast at this size"
            )
            return IndexAction(s.VECTOR, "ann", "skip", reason)
        return IndexAction(s.VECTOR, "ann", "create", f"{rows:,} chunks", params)
    if (existing.index_type, existing.metric) != (settings.ann_type, metric):
        reason = (
            f"the index is {existing.index_type} with {existing.metric} distance; settings and vectors call for "
            f"{settings.ann_type} with {metric}"
        )
        return IndexAction(s.VECTOR, "ann", "retrain", reason, params)
    if existing.trained_rows and rows >= existing.trained_rows * settings.ann_retrain_growth:
        reason = (
            f"{rows:,} chunks, {rows / existing.trained_rows:.1f}x the {existing.trained_rows:,} it was trained on "
            f"(index.ann_retrain_growth={settings.ann_retrain_growth:g})"
        )
        return IndexAction(s.VECTOR, "ann", "retrain", reason, params)
    trained = f"trained on {existing.trained_rows:,}" if existing.trained_rows else "trained on an unknown count"
    return IndexAction(s.VECTOR, "ann", "update", f"{rows:,} chunks, {trained}: new rows are folded in")


def _ann_params(rows: int, dim: int, metric: str, index_type: str) -> dict:
    params = {"index_type": index_type, "metric": metric, "num_partitions": ivf_partitions(rows, index_type)}
    if index_type == "IVF_PQ":
        params["num_sub_vectors"] = pq_sub_vectors(dim)
    params["trained_rows"] = rows
    return params


def plan_other_indexes(rows: int, existing: dict[str, str], settings: IndexSettings) -> list[IndexAction]:
    """Full-text index on the text and B-trees on the key columns; `existing` maps column -> index type."""
    wanted = [(c, "btree") for c in settings.scalar_columns]
    if settings.full_text:
        wanted.insert(0, (s.TEXT, "fts"))
    actions = []
    for column, kind in wanted:
        if column in existing:
            actions.append(IndexAction(column, kind, "update", "exists: new rows are folded in"))
        elif rows == 0:
            actions.append(IndexAction(column, kind, "skip", "the table is empty"))
        else:
            actions.append(IndexAction(column, kind, "create", f"{rows:,} chunks"))
    return actions
