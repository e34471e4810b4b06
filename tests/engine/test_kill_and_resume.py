"""Kill and resume with the real engine (vLLM's CPU build on a tiny model): a driver killed after its second commit,
then rerun, leaves the store a clean run leaves, vectors included. The same property at every point of the run, and
for killed engines and write tasks, with the stand-in engine: tests/ray/test_reliability.py."""

from __future__ import annotations

import json

import lancedb
import pytest

from pipeline import schema as s
from tests.job_process import IngestProcess, stop_started_jobs

pytestmark = pytest.mark.engine
DOCS = 24


@pytest.fixture(autouse=True)
def no_job_outlives_its_test():
    yield
    stop_started_jobs()


def engine_job(model, corpus, db, **faults) -> IngestProcess:
    args = [
        *("--model-path", str(model), "--model.name", "tiny", "--model.enforce-eager", "true"),
        *("--model.gpu-memory-utilization", "0.1", "--chunk-tokens", "128"),
        *("--inputs", str(corpus), "--db", str(db), "--no-index.after-run"),
        *("--run.commit-rows", "16", "--run.batch-rows", "8"),
    ]
    return IngestProcess(args, **faults)


def stored(db) -> dict[str, list[float]]:
    table = lancedb.connect(str(db)).open_table("chunks").to_arrow()
    ids = table.column(s.CHUNK_ID).to_pylist()
    assert len(ids) == len(set(ids)), "duplicate chunks"
    return dict(zip(ids, table.column(s.VECTOR).to_pylist(), strict=True))


def test_a_driver_killed_after_its_second_commit_then_rerun_equals_a_clean_run(
    tiny_model_path, sample_texts, tmp_path
):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    lines = [json.dumps({"id": f"d{i}", "text": sample_texts[i % 36] + f"\n\nCopy {i}."}) for i in range(DOCS)]
    (corpus / "a.jsonl").write_text("\n".join(lines) + "\n")
    engine_job(tiny_model_path, corpus, tmp_path / "clean").finish()
    clean = stored(tmp_path / "clean")
    db = tmp_path / "db"
    engine_job(tiny_model_path, corpus, db, faults="commit.after_group=kill@2", faults_dir=tmp_path / "f").died()
    assert 0 < len(stored(db)) < len(clean)
    engine_job(tiny_model_path, corpus, db).finish()
    resumed = stored(db)
    assert resumed.keys() == clean.keys()
    assert max(max(abs(a - b) for a, b in zip(resumed[k], clean[k], strict=True)) for k in clean) < 1e-4
    history = lancedb.connect(str(db)).open_table("runs").to_arrow().sort_by("started_at").to_pylist()
    assert [r["status"] for r in history] == ["interrupted", "succeeded"]
    assert history[-1]["skipped"] > 0 and history[-1]["docs_in"] == DOCS
