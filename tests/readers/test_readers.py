"""The store as other readers open it, each in an environment of its own with nothing of this project installed
(`scripts/readers_env.sh`, which `make test-all` runs): LanceDB's Node client, and DuckDB, Polars and LanceDB's
Python client at their own versions. Each reads the metric from the chunks table's own metadata and returns the top
k this project's search returns (exact, and through the ANN index re-ranked), with the same scores; DuckDB and
Polars count what the store holds and the runs' tokens add up. The store is made by the run itself, in this
process, with a fake engine at the packaged model's width, pushed past a small index.ann_min_rows."""

from __future__ import annotations

import json
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
