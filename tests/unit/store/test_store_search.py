"""Indexes, maintenance, search and the retrieval check on a real LanceDB directory. The chunks come from the
pipeline's own steps (real tokenizer, chunker and writer) with FakeEmbedder vectors, so these tests need no
engine; tests/engine/test_query_job.py repeats the user-facing parts with the real engine."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline import schema as s
from pipeline.checks.retrieval import check_retrieval, overlap_at_k
from pipeline.engine.query import query_token_ids
from pipeline.errors import ConfigError
from pipeline.plan.chunk_plan import ChunkPlan
from pipeline.settings import IndexSettings, InputSettings, MaintenanceSettings
from pipeline.stages.chunking import Chunker
from pipeline.stages.tokenizer import load_tokenizer
from pipeline.store.lance_store import LanceStore
from pipeline.store.maintenance import indexes_by_column, maintain_store, vector_facts
from pipeline.store.runs import RunLog
from pipeline.store.search import SearchOptions, filter_sql, glob_to_like, search, snippet
from tests.fakes import FakeEmbedder
from tests.support.in_process import ingest_in_process
from tests.support.stores import run_record

pytestmark = pytest.mark.unit

PLAN = ChunkPlan(max_tokens=64, overlap_tokens=0, boundary_window=0.15, model_id="fake")
DIM = 32
INDEX = IndexSettings(ann_min_rows=256)
KEEP_ALL = MaintenanceSettings()


class FakeQueries:
    """Query vectors the way the engine would make them for a table filled by FakeEmbedder."""

    def __init__(self, tokenizer, drop_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.embedder = FakeEmbedder(dim=DIM)
        self.drop_special_tokens = drop_special_tokens

    def token_ids(self, text: str) -> list[int]:
        ids = query_token_ids(self.tokenizer, text, 512)
        return ids[1:-1] if self.drop_special_tokens else ids

    def embed_ids(self, ids: list[list[int]]) -> np.ndarray:
        return self.embedder.embed(ids)


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    return load_tokenizer(minilm_path)


def ingest(tokenizer, store: LanceStore, docs: dict[str, str], folder: Path, run_id: str) -> None:
    """One run through the pipeline's chunk, embed and write steps, recorded in `runs` as the job does."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{run_id}.jsonl").write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in docs.items()))
    RunLog(store).start(run_record(run_id))
    store.ensure_side_tables()
    cfg = InputSettings(paths=[str(folder / f"{run_id}.jsonl")])
    chunker = Chunker(tokenizer, PLAN)
    ingest_in_process(
        store, run_id, cfg, chunker, FakeEmbedder(dim=DIM), {"model": "fake"}, commit_rows=1000, embed_rows=50
    )


def maintain(store: LanceStore, run_id: str, index=INDEX, maintenance=KEEP_ALL, exclusive=True, **kw):
    report = maintain_store(store, index, maintenance, None, exclusive, **kw)
    runs = store.table(store.names.runs, s.RUNS_SCHEMA)
    runs.update(where=f"run_id = '{run_id}'", values={"status": "succeeded", "maintenance": report.to_json()})
    return report


@pytest.fixture(scope="module")
def store(tmp_path_factory, tokenizer, sample_texts):
    root = tmp_path_factory.mktemp("search")
    store = LanceStore(str(root / "db"))
    ingest(tokenizer, store, {f"doc-{i}": t for i, t in enumerate(sample_texts[:20])}, root / "in", "run-1")
    report = maintain(store, "run-1")
    return store, report


def chunks(store):
    return store.open(store.names.chunks)


def test_first_maintenance_creates_every_index(store):
    store, report = store
    rows = chunks(store).count_rows()
    assert rows >= 256
    actions = {(a["column"], a["kind"]): a for a in report.indexes}
    assert {k: a["action"] for k, a in actions.items()} == {
        ("vector", "ann"): "create",
        ("text", "fts"): "create",
        ("doc_id", "btree"): "create",
        ("chunk_id", "btree"): "create",
        ("source", "btree"): "create",
    }
    assert actions[("vector", "ann")]["params"]["trained_rows"] == rows
    assert set(indexes_by_column(chunks(store))) == {"vector", "text", "doc_id", "chunk_id", "source"}
    assert (report.metric, report.normalized) == ("dot", True)  # FakeEmbedder makes unit vectors
    stats = chunks(store).index_stats(indexes_by_column(chunks(store))["vector"].name)
    assert (stats.index_type, stats.distance_type) == ("IVF_PQ", "dot")


def test_queries_use_the_indexes(store):
    store, _ = store
    table = chunks(store)
    vector = table.search().limit(1).to_list()[0][s.VECTOR]
    plan = table.search(vector).distance_type("dot").where("doc_id = 'doc-3'", prefilter=True).explain_plan(True)
    assert "ANNSubIndex: name=vector_idx" in plan and "metric=Dot" in plan
    assert "ScalarIndexQuery: query=[doc_id = doc-3]@doc_id_idx(BTree)" in plan
    assert "MatchQuery: column=text" in table.search("module", query_type="fts").explain_plan()
    exact = table.search(vector).distance_type("dot").bypass_vector_index().explain_plan()
    assert "ANNSubIndex" not in exact


def test_new_rows_are_folded_into_the_indexes_and_growth_retrains(store, tokenizer, sample_texts, tmp_path):
    store, _ = store
    before = chunks(store).count_rows()
    ingest(tokenizer, store, {f"more-{i}": t for i, t in enumerate(sample_texts[20:22])}, tmp_path, "run-2")
    table = chunks(store)
    assert table.index_stats("vector_idx").num_unindexed_rows == table.count_rows() - before > 0
    report = maintain(store, "run-2")
    ann = next(a for a in report.indexes if a["kind"] == "ann")
    assert ann["action"] == "update" and f"trained on {before:,}" in ann["reason"]
    assert report.tables["chunks"]["unindexed_rows"] == [table.count_rows() - before, 0]
    assert chunks(store).index_stats("vector_idx").num_unindexed_rows == 0
    assert chunks(store).index_stats("text_idx").num_unindexed_rows == 0

    growth = IndexSettings(ann_min_rows=256, ann_retrain_growth=1.01)
    ingest(tokenizer, store, {f"grow-{i}": t for i, t in enumerate(sample_texts[22:24])}, tmp_path, "run-3")
    retrained = next(a for a in maintain(store, "run-3", index=growth).indexes if a["kind"] == "ann")
    assert retrained["action"] == "retrain"
    assert retrained["params"]["trained_rows"] == chunks(store).count_rows()
    assert RunLog(store).last_ann_training() == chunks(store).count_rows()


def test_without_exclusive_access_only_indexes_are_touched(store):
    store, _ = store
    versions = len(chunks(store).list_versions())
    report = maintain_store(store, INDEX, MaintenanceSettings(keep_versions_h=0), None, exclusive=False)
    assert "no lock" in report.skipped and report.tables == {}
    assert len(chunks(store).list_versions()) == versions


def test_cleanup_removes_old_versions(store):
    store, _ = store
    assert len(chunks(store).list_versions()) > 1
    report = maintain_store(store, INDEX, MaintenanceSettings(keep_versions_h=0), None, exclusive=True)
    versions = report.tables["chunks"]["versions"]
    assert versions[1] < versions[0] and versions[1] <= 2


def test_unnormalized_vectors_get_the_models_metric(tmp_path):
    import lancedb

    table = lancedb.connect(str(tmp_path)).create_table(
        "t", pa.table({s.VECTOR: pa.FixedSizeListArray.from_arrays(pa.array(np.arange(8, dtype=np.float32)), 4)})
    )
    assert vector_facts(table, None) == ("cosine", False)


def test_vector_search_filters_and_snippets(store, tokenizer):
    store, _ = store
    table = chunks(store)
    row = table.search().where("doc_id = 'doc-2' AND chunk_index = 1").limit(1).to_list()[0]
    queries = FakeQueries(tokenizer)
    vector = queries.embed_ids([queries.token_ids(row[s.TEXT])])[0]
    hits = search(table, "dot", vector, None, SearchOptions(k=5), has_fts=True)
    assert hits[0].chunk_id == row[s.CHUNK_ID] and hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    only = search(table, "dot", vector, None, SearchOptions(k=5, doc_ids=("doc-5", "doc-6")), has_fts=True)
    assert only and {h.doc_id for h in only} <= {"doc-5", "doc-6"}
    none = search(table, "dot", vector, None, SearchOptions(k=5, source="*/nowhere/*"), has_fts=True)
    assert none == []
    some = search(table, "dot", vector, None, SearchOptions(k=5, source="*run-1.jsonl"), has_fts=True)
    assert len(some) == 5


def test_hybrid_and_text_search_find_an_exact_phrase(store, tokenizer):
    store, _ = store
    table = chunks(store)
    row = table.search().where("doc_id = 'doc-4' AND chunk_index = 2").limit(1).to_list()[0]
    words = re.findall(r"[A-Za-z]{4,}", row[s.TEXT])
    phrase = " ".join(words[:6])
    unrelated = FakeQueries(tokenizer).embed_ids([[101, 7, 102]])[0]
    text_hits = search(table, "dot", None, phrase, SearchOptions(k=3, mode="text"), has_fts=True)
    assert text_hits[0].chunk_id == row[s.CHUNK_ID]
    hybrid = search(table, "dot", unrelated, phrase, SearchOptions(k=5, mode="hybrid"), has_fts=True)
    assert row[s.CHUNK_ID] in [h.chunk_id for h in hybrid]
    with pytest.raises(ConfigError, match="no full-text index"):
        search(table, "dot", unrelated, phrase, SearchOptions(mode="hybrid"), has_fts=False)


def test_filters_and_snippets_are_escaped_and_focused():
    assert glob_to_like("data/*_v1%?.md") == "data/%\\_v1\\%_.md"
    assert filter_sql(("a'b",), "*.md") == "doc_id IN ('a''b') AND source LIKE '%.md'"
    assert filter_sql((), None) is None
    text = "intro " * 100 + "the gzip module compresses files " + "tail " * 100
    piece = snippet(text, "How does gzip work?", width=80)
    assert "gzip" in piece and piece.startswith("...") and piece.endswith("...") and len(piece) <= 86
    assert snippet("short text", "absent") == "short text"


def test_retrieval_check_scores_a_working_and_a_broken_embedder(store, tokenizer):
    store, _ = store
    table = chunks(store)
    good = check_retrieval(table, "dot", FakeQueries(tokenizer), sample=60, k=10, ann="IVF_PQ", search_ann=True)
    exact, ann = good.recall("exact"), good.recall("ANN")
    assert good.checked == 60 and exact.at_1 == 1.0 and exact.at_k == 1.0
    assert 0.0 <= ann.at_1 <= ann.at_k <= 1.0
    # the index held to exact search: re-ranking 10 x k candidates keeps every true neighbour the plain ANN found
    as_searched, plain = good.ann_vs_exact
    assert as_searched.search == "ANN as searched (re-ranked 10 x k)" and plain.search == "ANN not re-ranked"
    assert 0.0 < plain.recall_at_k <= as_searched.recall_at_k <= 1.0
    assert any(line.endswith("against the exact top 10") for line in good.lines())
    broken = check_retrieval(table, "dot", FakeQueries(tokenizer, drop_special_tokens=True), sample=60, k=10)
    assert broken.recall("exact").at_1 < 0.2 and broken.recall("ANN") is None and broken.ann_vs_exact == []
    assert any("recall@1 1.000" in line for line in good.lines())
    assert good.span_docs > 0 and 0 < good.span_checked <= good.span_docs
    assert 0.0 <= good.spans.at_1 <= good.spans.at_k <= 1.0 and any("span queries" in x for x in good.lines())


def test_overlap_at_k_is_the_share_of_the_true_top_k_returned():
    assert overlap_at_k(["a", "b", "c", "d"], ["d", "x", "a", "y"]) == 0.5
    assert overlap_at_k(["a", "b"], ["b", "a"]) == 1.0 and overlap_at_k(["a"], []) == 0.0
