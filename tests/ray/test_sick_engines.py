"""One sick GPU never ends the run: two nodes of one logical GPU each, the second's GPU bad (the stand-in engines
of tests/fakes.py read the node's `sick_gpu` resource), and the job on the GPU settings. An engine whose engine
raises (on every call, at its start, or at its restart) exits so that Ray restarts it, its batches go to the healthy
engine, and once Ray's restarts are spent it is lost: the run finishes on the other, stores every document once,
and its `runs` row and log say what was lost and why."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import lancedb
import pytest

from pipeline.run.ray.engines import ENGINE_RESTARTS
from tests.fakes import SICK_RESOURCE, BrokenEngine, RestartFailsEngine, SickGpuEngine, gpu_node_path
from tests.job_process import REPO, job_command
from tests.local_cluster import BIN, LocalCluster

pytestmark = pytest.mark.ray
DOCS = 24


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    nodes = LocalCluster("sick", {"PATH": gpu_node_path(tmp_path_factory.mktemp("fake-bin"))})
    try:
        nodes.add_node(cpus=3, gpus=1)
        nodes.add_node(cpus=3, gpus=1, resources=json.dumps({SICK_RESOURCE: 1}))
        yield nodes
    finally:
        nodes.stop()
        shutil.rmtree(nodes.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sample_texts) -> Path:
    path = tmp_path_factory.mktemp("corpus")
    lines = [json.dumps({"id": f"d{i}", "text": sample_texts[i % len(sample_texts)]}) for i in range(DOCS)]
    (path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    return path


def ingest(cluster, corpus: Path, db: Path, model: Path, engine: str) -> subprocess.CompletedProcess:
    args = job_command(
        *("jobs.ingest", "--model-path", str(model), "--model.name", "tiny"),
        *("--model.embedder", f"tests.fakes:{engine}"),
        *("--inputs", str(corpus), "--db", str(db), "--no-index.after-run", "--run.batch-rows", "4"),
        *("--run.commit-rows", "8", "--run.actors", "2", "--run.chunk-actors", "1"),
        config="conf/gpu.toml",
    )
    env = cluster.job_env(PATH=f"{BIN}:{os.environ['PATH']}")
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def assert_finished_on_the_healthy_engine(
    proc: subprocess.CompletedProcess, db: Path, said: str, lost: tuple[int, ...] = (1,)
) -> dict:
    assert proc.returncode == 0, proc.stderr[-4000:]
    store = lancedb.connect(str(db))
    [run] = store.open_table("runs").to_arrow().to_pylist()
    assert (run["status"], run["docs"], run["added"]) == ("succeeded", DOCS, DOCS)
    chunks = store.open_table("chunks").to_arrow()
    assert len(set(chunks.column("doc_id").to_pylist())) == DOCS
    assert len(set(chunks.column("chunk_id").to_pylist())) == chunks.num_rows == run["chunks"]
    assert len({a.split(":")[0] for a in store.open_table("batches").to_arrow().column("actor").to_pylist()}) == 1
    assert run["engines_lost"] in lost and run["engine_restarts"] >= 1
    failures = json.loads(run["engine_failures"])
    assert any(said in reason for reason in failures), failures
    assert "engines_lost_during_run" in proc.stderr
    return run


def test_an_engine_raising_on_every_call_is_restarted_and_the_run_finishes(cluster, corpus, tiny_model_path, tmp_path):
    """The sick engine is tried again after each restart, as long as the run lasts: lost once Ray's restarts are
    spent, or still restarting when a short run ends."""
    proc = ingest(cluster, corpus, tmp_path / "db", tiny_model_path, "SickGpuEngine")
    run = assert_finished_on_the_healthy_engine(proc, tmp_path / "db", SickGpuEngine.MESSAGE, lost=(0, 1))
    assert run["engine_restarts"] <= ENGINE_RESTARTS


def test_an_engine_that_cannot_start_is_lost_and_the_run_finishes(cluster, corpus, tiny_model_path, tmp_path):
    proc = ingest(cluster, corpus, tmp_path / "db", tiny_model_path, "NoStartEngine")
    assert_finished_on_the_healthy_engine(proc, tmp_path / "db", BrokenEngine.MESSAGE.removeprefix("ValueError: "))


def test_an_engine_whose_restart_fails_is_lost_and_the_run_finishes(cluster, corpus, tiny_model_path, tmp_path):
    proc = ingest(cluster, corpus, tmp_path / "db", tiny_model_path, "RestartFailsEngine")
    run = assert_finished_on_the_healthy_engine(proc, tmp_path / "db", RestartFailsEngine.MESSAGE)
    assert any(RestartFailsEngine.RESTART_MESSAGE in reason for reason in json.loads(run["engine_failures"]))
