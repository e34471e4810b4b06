"""The store as other readers open it, each in an environment of its own with nothing of this project installed
(`scripts/readers_env.sh`, which `make test-all` runs): LanceDB's Node client, and DuckDB, Polars, LanceDB's Python
client, LangChain's and LlamaIndex's LanceDB stores at their own versions. Each reads the metric from the chunks
table's own metadata and returns the top k this project's search returns (exact, and through the ANN index
re-ranked), with the same scores; DuckDB and Polars count what the store holds and the runs' tokens add up. The
store is made by the run itself, in this process, with a fake engine at the packaged model's width, pushed past a
small index.ann_min_rows."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import lancedb
import numpy as np
import pyarrow.compute as pc
import pytest

from pipeline import schema as s
from pipeline.plan.index import similarity_score
from pipeline.run.in_process import InProcessExecutor
from pipeline.run.ingest import run_ingest
from pipeline.settings import load_settings
from pipeline.store.lance_store import LanceStore
from pipeline.store.search import SearchOptions, SearchTarget, search
from tests.fakes import FakeEmbedder
from tests.job_process import REPO

pytestmark = pytest.mark.readers
HERE = Path(__file__).parent
READERS_PY = REPO / ".readers" / "bin" / "python"
K = 10


@pytest.fixture(scope="module")
def store(tmp_path_factory, sample_texts, minilm_path) -> Path:
    missing = [p for p in (READERS_PY, HERE / "node_modules" / "@lancedb" / "lancedb") if not p.exists()]
    assert not missing, f"the readers' environments are not there ({missing}): run bash scripts/readers_env.sh"
    root = tmp_path_factory.mktemp("readers")
    (root / "docs").mkdir()
    texts = [f"{t}\n\nCopy {k}." for k in range(2) for t in sample_texts[:30]]
    lines = [json.dumps({"id": f"d{i}", "text": t}) for i, t in enumerate(texts)]
    (root / "docs" / "part.jsonl").write_text("\n".join(lines) + "\n")
    db = root / "db"
    flags = ["--inputs", str(root / "docs"), "--db", str(db), "--chunk-tokens", "64", "--index.ann-min-rows", "256"]
    settings = load_settings(REPO / "conf/local.toml", flags)
    width = json.loads((minilm_path / "config.json").read_text())["hidden_size"]
    result = run_ingest(settings, InProcessExecutor(FakeEmbedder(dim=width)))
    assert result.status == "succeeded"
    return db


def queries(table) -> list[list[float]]:
    """Three stored chunks' vectors and a random unit vector (seeded)."""
    stored = table.to_arrow().column(s.VECTOR).to_pylist()
    rng = np.random.default_rng(7)
    picked = [stored[i] for i in rng.choice(len(stored), 3, replace=False)]
    other = rng.standard_normal(len(stored[0]))
    return [*picked, (other / np.linalg.norm(other)).tolist()]


def ours(store_dir: Path, vectors: list[list[float]], exact: bool) -> tuple[str, list[list[tuple[str, float]]]]:
    target = SearchTarget.open(LanceStore(str(store_dir)), None)
    options = SearchOptions(k=K, exact=exact)
    found = [search(target.table, target.metric, np.array(v), None, options, has_fts=False) for v in vectors]
    return target.metric, [[(h.chunk_id, h.score) for h in hits] for hits in found]


def same_top_k(theirs: list[list], metric: str, want: list[list[tuple[str, float]]]) -> None:
    """`theirs`: a reader's [chunk id, LanceDB distance] pairs per query; `want`: ours, (chunk id, score)."""
    for got, expected in zip(theirs, want, strict=True):
        assert [c for c, _ in got] == [c for c, _ in expected]
        scores = [similarity_score(metric, d) for _, d in got]
        assert scores == pytest.approx([score for _, score in expected], abs=1e-5)


def test_the_store_has_an_ann_index_to_read_through(store):
    table = lancedb.connect(str(store)).open_table("chunks")
    assert table.count_rows() >= 256 and "IvfPq" in {
        i.index_type for i in table.list_indices() if i.columns == ["vector"]
    }


def answer_of(command: list[str], vectors: list[list[float]]) -> dict:
    """What a reader's program prints (JSON), given the query vectors on stdin."""
    proc = subprocess.run(command, cwd=HERE, input=json.dumps(vectors), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_lancedbs_node_client_returns_our_top_k_with_the_tables_own_metric(store):
    vectors = queries(lancedb.connect(str(store)).open_table("chunks"))
    for mode, exact in (("exact", True), ("ann", False)):
        metric, want = ours(store, vectors, exact)
        answer = answer_of(["node", "search.mjs", str(store), str(K), mode], vectors)
        assert answer["metric"] == metric and answer["model"] == "all-MiniLM-L6-v2"
        same_top_k(answer["hits"], metric, want)


def test_python_readers_at_their_own_versions_count_search_and_add_up_as_we_do(store):
    table = lancedb.connect(str(store)).open_table("chunks")
    vectors = queries(table)
    answer = answer_of([str(READERS_PY), "python_readers.py", str(store), str(K)], vectors)
    ours_table = table.to_arrow()
    assert answer["rows"] == ours_table.num_rows
    assert answer["docs"] == len(pc.unique(ours_table.column(s.DOC_ID)))
    by_source = ours_table.group_by(s.SOURCE).aggregate([([], "count_all")]).to_pylist()
    assert answer["by_source"] == {r[s.SOURCE]: r["count_all"] for r in by_source}
    [(_, stated, summed)] = answer["run_tokens"]
    assert stated == summed > 0
    for mode, exact in (("exact", True), ("ann", False)):
        metric, want = ours(store, vectors, exact)
        assert answer["metric"] == metric
        same_top_k(answer[mode], metric, want)
    print(answer["versions"], "Lance storage version", answer["storage_version"])


def hits_of(store_dir: Path, vectors: list[list[float]], **options) -> list[list[tuple[str, int, float]]]:
    target = SearchTarget.open(LanceStore(str(store_dir)), None)
    options = SearchOptions(k=K, **options)
    found = [search(target.table, target.metric, np.array(v), None, options, has_fts=False) for v in vectors]
    return [[(h.doc_id, h.chunk_index, h.score) for h in hits] for hits in found]


def without_ann_index(store: Path, to: Path) -> Path:
    """A copy of the store as one below index.ann_min_rows is: no vector index, every search exact."""
    shutil.copytree(store, to)
    table = lancedb.connect(str(to)).open_table("chunks")
    for index in table.list_indices():
        if index.columns == [s.VECTOR]:
            table.drop_index(index.name)
    return to


def test_langchain_and_llamaindex_open_the_table_as_their_docs_show_and_return_our_hits_and_metadata(store, tmp_path):
    """LangChain's and LlamaIndex's LanceDB stores, given the table's name (LangChain the table's metric, LlamaIndex
    a refine_factor), return jobs.query's top k with its scores (LlamaIndex's exp(-distance)), our metadata, and
    filter on it. LangChain cannot re-rank: through an ANN index it returns the index's own top k."""
    table = lancedb.connect(str(store)).open_table("chunks")
    vectors = queries(table)
    rows = {(r[s.DOC_ID], r[s.CHUNK_INDEX]): r for r in table.to_arrow().drop_columns([s.VECTOR]).to_pylist()}
    doc = "d3"
    for db, indexed in ((store, True), (without_ann_index(store, tmp_path / "exact"), False)):
        answer = answer_of([str(READERS_PY), "framework_readers.py", str(db), str(K), doc], vectors)
        query_hits = hits_of(db, vectors)  # jobs.query's: re-ranked through an index, exact without one
        index_hits = hits_of(db, vectors, refine_factor=None) if indexed else query_hits
        # LlamaIndex names no metric: LanceDB uses the index's (dot, distance 1 - score), else l2 (2 - 2 score here)
        llama_distance = 1 if indexed else 2
        for name, want, score_of in (
            ("llamaindex", query_hits, lambda score, n=llama_distance: math.exp(-n * (1 - score))),
            ("langchain", index_hits, lambda score: score),
        ):
            for got, expected in zip(answer[name], want, strict=True):
                assert [(d, c) for d, c, *_ in got] == [(d, c) for d, c, _ in expected], (name, indexed)
                assert [g[2] for g in got] == pytest.approx([score_of(e[2]) for e in expected], abs=1e-5)
                for doc_id, chunk_index, _, metadata in got:
                    row = rows[(doc_id, chunk_index)]
                    assert {k: row[k] for k in s.METADATA_FIELDS if k in metadata} == {
                        k: v for k, v in metadata.items() if k in s.METADATA_FIELDS
                    }
                    assert set(metadata) >= set(s.METADATA_FIELDS) - {s.DOC_ID}  # LlamaIndex keeps doc_id as ref
                    assert metadata.get("id", row[s.CHUNK_ID]) == row[s.CHUNK_ID]
        in_doc = sum(1 for d, _ in rows if d == doc)
        for name in ("langchain_filtered", "llamaindex_filtered"):
            assert {d for d, *_ in answer[name]} == {doc} and len(answer[name]) == min(K, in_doc), name
