"""Vectors at reduced precision and the recall gate: float16 keeps the store's own top 10, a quantizer that forgets
to scale fails the gate, and a run with store.vector_dtype = "float16" halves the vectors' bytes, or refuses with
the figures and keeps float32."""

from __future__ import annotations

import json
from pathlib import Path

import lancedb
import numpy as np
import pytest

from pipeline import schema as s
from pipeline.run.in_process import InProcessExecutor
from pipeline.run.ingest import run_ingest
from pipeline.settings import load_settings
from pipeline.store import precision
from pipeline.store.lance_store import LanceStore
from pipeline.store.search import SearchOptions, SearchTarget, search
from tests.fakes import FakeEmbedder
from tests.job_process import REPO

pytestmark = pytest.mark.unit


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def no_scale_int8(v: np.ndarray) -> np.ndarray:
    """int8 without a scale from a sample: every component of a unit vector (|x| < 1) becomes 0."""
    return v.astype(np.int8).astype(np.float32)


def recall(vectors: np.ndarray, quantize, batch: int = 97, queries: int = 50) -> float:
    rows = np.sort(np.random.default_rng(1).choice(len(vectors), queries, replace=False))
    batches = (vectors[i : i + batch] for i in range(0, len(vectors), batch))
    found, scanned, _ = precision.reduced_recall(batches, vectors[rows], rows, quantize, "dot")
    assert scanned == len(vectors)
    return found


def test_float16_keeps_the_top_10_and_a_quantizer_without_scaling_loses_it():
    vectors = unit_vectors(3000, 384)
    assert recall(vectors, precision.QUANTIZERS["float16"]) >= 0.99
    assert recall(vectors, no_scale_int8) < 0.1
    assert recall(vectors, lambda v: v) == 1.0


def test_the_scan_ranks_as_one_search_over_all_rows_and_leaves_each_query_out_of_its_own():
    vectors = unit_vectors(400, 16, seed=3)
    coarse = lambda v: np.round(v, 1)  # noqa: E731 - enough error to move some neighbours
    assert recall(vectors, coarse, batch=7) == recall(vectors, coarse, batch=400)
    top = precision.TopK(1, 3)
    top.add(np.array([[0.1, 0.9, 0.5]]), 0)
    top.add(np.array([[0.7, 0.2]]), 3)
    assert top.rows.tolist() == [[1, 3, 2]]
    rows = np.array([0])
    found, scanned, nearest = precision.reduced_recall([vectors[:2]], vectors[:1], rows, lambda v: v, "dot", k=1)
    assert (found, scanned, nearest.tolist()) == (1.0, 2, [[1]])  # row 0 is the query: its nearest other is row 1


def run(corpus: Path, db: Path, *flags: str):
    settings = load_settings(
        REPO / "conf/local.toml", ["--inputs", str(corpus), "--db", str(db), "--chunk-tokens", "64", *flags]
    )
    return run_ingest(settings, InProcessExecutor(FakeEmbedder(dim=64)))


@pytest.fixture
def corpus(tmp_path, sample_texts) -> Path:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.jsonl").write_text(
        "".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(sample_texts[:12]))
    )
    return root


def test_a_float16_store_halves_its_vectors_keeps_its_top_10_and_takes_the_next_runs_rows_as_float16(
    corpus, tmp_path, sample_texts
):
    full, half = tmp_path / "full", tmp_path / "half"
    run(corpus, full)
    result = run(corpus, half, "--store.vector-dtype", "float16")
    assert result.maintenance.refused is None and result.maintenance.precision.passed
    table = lancedb.connect(str(half)).open_table("chunks")
    assert s.vector_dtype(table.schema.field(s.VECTOR).type) == "float16"
    made = s.table_meta(table.schema)
    assert made["vector_dtype"] == "float16" and made["precision_gate"]["recall_at_k"] >= 0.99
    assert made["precision_gate"]["bytes_per_vector"] == [256, 128]
    assert "ANN index" not in result.maintenance.precision.line()  # below index.ann_min_rows: no index to probe
    [chunks] = [t for name, t in result.maintenance.tables.items() if name == "chunks"]
    assert chunks["bytes"][1] < chunks["bytes"][0] - table.count_rows() * 120  # 128 bytes a vector less
    full_target, half_target = (SearchTarget.open(LanceStore(str(db)), None) for db in (full, half))
    stored = lancedb.connect(str(full)).open_table("chunks").to_arrow().column(s.VECTOR).to_pylist()[:20]
    for vector in stored:
        hits = [
            [
                h.chunk_id
                for h in search(t.table, t.metric, np.array(vector), None, SearchOptions(k=10, exact=True), False)
            ]
            for t in (full_target, half_target)
        ]
        assert hits[0] == hits[1]
    (corpus / "b.jsonl").write_text(json.dumps({"id": "new", "text": sample_texts[20]}) + "\n")
    again = run(corpus, half, "--store.vector-dtype", "float16")
    assert again.maintenance.precision is None  # nothing left to reduce
    table = lancedb.connect(str(half)).open_table("chunks")
    assert s.vector_dtype(table.schema.field(s.VECTOR).type) == "float16" and table.count_rows(f"{s.DOC_ID} = 'new'")


def test_a_store_whose_vectors_fail_the_gate_keeps_float32_and_the_run_says_why(corpus, tmp_path, monkeypatch):
    monkeypatch.setitem(precision.QUANTIZERS, "float16", no_scale_int8)
    result = run(corpus, tmp_path / "db", "--store.vector-dtype", "float16")
    assert result.status == "succeeded" and not result.maintenance.precision.passed
    said = result.maintenance.refused
    assert said.startswith("store.vector_dtype = 'float16' refused: recall@10 0.") and "store.min_recall 0.99" in said
    table = lancedb.connect(str(tmp_path / "db")).open_table("chunks")
    assert s.vector_dtype(table.schema.field(s.VECTOR).type) == "float32"
    assert "precision_gate" not in s.table_meta(table.schema)
