"""The vector store as a user meets it after ingestion: indexes built by the run, plain-English and hybrid
queries, a refused model, the retrieval check, the index job and verify. Real
driver processes, local Ray, the real vLLM engine (CPU build) on the packaged MiniLM, a LanceDB directory."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import lancedb
import numpy as np
import pytest

from pipeline.engine.query import MATCH_COSINE, QueryEmbedder, StoredChunk, query_engine
from pipeline.engine.reference import cosine
from pipeline.errors import ConfigError
from pipeline.settings import ModelSettings
from pipeline.store.built_with import read_built_with
from pipeline.store.lance_store import LanceStore
from pipeline.store.runs import RunLog
from tests.job_process import REPO, SMALL_RAY, job_command, job_env

pytestmark = pytest.mark.engine
ENV = job_env(**SMALL_RAY)


def job(module: str, *args: str, db: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        job_command(module, "--db", str(db), *args), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def ingest(inputs: Path, db: Path) -> subprocess.CompletedProcess:
    # 128-token chunks make the sample corpus large enough (> 256 chunks) to train an ANN index on
    proc = job("jobs.ingest", "--inputs", str(inputs), "--chunk-tokens", "128", "--index.ann-min-rows", "256", db=db)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def latest_run(db: Path, kind: str = "ingest") -> dict:
    rows = lancedb.connect(str(db)).open_table("runs").search().where(f"kind = '{kind}'").limit(None).to_list()
    return max(rows, key=lambda r: r["started_at"])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("query")
    inputs = root / "sample"
    subprocess.run([sys.executable, "-m", "jobs.sample_corpus", "--out", str(inputs)], cwd=REPO, check=True)
    db = root / "lancedb"
    return inputs, db, ingest(inputs, db)


def test_the_run_builds_the_indexes_and_records_them(store):
    _, db, proc = store
    table = lancedb.connect(str(db)).open_table("chunks")
    rows = table.count_rows()
    assert {ix.columns[0] for ix in table.list_indices()} == {"vector", "text", "doc_id", "chunk_id", "source"}
    run = latest_run(db)
    maintenance = json.loads(run["maintenance"])
    actions = {a["column"]: a for a in maintenance["indexes"]}
    assert {c: a["action"] for c, a in actions.items()} == dict.fromkeys(actions, "create")
    assert actions["vector"]["params"] == {
        "index_type": "IVF_PQ",
        "metric": "dot",  # MiniLM's vectors are normalized: dot orders them as cosine does
        "num_partitions": round(math.sqrt(rows)),
        "num_sub_vectors": 384 // 16,
        "trained_rows": rows,
    }
    assert maintenance["normalized"] is True and run["maintenance_s"] > 0
    assert "index ann on vector: create" in proc.stdout
    stats = table.index_stats("vector_idx")
    assert (stats.distance_type, stats.num_unindexed_rows) == ("dot", 0)
    vector = table.search().limit(1).to_list()[0]["vector"]
    plan = table.search(vector).distance_type("dot").where("doc_id = 'python-docs/json'").explain_plan(True)
    assert "ANNSubIndex: name=vector_idx" in plan and "ScalarIndexQuery" in plan and "doc_id_idx" in plan


def test_a_plain_english_query_returns_relevant_chunks(store):
    _, db, _ = store
    proc = job("jobs.query", "how do I parse command-line options", "compress data with gzip", "--json", db=db)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = (json.loads(line) for line in proc.stdout.strip().splitlines())
    assert first["embedder"] == "transformers"  # it reproduced a stored vector, so no vLLM start
    assert first["ann_index"] is True and first["mode"] == "vector" and len(first["hits"]) == 5
    scores = [h["score"] for h in first["hits"]]
    assert scores == sorted(scores, reverse=True) and 0 < scores[-1] <= scores[0] <= 1
    options_docs = {"python-docs/argparse", "python-docs/getopt", "python-docs/optparse", "modules/argparse.md"}
    assert {h["doc_id"] for h in first["hits"][:3]} & options_docs, first["hits"]
    assert {h["doc_id"] for h in second["hits"][:2]} & {"python-docs/gzip", "modules/zlib.md", "python-docs/zlib"}
    top = first["hits"][0]
    assert top["snippet"] and top["source"].endswith((".jsonl", ".parquet", ".md")) and top["chunk_index"] >= 0


def test_hybrid_search_finds_an_exact_phrase_within_filters(store):
    _, db, _ = store
    table = lancedb.connect(str(db)).open_table("chunks")
    row = table.search().where("doc_id = 'python-docs/shlex' AND chunk_index = 0").limit(1).to_list()[0]
    phrase = " ".join(re.findall(r"[A-Za-z]{4,}", row["text"])[3:9])
    proc = job("jobs.query", phrase, "--hybrid", "--json", "-k", "3", db=db)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hits = json.loads(proc.stdout)["hits"]
    assert row["chunk_id"] in [h["chunk_id"] for h in hits], (phrase, hits)
    filtered = job("jobs.query", phrase, "--text-search", "--json", "--doc-id", "python-docs/json", db=db)
    assert {h["doc_id"] for h in json.loads(filtered.stdout)["hits"]} <= {"python-docs/json"}
    by_source = job("jobs.query", phrase, "--text-search", "--json", "--source", "modules/*", db=db)
    sources = [h["source"] for h in json.loads(by_source.stdout)["hits"]]
    assert sources and all(s.startswith("modules/") for s in sources), sources  # relative to the input root


def test_query_vectors_equal_the_pipelines_for_the_same_text(store, minilm_path):
    """Both query embedders give a stored chunk's text the vector the pipeline's engine stored for it. A
    transformers pass that does not reproduce the table (here: a stored vector that is not the text's) is not
    used: auto falls back to the engine and says why, an explicit choice of it is refused."""
    _, db, _ = store
    lance = LanceStore(str(db))
    engine = query_engine(read_built_with(lance), ModelSettings(path=str(minilm_path)))
    rows = lance.open("chunks").search().select(["text", "vector"]).limit(4).to_list()
    probe = StoredChunk(rows[0]["text"], np.asarray(rows[0]["vector"], np.float32))
    wrong = StoredChunk(rows[0]["text"], np.asarray(rows[1]["vector"], np.float32))
    with pytest.raises(ConfigError, match=r"cannot embed queries with transformers: .* has cosine"):
        QueryEmbedder(engine, "transformers", wrong)
    for choice, chunk, kind in [("auto", probe, "transformers"), ("auto", wrong, "engine")]:
        embedder = QueryEmbedder(engine, choice, chunk)
        try:
            assert embedder.kind == kind
            assert (kind == "engine") == any("by the vLLM engine, not transformers" in n for n in embedder.notes)
            vectors = embedder.embed([r["text"] for r in rows])
            for vector, row in zip(vectors, rows, strict=True):
                assert cosine(vector, np.asarray(row["vector"])) >= MATCH_COSINE
        finally:
            embedder.close()


def test_a_mismatched_model_is_refused(store, tiny_model_path):
    _, db, _ = store
    proc = job("jobs.query", "anything", "--model-path", str(tiny_model_path), db=db)
    assert proc.returncode == 2
    assert "is a different model" in proc.stderr and "all-MiniLM-L6-v2" in proc.stderr


def test_retrieval_check_finds_each_chunk_by_its_own_text(store):
    _, db, _ = store
    proc = job("jobs.retrieval_check", "--sample", "120", "--json", db=db)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    by_search = {r["search"].split()[0]: r for r in report["results"]}
    assert report["checked"] == 120 and report["metric"] == "dot"
    assert by_search["exact"]["at_1"] >= 0.95 and by_search["exact"]["at_k"] >= by_search["exact"]["at_1"]
    assert 0 < by_search["ANN"]["at_1"] <= by_search["ANN"]["at_k"] <= 1
    # the ANN index's recall against exact search, on a store past index.ann_min_rows
    agreement = {a["search"].split(" (")[0]: a["recall_at_k"] for a in report["ann_vs_exact"]}
    assert 0 < agreement["ANN not re-ranked"] <= agreement["ANN as searched"] <= 1
    # a sentence from inside a document finds its document: a random embedder would give about k / documents
    spans = report["spans"]
    assert report["span_checked"] >= 20 and spans["at_k"] >= 0.5 and spans["at_1"] <= spans["at_k"]


def test_the_index_job_updates_the_indexes_and_records_a_run_of_its_own(store):
    """jobs.index on the store the run left (a later run's rows folded into the indexes: tests/unit/store/
    test_store_search.py)."""
    _, db, _ = store
    proc = job("jobs.index", db=db)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "index ann on vector: update" in proc.stdout
    assert lancedb.connect(str(db)).open_table("chunks").index_stats("vector_idx").num_unindexed_rows == 0
    index_run = latest_run(db, kind="index")
    assert index_run["status"] == "succeeded" and json.loads(index_run["maintenance"])["tables"]["chunks"]
    assert RunLog(LanceStore(str(db))).latest().run_id == latest_run(db)["run_id"]  # index runs are not ingestion


def test_the_models_vectors_pass_the_float16_gate_and_the_halved_store_answers_as_the_full_one(store, tmp_path):
    """jobs.index with store.vector_dtype = "float16" on a copy of the store: the recall gate passes on MiniLM's own
    vectors, the table is written again with 768-byte vectors (was 1,536) and queries return the same hits."""
    _, db, _ = store
    half = tmp_path / "half"
    shutil.copytree(db, half)
    proc = job("jobs.index", "--store.vector-dtype", "float16", "--index.ann-min-rows", "256", db=half)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [said] = [line for line in proc.stdout.splitlines() if line.startswith("vectors as float16")]
    recall = float(re.search(r"recall@10 ([0-9.]+)", said).group(1))
    assert recall >= 0.99 and said.endswith("1536 -> 768 bytes a vector: applied")
    assert float(re.search(r"the ANN index's recall@10 ([0-9.]+)", said).group(1)) >= 0.9  # re-ranked, rebuilt
    table = lancedb.connect(str(half)).open_table("chunks")
    assert str(table.schema.field("vector").type) == "fixed_size_list<item: halffloat>[384]"
    assert table.index_stats("vector_idx").num_unindexed_rows == 0
    chunks = json.loads(latest_run(half, kind="index")["maintenance"])["tables"]["chunks"]
    assert chunks["bytes"][0] - chunks["bytes"][1] >= 768 * table.count_rows()
    asked = ("how do I parse command-line options", "compress data with gzip", "--json")
    answers = [job("jobs.query", *asked, db=where) for where in (db, half)]
    hits = [[[h["chunk_id"] for h in json.loads(line)["hits"]] for line in a.stdout.splitlines()] for a in answers]
    assert hits[0] == hits[1]


def test_a_query_longer_than_the_engine_takes_is_refused(store):
    _, db, _ = store
    proc = job("jobs.query", "word " * 400, db=db)
    assert proc.returncode == 2, proc.stderr[-2000:]
    refusal = r"error: the query is 402 tokens; the engine takes at most \d+ .*queries are never truncated"
    assert re.search(refusal, proc.stderr)


def test_verify_reads_the_store_the_settings_name_and_maps_its_errors(store, tmp_path):
    _, db, _ = store
    proc = job("jobs.verify", "--sample", "8", db=db)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("verify: ok")
    empty = job("jobs.verify", db=tmp_path / "empty")
    assert empty.returncode == 2 and "Traceback" not in empty.stderr
    assert (
        empty.stderr.strip().splitlines()[-1] == f"error: no ingestion run in {tmp_path / 'empty'} (table prefix '')"
    )
