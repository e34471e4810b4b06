"""Retrieval check: sample chunks, query the table with each chunk's own text, and count how often that chunk
comes back first and in the top k, by exact search and through the ANN index. A broken embedding, pooling or
normalization shows up as a low number. Where there is an ANN index, its top k is also held to the exact top k
(with the configured re-ranking and without), which is the index's own recall whatever the embedder. Span queries
ask what a user would: one sentence from inside a document must find a chunk of that document; they show what the
chunk size does to retrieval. No ray or vllm imports; the caller brings the query embedder."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np

from pipeline import schema as s
from pipeline.engine.query import QueryTooLong
from pipeline.store.search import Hit, SearchOptions, search
from pipeline.store.sql import sql_list

EMBED_BATCH = 64
SPAN_WORDS = (8, 40)
"""A span query is one sentence of this many words (inclusive), so it is a question-sized piece of a document."""
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


class QueryVectors(Protocol):
    def token_ids(self, text: str) -> list[int]: ...

    def embed_ids(self, ids: list[list[int]]) -> np.ndarray: ...


@dataclass(frozen=True)
class Recall:
    search: str
    at_1: float
    at_k: float
    ms_per_query: float


@dataclass(frozen=True)
class Agreement:
    """How much of the exact top k an ANN search returns: the mean over queries of |ANN top k & exact top k| / k."""

    search: str
    recall_at_k: float


def overlap_at_k(truth: Sequence[str], got: Sequence[str]) -> float:
    """The share of `truth` (one query's exact top k ids) that `got` holds: recall@k of `got` against `truth`."""
    return len(set(truth) & set(got)) / len(truth) if truth else 1.0


@dataclass
class RecallReport:
    rows: int
    sampled: int
    k: int
    metric: str
    checked: int = 0
    too_long: int = 0
    """Sampled chunks whose text re-tokenizes past the engine's limit (not queried)."""
    shared_text: int = 0
    """Sampled chunks whose exact text another chunk also has: either one counts as found."""
    results: list[Recall] = field(default_factory=list)
    ann: str | None = None
    """The ANN index searched, or why there is none."""
    spans: Recall | None = None
    """Span queries: a sentence from inside a document, found when a chunk of its document comes back."""
    span_docs: int = 0
    """Documents sampled for span queries (each gives one sentence; documents with no sentence of SPAN_WORDS
    words give none)."""
    span_checked: int = 0
    ann_vs_exact: list[Agreement] = field(default_factory=list)
    """The ANN index's top k against the exact top k, as searched (re-ranked when index.refine_factor is set) and
    without re-ranking."""

    def lines(self) -> list[str]:
        out = [
            f"retrieval check: {self.checked} of {self.rows:,} chunks queried with their own text "
            f"(sampled {self.sampled}, {self.too_long} too long to query, {self.shared_text} share their text "
            f"with another chunk); metric {self.metric}",
        ]
        for r in self.results:
            out.append(
                f"  {r.search:<40} recall@1 {r.at_1:.3f}  recall@{self.k} {r.at_k:.3f}  {r.ms_per_query:.1f} ms/query"
            )
        if self.ann and not any(r.search.startswith("ANN") for r in self.results):
            out.append(f"  ANN: {self.ann}")
        for a in self.ann_vs_exact:
            out.append(f"  {a.search:<40} recall@{self.k} {a.recall_at_k:.3f} against the exact top {self.k}")
        if self.spans is not None:
            out.append(
                f"span queries: {self.span_checked} sentences of {SPAN_WORDS[0]}-{SPAN_WORDS[1]} words from inside "
                f"{self.span_docs} sampled documents; found when a chunk of the sentence's document comes back"
            )
            r = self.spans
            out.append(
                f"  {r.search:<40} recall@1 {r.at_1:.3f}  recall@{self.k} {r.at_k:.3f}  {r.ms_per_query:.1f} ms/query"
            )
        return out

    def to_json_dict(self) -> dict:
        return asdict(self)

    def recall(self, prefix: str) -> Recall | None:
        return next((r for r in self.results if r.search.startswith(prefix)), None)


def sample_chunks(table, n: int, seed: int) -> list[dict]:
    """n chunks chosen uniformly at random (seeded), read by id."""
    ids = table.search().select([s.CHUNK_ID]).limit(None).to_arrow().column(s.CHUNK_ID).to_pylist()
    picked = random.Random(seed).sample(sorted(ids), min(n, len(ids)))
    rows = []
    for i in range(0, len(picked), 500):
        where = f"{s.CHUNK_ID} IN ({sql_list(picked[i : i + 500])})"
        rows += table.search().where(where).select([s.CHUNK_ID, s.TEXT]).limit(None).to_list()
    order = {cid: i for i, cid in enumerate(picked)}
    return sorted(rows, key=lambda r: order[r[s.CHUNK_ID]])


def check_retrieval(  # noqa: PLR0913 - the check's inputs, each named by its caller
    table,
    metric: str,
    embedder: QueryVectors,
    sample: int,
    k: int = 10,
    seed: int = 0,
    ann: str | None = None,
    options: SearchOptions | None = None,
    search_ann: bool = False,
) -> RecallReport:
    """`ann` describes the table's ANN index, or why it has none; with `search_ann` queries also go through it."""
    options = options or SearchOptions()
    rows = sample_chunks(table, sample, seed)
    report = RecallReport(rows=table.count_rows(), sampled=len(rows), k=k, metric=metric, ann=ann)
    queries, ids = [], []
    for row in rows:
        try:
            ids.append(embedder.token_ids(row[s.TEXT]))
            queries.append(row)
        except QueryTooLong:
            report.too_long += 1
    vectors = [v for i in range(0, len(ids), EMBED_BATCH) for v in embedder.embed_ids(ids[i : i + EMBED_BATCH])]
    report.checked = len(queries)
    _check_spans(table, metric, embedder, sample, k, seed, report)
    searches = [("exact (every vector compared)", True)]
    if search_ann:
        searches.append((f"ANN {ann}", False))
    exact_ids: list[list[str]] = []
    for label, exact in searches:
        opts = SearchOptions(k=k, exact=exact, nprobes=options.nprobes, refine_factor=options.refine_factor)
        at_1 = at_k = 0
        agree = 0.0
        started = time.perf_counter()
        for i, (row, vector) in enumerate(zip(queries, vectors, strict=True)):
            hits = search(table, metric, vector, None, opts, has_fts=False)
            at_1 += found(hits[:1], row)
            at_k += found(hits, row)
            if exact:  # identical text means an identical vector, so a twin is among the exact top k
                report.shared_text += any(h.text == row[s.TEXT] and h.chunk_id != row[s.CHUNK_ID] for h in hits)
                exact_ids.append([h.chunk_id for h in hits])
            else:
                agree += overlap_at_k(exact_ids[i], [h.chunk_id for h in hits])
        seconds = time.perf_counter() - started
        n = max(1, len(queries))
        report.results.append(Recall(label, at_1 / n, at_k / n, 1000 * seconds / n))
        if not exact:
            refine = f"re-ranked {options.refine_factor} x k" if options.refine_factor else "not re-ranked"
            report.ann_vs_exact.append(Agreement(f"ANN as searched ({refine})", agree / n))
    if search_ann and options.refine_factor:
        plain = SearchOptions(k=k, nprobes=options.nprobes, refine_factor=None)
        agree = sum(
            overlap_at_k(truth, [h.chunk_id for h in search(table, metric, vector, None, plain, has_fts=False)])
            for truth, vector in zip(exact_ids, vectors, strict=True)
        )
        report.ann_vs_exact.append(Agreement("ANN not re-ranked", agree / max(1, len(queries))))
    return report


def found(hits: Sequence[Hit], row: dict) -> bool:
    """The chunk itself, or a chunk with the same text (the query cannot tell them apart)."""
    return any(h.chunk_id == row[s.CHUNK_ID] or h.text == row[s.TEXT] for h in hits)


def sentences(text: str) -> list[str]:
    """The text's sentences of SPAN_WORDS words, whitespace folded."""
    low, high = SPAN_WORDS
    out = []
    for piece in _SENTENCE_END.split(text):
        words = piece.split()
        if low <= len(words) <= high:
            out.append(" ".join(words))
    return out


def pick_documents(doc_ids: Sequence[str], n: int, seed: int) -> list[str]:
    """n document ids chosen at random (seeded, from the sorted distinct ids): the same documents whatever the
    chunk size, so tables chunked differently compare."""
    distinct = sorted(set(doc_ids))
    return random.Random(seed).sample(distinct, min(n, len(distinct)))


def sample_spans(doc_texts: dict[str, str], seed: int) -> list[tuple[str, str]]:
    """(doc_id, sentence): one sentence of each document that has one, chosen by a generator seeded with the
    seed and the document's id (so a document gives the same sentence in every table)."""
    out = []
    for doc_id in sorted(doc_texts):
        candidates = sentences(doc_texts[doc_id])
        if candidates:
            out.append((doc_id, random.Random(f"{seed}:{doc_id}").choice(candidates)))
    return out


def document_texts(table, doc_ids: list[str]) -> dict[str, str]:
    """The documents' texts, each its chunks joined in order (chunk texts are spans of the document)."""
    parts: dict[str, list[tuple[int, str]]] = {}
    for i in range(0, len(doc_ids), 500):
        where = f"{s.DOC_ID} IN ({sql_list(doc_ids[i : i + 500])})"
        rows = table.search().where(where).select([s.DOC_ID, s.CHUNK_INDEX, s.TEXT]).limit(None).to_list()
        for row in rows:
            parts.setdefault(row[s.DOC_ID], []).append((row[s.CHUNK_INDEX], row[s.TEXT]))
    return {doc_id: " ".join(t for _, t in sorted(chunks)) for doc_id, chunks in parts.items()}


def _check_spans(table, metric: str, embedder: QueryVectors, sample: int, k: int, seed: int, report) -> None:
    all_ids = table.search().select([s.DOC_ID]).limit(None).to_arrow().column(s.DOC_ID).to_pylist()
    picked = pick_documents(all_ids, sample, seed)
    spans = sample_spans(document_texts(table, picked), seed)
    queries, ids = [], []
    for doc_id, span in spans:
        try:
            ids.append(embedder.token_ids(span))
            queries.append(doc_id)
        except QueryTooLong:
            continue
    vectors = [v for i in range(0, len(ids), EMBED_BATCH) for v in embedder.embed_ids(ids[i : i + EMBED_BATCH])]
    opts = SearchOptions(k=k, exact=True)
    at_1 = at_k = 0
    started = time.perf_counter()
    for doc_id, vector in zip(queries, vectors, strict=True):
        hits = search(table, metric, vector, None, opts, has_fts=False)
        at_1 += bool(hits) and hits[0].doc_id == doc_id
        at_k += any(h.doc_id == doc_id for h in hits)
    n = max(1, len(queries))
    report.span_docs = len(picked)
    report.span_checked = len(queries)
    report.spans = Recall(
        "exact (every vector compared)", at_1 / n, at_k / n, 1000 * (time.perf_counter() - started) / n
    )
