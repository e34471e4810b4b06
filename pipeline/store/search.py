"""Searching the chunks table: vector, full-text and hybrid queries with filters, as plain results.
No ray or vllm imports; the caller brings the query vector."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from pipeline import schema as s
from pipeline.errors import ConfigError
from pipeline.plan.index import similarity_score
from pipeline.store.lance_store import LanceStore
from pipeline.store.maintenance import indexes_by_column, search_metric
from pipeline.store.sql import sql_list, sql_str

Mode = Literal["vector", "hybrid", "text"]
HIT_COLUMNS = [s.CHUNK_ID, s.DOC_ID, s.SOURCE, s.CHUNK_INDEX, s.DOC_CHUNKS, s.TEXT]
SCORE_KINDS = {"vector": "similarity", "hybrid": "reciprocal rank fusion", "text": "BM25"}


@dataclass(frozen=True)
class SearchOptions:
    k: int = 10
    mode: Mode = "vector"
    doc_ids: tuple[str, ...] = ()
    source: str | None = None
    """A glob on the source path: * any characters, ? one character."""
    exact: bool = False
    """Compare every vector instead of using the ANN index."""
    nprobes: int = 20
    refine_factor: int | None = 10


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    chunk_id: str
    doc_id: str
    source: str
    chunk_index: int
    doc_chunks: int
    text: str = field(repr=False)
    snippet: str = ""

    def to_json_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != s.TEXT}


@dataclass(frozen=True)
class SearchTarget:
    """The chunks table opened for queries: its indexes by column and the distance queries must use."""

    table: object
    indexes: dict
    metric: str

    @classmethod
    def open(cls, store: LanceStore, similarity: str | None) -> SearchTarget:
        """`similarity`: the one the model states (BuiltWith.similarity), for a table without a vector index."""
        table = store.open(store.names.chunks)
        return cls(table, indexes_by_column(table), search_metric(table, similarity))


def filter_sql(doc_ids: tuple[str, ...], source: str | None) -> str | None:
    clauses = []
    if doc_ids:
        clauses.append(f"{s.DOC_ID} IN ({sql_list(list(doc_ids))})")
    if source:
        clauses.append(f"{s.SOURCE} LIKE {sql_str(glob_to_like(source))}")
    return " AND ".join(clauses) or None


def glob_to_like(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def search(
    table, metric: str, vector: np.ndarray | None, text: str | None, options: SearchOptions, has_fts: bool
) -> list[Hit]:
    """The top k chunks: by vector (score = similarity), by text (BM25) or both fused (reciprocal rank)."""
    if options.mode != "vector" and not has_fts:
        msg = "the table has no full-text index, which hybrid and text search need; run python -m jobs.index"
        raise ConfigError(msg)
    if options.mode == "text":
        query = table.search(text, query_type="fts")
    elif options.mode == "hybrid":
        query = table.search(query_type="hybrid", vector_column_name=s.VECTOR).vector(vector).text(text)
        query = vector_options(query.distance_type(metric), options)
    else:
        query = vector_options(table.search(vector, vector_column_name=s.VECTOR).distance_type(metric), options)
    where = filter_sql(options.doc_ids, options.source)
    if where:
        query = query.where(where, prefilter=True)
    score_column = {"vector": ["_distance"], "text": ["_score"]}.get(options.mode, [])
    rows = query.select(HIT_COLUMNS + score_column).limit(options.k).to_list()
    return [_hit(i + 1, row, metric, options.mode, text) for i, row in enumerate(rows)]


def vector_options(query, options: SearchOptions):
    """A LanceDB vector query searched as `options` say: exact, or through the ANN index with its nprobes and its
    candidates re-ranked by refine_factor."""
    if options.exact:
        return query.bypass_vector_index()
    query = query.nprobes(options.nprobes)
    return query.refine_factor(options.refine_factor) if options.refine_factor else query


def _hit(rank: int, row: dict, metric: str, mode: Mode, text: str | None) -> Hit:
    if mode == "vector":
        score = similarity_score(metric, row["_distance"])
    else:
        score = row["_relevance_score"] if mode == "hybrid" else row["_score"]
    return Hit(
        rank=rank,
        score=float(score),
        chunk_id=row[s.CHUNK_ID],
        doc_id=row[s.DOC_ID],
        source=row[s.SOURCE],
        chunk_index=row[s.CHUNK_INDEX],
        doc_chunks=row[s.DOC_CHUNKS],
        text=row[s.TEXT],
        snippet=snippet(row[s.TEXT], text or ""),
    )


_WORD = re.compile(r"\w{3,}")


def snippet(text: str, query: str, width: int = 240) -> str:
    """About `width` characters of the chunk on one line, around the first query word it contains."""
    flat = " ".join(text.split())
    lowered = flat.lower()
    positions = [lowered.find(w.lower()) for w in _WORD.findall(query)]
    found = [p for p in positions if p >= 0]
    start = max(0, min(found) - width // 4) if found else 0
    start = flat.rfind(" ", 0, start) + 1 if start else 0
    piece = flat[start : start + width]
    return ("..." if start else "") + piece + ("..." if start + width < len(flat) else "")
