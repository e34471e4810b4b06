"""The job where users run it: `ray job submit` to a running two-node Ray cluster (a head and a second node
started on this machine with resources of their own), shards and the LanceDB store in an S3-compatible bucket
(moto's server), then a second scheduled submission after new files arrive that embeds only those."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lancedb
import pytest
import yaml

from tests.job_process import REPO, job_env

pytestmark = [pytest.mark.ray, pytest.mark.engine]
BUCKET = "embedpipe-demo"
BIN = Path(sys.executable).parent


def free_port(low: int = 6400, high: int = 6999) -> int:
    for port in range(low, high):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise RuntimeError("no free port")


def ray_cli(*args: str, env: dict, timeout: float = 180) -> subprocess.CompletedProcess:
    for _ in range(12):  # right after `ray start` the job agent may not be registered yet
        proc = subprocess.run(
            [str(BIN / "ray"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )
        if "No available agent to submit job" not in proc.stderr + proc.stdout:
            break
        time.sleep(5)
    assert proc.returncode == 0, f"ray {' '.join(args)}:\n{proc.stderr[-1500:]}\n{proc.stdout[-5000:]}"
    return proc


def stop_cluster(temp_dir: Path) -> None:
    """Stop only the processes of this cluster: those whose command line names its temp dir, then their workers."""
    mine = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(temp_dir) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    mine.append(int(proc.name))
            except OSError:
                continue
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in mine:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(3)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_server):
    temp_dir = Path("/tmp") / f"ray-it-{os.getpid()}"  # short: Ray's socket paths have a length limit
    env = job_env(
        **s3_server.env(), PATH=f"{BIN}:{os.environ['PATH']}", RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token"
    )
    port, dashboard = free_port(), free_port(8300, 8999)
    common = ["--num-cpus", "2", "--object-store-memory", str(256 * 2**20), "--temp-dir", str(temp_dir)]
    try:
        ray_cli(
            "start",
            "--head",
            "--port",
            str(port),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dashboard),
            "--include-dashboard",
            "true",
            "--disable-usage-stats",
            "--resources",
            '{"head_node": 1}',
            *common,
            env=env,
        )
        ray_cli("start", "--address", f"127.0.0.1:{port}", "--resources", '{"second_node": 1}', *common, env=env)
        yield {"address": f"http://127.0.0.1:{dashboard}", "env": env}
    finally:
        stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def put_docs(s3_server, names: list[str], texts: list[str]) -> None:
    client = s3_server.client()
    for name, chunk in zip(names, [texts[i : i + 6] for i in range(0, 6 * len(names), 6)], strict=False):
        body = "\n".join(json.dumps({"id": f"{name}-{i}", "text": t}) for i, t in enumerate(chunk)) + "\n"
        client.put_object(Bucket=BUCKET, Key=f"corpus/{name}.jsonl", Body=body.encode())


def runtime_env_file(cluster, tmp_path: Path) -> Path:
    """infra/runtime-env.yaml plus the object-store variables (a Secret's job on Kubernetes)."""
    runtime_env = yaml.safe_load((REPO / "infra/runtime-env.yaml").read_text())
    aws = {k: v for k, v in cluster["env"].items() if k.startswith("AWS_")}
    runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **aws}
    path = tmp_path / "runtime-env.yaml"
    path.write_text(yaml.safe_dump(runtime_env))
    return path


def submit(cluster, tmp_path: Path) -> str:
    path = runtime_env_file(cluster, tmp_path)
    proc = ray_cli(
        "job",
        "submit",
        "--address",
        cluster["address"],
        "--runtime-env",
        str(path),
        "--",
        "python",
        "-m",
        "jobs.ingest",
        "--config",
        "conf/cluster-cpu.toml",
        "--run.batch-rows",
        "4",
        "--run.commit-rows",
        "12",
        env=cluster["env"],
        timeout=900,
    )
    return proc.stdout


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
    batches = db.open_table("batches").to_arrow()
    nodes = {actor.split(":")[0] for actor in batches.column("actor").to_pylist()}
    assert len(nodes) == 2, f"engines ran on {nodes}"
    assert db.open_table("chunks").count_rows() == run["chunks"]
    assert len(json.loads(run["write_nodes"])) == 2, f"chunk fragments written on {run['write_nodes']} only"
    assert run["groups"] > 1 and run["record_bytes"] / run["chunks"] < 1000  # records only: a vector is 1,536 B
    assert s3_server.secret_key not in first_run  # credentials never reach the logs


def test_a_second_scheduled_submission_embeds_only_new_files(first_run, cluster, s3_server, sample_texts, tmp_path):
    put_docs(s3_server, ["part-4"], sample_texts[24:30])
    out = submit(cluster, tmp_path)
    assert "succeeded" in out.lower(), out[-3000:]
    runs = sorted(store(s3_server).open_table("runs").to_arrow().to_pylist(), key=lambda r: r["started_at"])
    second = runs[-1]
    assert (second["added"], second["skipped"], second["replaced"], second["docs"]) == (6, 24, 0, 6)
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert not any(k.endswith("embedpipe.lock") for k in keys)  # the lease went with the run


def test_two_submissions_at_once_do_not_interleave(first_run, cluster, s3_server, sample_texts, tmp_path):
    put_docs(s3_server, ["part-5"], sample_texts[30:36])
    runtime_env = tmp_path / "env.yaml"
    spec = yaml.safe_load((REPO / "infra/runtime-env.yaml").read_text())
    spec["env_vars"] = {
        **spec.get("env_vars", {}),
        **{k: v for k, v in cluster["env"].items() if k.startswith("AWS_")},
    }
    runtime_env.write_text(yaml.safe_dump(spec))
    args = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        cluster["address"],
        "--runtime-env",
        str(runtime_env),
        "--",
        "python",
        "-m",
        "jobs.ingest",
        "--config",
        "conf/cluster-cpu.toml",
    ]
    procs = [
        subprocess.Popen(
            args, cwd=REPO, env=cluster["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    refused = [o for o in outputs if "holds the store lock" in o]
    assert len(refused) == 1, [o[-2000:] for o in outputs]
    db = store(s3_server)
    runs = db.open_table("runs").to_arrow().to_pylist()
    assert sum(r["added"] == 6 and r["status"] == "succeeded" for r in runs) == 2  # part-4 earlier, part-5 now
    chunks = db.open_table("chunks").to_arrow()
    assert len(set(chunks.column("chunk_id").to_pylist())) == chunks.num_rows
    assert len(set(chunks.column("doc_id").to_pylist())) == 36
