"""The job where users run it: `ray job submit` to a running two-node Ray cluster (a head and a second node
started on this machine with resources of their own), shards and the LanceDB store in an S3-compatible bucket
(moto's server), with a real Prometheus scraping each node's Ray metrics port as a KubeRay cluster's would; then a
second scheduled submission after new files arrive that embeds only those, and a submission refused while another
holds the store. The stand-in engine, an engine per node: the real engine end to end is tests/engine/."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import lancedb
import pytest
import yaml

from pipeline.runtime.faults import FAULTS_DIR_ENV, FAULTS_ENV
from tests.job_process import REPO
from tests.local_cluster import BIN, LocalCluster, free_port, ray_cli
from tests.local_server import prometheus, query

pytestmark = pytest.mark.ray
BUCKET = "embedpipe-demo"


@pytest.fixture(scope="module")
def cluster(s3_server, tmp_path_factory):
    nodes = LocalCluster("it", s3_server.env(), dashboard=True)
    try:
        nodes.add_node(cpus=2, resources='{"head_node": 1}')
        nodes.add_node(cpus=2, resources='{"second_node": 1}')
        targets = [f"127.0.0.1:{port}" for port in nodes.metrics_ports]
        with prometheus(free_port(), targets, tmp_path_factory.mktemp("prometheus")) as scraper:
            yield {"address": nodes.dashboard, "env": nodes.env, "prometheus": scraper}
    finally:
        nodes.stop()
        shutil.rmtree(nodes.temp_dir, ignore_errors=True)


def put_docs(s3_server, names: list[str], texts: list[str]) -> None:
    client = s3_server.client()
    for name, chunk in zip(names, [texts[i : i + 6] for i in range(0, 6 * len(names), 6)], strict=False):
        body = "\n".join(json.dumps({"id": f"{name}-{i}", "text": t}) for i, t in enumerate(chunk)) + "\n"
        client.put_object(Bucket=BUCKET, Key=f"corpus/{name}.jsonl", Body=body.encode())


def runtime_env_file(cluster, tmp_path: Path, **env_vars: str) -> Path:
    """infra/runtime-env.yaml plus the object-store variables (a Secret's job on Kubernetes) and `env_vars`."""
    runtime_env = yaml.safe_load((REPO / "infra/runtime-env.yaml").read_text())
    aws = {k: v for k, v in cluster["env"].items() if k.startswith("AWS_")}
    runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **aws, **env_vars}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "runtime-env.yaml"
    path.write_text(yaml.safe_dump(runtime_env))
    return path


def submit_args(cluster, runtime_env: Path, *flags: str) -> list[str]:
    ingest = ["python", "-m", "jobs.ingest", "--config", "conf/cluster-cpu.toml"]
    ingest += ["--model.embedder", "tests.fakes:StandInEngine", "--run.batch-rows", "4", "--run.commit-rows", "4"]
    return ["job", "submit", "--address", cluster["address"], "--runtime-env", str(runtime_env), *flags, "--", *ingest]


def submit(cluster, tmp_path: Path) -> str:
    return ray_cli(*submit_args(cluster, runtime_env_file(cluster, tmp_path)), env=cluster["env"], timeout=900).stdout


def store(s3_server):
    return lancedb.connect(f"s3://{BUCKET}/lancedb", storage_options=s3_server.options())


@pytest.fixture(scope="module")
def first_run(cluster, s3_server, sample_texts, tmp_path_factory):
    s3_server.client().create_bucket(Bucket=BUCKET)
    put_docs(s3_server, ["part-0", "part-1", "part-2", "part-3"], sample_texts[:24])
    out = submit(cluster, tmp_path_factory.mktemp("submit"))
    return out


def test_job_spans_both_nodes_and_writes_to_the_bucket(first_run, s3_server):
    assert "succeeded" in first_run.lower(), first_run[-3000:]
    db = store(s3_server)
    [run] = db.open_table("runs").to_arrow().to_pylist()
    assert (run["status"], run["docs"], run["added"], run["rejected"]) == ("succeeded", 24, 24, 0)
    # two nodes of 2 CPUs, an engine on each, no fault: the run once stalled on this shape (issue 26)
    assert (run["engines_lost"], run["engine_restarts"], json.loads(run["lost_nodes"])) == (0, 0, [])
    batches = db.open_table("batches").to_arrow()
    nodes = {actor.split(":")[0] for actor in batches.column("actor").to_pylist()}
    assert len(nodes) == 2, f"engines ran on {nodes}"
    assert db.open_table("chunks").count_rows() == run["chunks"]
    assert len(json.loads(run["write_nodes"])) == 2, f"chunk fragments written on {run['write_nodes']} only"
    assert run["groups"] > 1 and run["record_bytes"] / run["chunks"] < 1000  # records only: a vector is 1,536 B
    assert s3_server.secret_key not in first_run  # credentials never reach the logs


def test_the_run_reports_live_metrics_that_prometheus_scrapes_from_rays_metrics_port(first_run, cluster, s3_server):
    [run] = store(s3_server).open_table("runs").to_arrow().to_pylist()
    label = f'store="s3://{BUCKET}/lancedb"'

    def seen(expr: str) -> dict[str, float]:
        """The largest value each series of `expr` took during the run, by its last label's value."""
        found = query(cluster["prometheus"], f"max_over_time(({expr})[15m:1s])")
        return {"/".join(r["metric"].values()): float(r["value"][1]) for r in found}

    assert seen(f"sum(ray_embedpipe_tokens_embedded_total{{{label}}})") == {"": run["tokens"]}
    assert seen(f"sum(ray_embedpipe_chunks_total{{{label}}})") == {"": run["chunks"]}
    assert seen(f"sum by (fate) (ray_embedpipe_documents_total{{{label}}})") == {"new": 24}
    busy = seen(f"sum by (engine) (ray_embedpipe_engine_busy_seconds_total{{{label}}})")
    assert len(busy) == 2 and all(v > 0 for v in busy.values()), busy  # an engine on each node
    assert sum(busy.values()) == pytest.approx(run["embed_s"], rel=1e-6)
    assert seen(f"sum(ray_embedpipe_commit_seconds_count{{{label}}})")[""] >= run["groups"]
    assert seen(f"max(ray_embedpipe_tokens_per_second{{{label}}})")[""] > 0
    status = seen(f"max by (status) (ray_embedpipe_run_status{{{label}}})")
    assert status["running"] == 1 and status["succeeded"] == 1 and status["failed"] == 0, status
    last = query(cluster["prometheus"], f'last_over_time(ray_embedpipe_run_status{{{label}, status="running"}}[15m])')
    assert [float(r["value"][1]) for r in last] == [0.0]  # over: no longer running


def test_a_second_scheduled_submission_embeds_only_new_files_and_one_sent_meanwhile_is_refused(
    first_run, cluster, s3_server, sample_texts, tmp_path
):
    """New files arrive and the next scheduled job is sent. It is held right after its first commit (a fault
    injected through its runtime environment), so a submission sent meanwhile meets the store's lease for certain;
    then the scheduled job finishes, having embedded only the new files, and leaves no lease behind."""
    put_docs(s3_server, ["part-4"], sample_texts[24:30])
    held = tmp_path / "faults"
    faults = {FAULTS_ENV: "commit.after_group=wait@1", FAULTS_DIR_ENV: str(held)}
    scheduled_env = runtime_env_file(cluster, tmp_path / "scheduled", **faults)
    started = ray_cli(*submit_args(cluster, scheduled_env, "--no-wait"), env=cluster["env"]).stdout
    job_id = re.search(r"Job '(raysubmit_\w+)' submitted successfully", started).group(1)
    deadline = time.monotonic() + 300
    while not (held / "commit.after_group.1").exists():
        assert time.monotonic() < deadline, "the scheduled job never committed"
        time.sleep(0.2)
    meanwhile = subprocess.run(
        [str(BIN / "ray"), *submit_args(cluster, runtime_env_file(cluster, tmp_path / "meanwhile"))],
        cwd=REPO,
        env=cluster["env"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    said = meanwhile.stdout + meanwhile.stderr
    assert meanwhile.returncode != 0, said[-2000:]
    assert "holds the store lock" in said and "error: another ingestion run" in said, said[-2000:]
    (held / "commit.after_group.go").touch()
    logs = ray_cli("job", "logs", "--address", cluster["address"], "--follow", job_id, env=cluster["env"], timeout=600)
    assert "Ingestion took" in logs.stdout, logs.stdout[-2000:]
    db = store(s3_server)
    runs = sorted(db.open_table("runs").to_arrow().to_pylist(), key=lambda r: r["started_at"])
    second = [r for r in runs if r["status"] == "succeeded"][-1]
    assert (second["added"], second["skipped"], second["replaced"], second["docs"]) == (6, 24, 0, 6)
    assert sum(r["status"] == "succeeded" for r in runs) == 2  # the refused submission stored nothing
    chunks = db.open_table("chunks").to_arrow()
    assert len(set(chunks.column("chunk_id").to_pylist())) == chunks.num_rows
    assert len(set(chunks.column("doc_id").to_pylist())) == 30
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert not any(k.endswith("embedpipe.lock") for k in keys)  # the lease went with the run
