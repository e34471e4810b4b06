"""Nothing lost, nothing twice, on real Ray with the stand-in engine: real driver processes that kill themselves at
named points of the run (deterministic faults: pipeline/runtime/faults.py), a write task and an engine actor
killed at their Nth call, a second job on a store another holds, SIGTERM to the driver, and an engine that cannot
start; each store checked against a clean run. The same kill and resume with the real engine:
tests/slow/test_kill_and_resume.py."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import lancedb
import pyarrow as pa
import pytest

from pipeline import schema as s
from pipeline.run.in_process import InProcessExecutor
from pipeline.run.ingest import run_ingest
from pipeline.schema import KEY_COLUMNS
from pipeline.settings import load_settings
from pipeline.stages.fates import complete_documents
from tests.fakes import BrokenEngine, FakeEmbedder
from tests.job_process import REPO, IngestProcess

pytestmark = pytest.mark.ray
DOCS = 120


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sample_texts) -> Path:
    """DOCS documents in 3 shards: 16 groups of 16 chunks and more."""
    root = tmp_path_factory.mktemp("corpus")
    texts = [sample_texts[i % 36] + f"\n\nCopy {i}." for i in range(DOCS)]
    for shard in range(3):
        docs = texts[shard::3]
        (root / f"part-{shard}.jsonl").write_text(
            "".join(json.dumps({"id": f"s{shard}-{i}", "text": t}) + "\n" for i, t in enumerate(docs))
        )
    return root


def job_flags(model: Path, corpus: Path, db: Path, engine: str = "StandInEngine") -> list[str]:
    return [
        *("--model-path", str(model), "--model.name", "tiny", "--model.embedder", f"tests.fakes:{engine}"),
        *("--chunk-tokens", "128", "--inputs", str(corpus), "--db", str(db), "--no-index.after-run"),
        *("--run.commit-rows", "16", "--run.batch-rows", "8"),
    ]


def stand_in_job(model: Path, corpus: Path, db: Path, engine: str = "StandInEngine", **faults) -> IngestProcess:
    return IngestProcess(job_flags(model, corpus, db, engine), **faults)


def chunks(db: Path) -> pa.Table:
    return lancedb.connect(str(db)).open_table("chunks").to_arrow()


def runs(db: Path) -> list[dict]:
    return lancedb.connect(str(db)).open_table("runs").to_arrow().sort_by("started_at").to_pylist()


@pytest.fixture(scope="module")
def clean(tiny_model_path, corpus, tmp_path_factory) -> pa.Table:
    """The store a clean run leaves: the job's own settings run in this process, with the stand-in engine's vectors
    (the fake engine at the model's width). Each Ray job's store below is compared with it, so the Ray executor is
    also held to the in-process one."""
    db = tmp_path_factory.mktemp("clean") / "db"
    settings = load_settings(REPO / "conf/local.toml", job_flags(tiny_model_path, corpus, db))
    width = json.loads((tiny_model_path / "config.json").read_text())["hidden_size"]
    run_ingest(settings, InProcessExecutor(FakeEmbedder(dim=width)))
    table = chunks(db)
    assert table.num_rows > 3 * DOCS
    return table


def assert_same_as_clean(db: Path, clean: pa.Table) -> None:
    table = chunks(db)
    ids = table.column(s.CHUNK_ID).to_pylist()
    assert len(ids) == len(set(ids)), "duplicate chunks"
    assert set(ids) == set(clean.column(s.CHUNK_ID).to_pylist())
    got = {r[s.CHUNK_ID]: r[s.VECTOR] for r in table.select([s.CHUNK_ID, s.VECTOR]).to_pylist()}
    want = {r[s.CHUNK_ID]: r[s.VECTOR] for r in clean.select([s.CHUNK_ID, s.VECTOR]).to_pylist()}
    assert max(max(abs(a - b) for a, b in zip(got[k], want[k], strict=True)) for k in want) < 1e-6


def test_drivers_killed_then_one_held_refusing_a_second_and_ended_by_sigterm_then_a_rerun_equals_one_clean_run(
    tiny_model_path, corpus, clean, tmp_path
):
    """One store through every way a driver stops early, then one rerun:
    - SIGKILL before its first commit, then SIGKILL after its third: each leaves its row running, until the next run
      marks it interrupted;
    - the next run is held right after its third commit; a second job on its store is refused; then SIGTERM, as a
      spot instance's notice or Kubernetes deleting the pod sends it: it stops within the grace period (30 s,
      Kubernetes' default), records why and what stayed committed, and releases the store's lock;
    - the rerun starts at once, embeds only what no run committed whole, and the store equals one clean run."""
    db = tmp_path / "db"
    for n, fault in enumerate(("store.read=kill@1", "commit.after_group=kill@3")):
        stand_in_job(tiny_model_path, corpus, db, faults=fault, faults_dir=tmp_path / f"f{n}").died()
    assert chunks(db).num_rows > 0, "the last kill came after three commits"
    job = stand_in_job(tiny_model_path, corpus, db, faults="commit.after_group=wait@3", faults_dir=tmp_path / "f2")
    job.held_at("commit.after_group", 3)
    second = stand_in_job(tiny_model_path, corpus, db)
    assert second.ended(timeout_s=120) == 2
    assert "another ingestion run" in "".join(second.stderr)
    signalled = time.monotonic()
    job.proc.send_signal(signal.SIGTERM)
    assert job.ended(timeout_s=60) == 1
    stopped_s = time.monotonic() - signalled
    assert stopped_s < 30, (stopped_s, "".join(job.stderr[-20:]))
    assert "interrupted by SIGTERM" in job.stderr[-1] and "a rerun resumes from there" in job.stderr[-1]
    stored = chunks(db)
    *_, termed = runs(db)
    assert termed["status"] == "interrupted" and termed["error"].startswith("interrupted by SIGTERM")
    its_rows = stored.column(s.RUN_ID).to_pylist().count(termed["run_id"])
    assert termed["groups"] == 3 and termed["chunks"] == its_rows  # the row counts what stayed committed
    # Documents whose every chunk landed before the rerun; a group may also hold only part of a document.
    whole_before = len(complete_documents(stored.select(KEY_COLUMNS), stored.column(s.CHUNKING)[0].as_py()))
    started = time.monotonic()
    rerun = stand_in_job(tiny_model_path, corpus, db)
    assert rerun.wait_for("run_planned", timeout_s=120) and time.monotonic() - started < 120  # no lock to wait out
    out = rerun.finish()
    assert_same_as_clean(db, clean)
    history = runs(db)
    assert [r["status"] for r in history] == ["interrupted", "interrupted", "interrupted", "succeeded"]
    last = history[-1]
    assert last["skipped"] == whole_before, "documents committed before the rerun were embedded again"
    assert last["docs_in"] == last["docs"] + last["skipped"] + last["rejected"] == DOCS
    assert "unchanged" in out


def test_a_killed_engine_actor_and_a_write_task_killed_after_writing_cost_nothing_twice(
    tiny_model_path, corpus, clean, tmp_path
):
    """The engine's process dies at its fourth call (Ray restarts it, the feeder hands its batch on), and the second
    write task dies after writing its fragments and before sending its record (Ray retries the task, the retry's
    fragments are committed, the dead attempt's files stay orphans for maintenance)."""
    db, faults = tmp_path / "db", tmp_path / "f"
    killing = "engine.before_embed=kill@4,write.after_fragments=kill@2"
    stand_in_job(tiny_model_path, corpus, db, faults=killing, faults_dir=faults).finish()
    assert len(list(faults.glob("write.after_fragments.*"))) > 2, "the killed write task was not retried"
    assert_same_as_clean(db, clean)
    [run] = runs(db)
    assert run["status"] == "succeeded" and run["docs_in"] == DOCS and run["engine_restarts"] == 1
    written = list((db / "chunks.lance" / "data").iterdir())
    assert len(written) > run["groups"], "the dead attempt's fragments were not written"


def test_an_engine_that_cannot_start_fails_the_job_with_what_the_engine_said(tiny_model_path, corpus, tmp_path):
    db = tmp_path / "db"
    job = stand_in_job(tiny_model_path, corpus, db, engine="BrokenEngine")
    assert job.ended() == 1
    # what the engine said, not Ray Data's "failed after retries"
    said = job.stderr[-1]
    assert said.startswith("error: an engine could not start: ") and BrokenEngine.MESSAGE in said
    assert "1 of 1 engines lost, 0 left, run.min_engines=1" in said  # after Ray's restarts, each a fresh start
    [run] = runs(db)
    assert run["status"] == "failed" and "EngineError" in run["error"] and BrokenEngine.MESSAGE in run["error"]
