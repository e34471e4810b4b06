"""The GPU path without a GPU: a Ray cluster of nodes started with logical GPUs (`ray start --num-gpus`), on which
Ray places bundles and sets CUDA_VISIBLE_DEVICES exactly as on GPU nodes, and the ingestion job as a user runs it
(`python -m jobs.ingest --config conf/gpu.toml`, joining the cluster through RAY_ADDRESS) with a stand-in engine
that records what Ray gave it (tests.fakes.RecordingEngine). The nodes answer the planner's device probe through
a stand-in `nvidia-smi` on their PATH (an H100's name and memory); the driver's PATH has none."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import lancedb
import pytest

from pipeline.runtime.faults import FAULTS_DIR_ENV, FAULTS_ENV
from tests.fakes import H100_MIB, RECORDS_ENV, gpu_node_path
from tests.job_process import REPO, job_command
from tests.local_cluster import BIN, LocalCluster

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    records = tmp_path_factory.mktemp("engine-records")
    env = {"PATH": gpu_node_path(tmp_path_factory.mktemp("fake-bin")), RECORDS_ENV: str(records)}
    nodes = LocalCluster("gpu", env)
    try:
        nodes.add_node(cpus=6, gpus=1)
        nodes.add_node(cpus=6, gpus=1)
        nodes.records = records
        yield nodes
    finally:
        nodes.stop()
        shutil.rmtree(nodes.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sample_texts) -> Path:
    path = tmp_path_factory.mktemp("corpus")
    lines = [json.dumps({"id": f"d{i}", "text": t}) for i, t in enumerate(sample_texts[:16])]
    (path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    return path


def ingest(cluster, corpus: Path, db: Path, model: Path, *extra: str, timeout: float = 600, **env_vars: str):
    """The job on the GPU settings, joining the cluster; returns the process, its seconds and the engines' records."""
    for old in cluster.records.iterdir():
        old.unlink()
    args = job_command(
        "jobs.ingest",
        "--model-path",
        str(model),
        "--model.name",
        "tiny",
        "--model.embedder",
        "tests.fakes:RecordingEngine",
        "--inputs",
        str(corpus),
        "--db",
        str(db),
        "--no-index.after-run",
        "--run.batch-rows",
        "4",
        "--run.chunk-actors",  # the FLOP rule would feed an H100 with more than this 2-core machine runs
        "1",
        *extra,
        config="conf/gpu.toml",
    )
    env = cluster.job_env(PATH=f"{BIN}:{os.environ['PATH']}", **env_vars)  # the driver's PATH: no nvidia-smi
    started = time.monotonic()
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    records = [json.loads(p.read_text()) for p in sorted(cluster.records.iterdir())]
    return proc, time.monotonic() - started, records


def by_gpu(records: list[dict]) -> dict[tuple[str, tuple[str, ...]], list[dict]]:
    groups = defaultdict(list)
    for record in records:
        groups[(record["node"], tuple(record["gpu_ids"]))].append(record)
    return groups


def test_engines_share_each_gpu_as_the_probe_and_the_rule_decide_and_one_killed_mid_start_gives_its_gpu_back(
    cluster, corpus, tiny_model_path, tmp_path
):
    """A tiny model leaves an H100 idle: 2 engines (the cap) share each of the 2 GPUs, and start one after another.
    The first engine to start is killed while it holds its GPU's start gate (a fault at engine.start): the gate
    sees its holder restarting and lets its neighbour start at once, not after run.engine_start_timeout_s; the
    restarted engine starts after it. No two starts on a GPU overlap."""
    faults = {FAULTS_ENV: "engine.start=kill@1", FAULTS_DIR_ENV: str(tmp_path / "faults")}
    proc, seconds, records = ingest(
        cluster,
        corpus,
        tmp_path / "db",
        tiny_model_path,
        "--run.max-engines-per-device",
        "2",
        "--run.engine-start-timeout-s",
        "240",
        **faults,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert len(list((tmp_path / "faults").glob("engine.start.*"))) == 5  # four engines, one of them twice
    assert len(records) == 4 and seconds < 180  # the neighbour did not wait out the 240 s start bound
    groups = by_gpu(records)
    assert len(groups) == 2 and all(len(g) == 2 for g in groups.values()), groups.keys()
    assert len({node for node, _ in groups}) == 2
    for (_, gpu_ids), engines in groups.items():
        assert len(gpu_ids) == 1
        for record in engines:
            assert record["cuda_visible_devices"] == gpu_ids[0]
            assert record["assigned"]["GPU"] == pytest.approx(0.5)
            assert record["engine_kwargs"]["gpu_memory_utilization"] == pytest.approx(0.45)
            assert record["engine_kwargs"]["distributed_executor_backend"] == "uni"
        first, second = sorted(engines, key=lambda r: r["began"])
        assert first["ended"] <= second["began"], "two engines on one GPU started at once"
    db = lancedb.connect(str(tmp_path / "db"))
    [run] = db.open_table("runs").to_arrow().to_pylist()
    resolved = json.loads(run["settings"])["resolved"]
    assert resolved["device_memory_bytes"] == H100_MIB * 2**20  # read on the GPU nodes; the driver has no GPU
    assert (resolved["engines_per_device"], resolved["actors"], resolved["bundle"]) == (2, 4, {"CPU": 1, "GPU": 0.5})
    assert any("2 engines per GPU: a forward pass" in n for n in resolved["notes"])
    assert run["status"] == "succeeded" and run["engine_restarts"] == 1
    assert db.open_table("chunks").count_rows() == run["chunks"] > 0


def test_tensor_parallel_two_on_one_gpu_nodes_is_refused_within_a_minute(cluster, corpus, tiny_model_path, tmp_path):
    proc, seconds, records = ingest(cluster, corpus, tmp_path / "db", tiny_model_path, "--tensor-parallel-size", "2")
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert seconds < 60
    error = proc.stderr.strip().splitlines()[-1]
    assert "no node can hold an engine: each needs 2 GPUs on one node" in error, error
    assert error.count(" 1, ") + error.count(" 1;") >= 2  # each node named with its one GPU
    assert "lower model.tensor_parallel_size to at most 1" in error
    assert records == [] and not (tmp_path / "db" / "runs.lance").exists()


def test_a_gpu_held_by_another_job_ends_the_run_within_its_bound_naming_ray_status(
    cluster, corpus, tiny_model_path, tmp_path
):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_GPU],
        cwd=REPO,
        env=cluster.job_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        proc, seconds, records = ingest(
            cluster,
            corpus,
            tmp_path / "db",
            tiny_model_path,
            "--run.engines-per-device",
            "1",
            "--run.placement-timeout-s",
            "20",
        )
    finally:
        holder.communicate("stop\n", timeout=60)
    assert proc.returncode == 1, proc.stderr[-4000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert "Ray could not place the 2 engines (2 bundles of {CPU: 1, GPU: 1}) within 20 s" in error, error
    assert "`ray status`" in error and "Nothing was embedded or recorded" in error
    assert seconds < 20 + 60  # the bound, and the job's start
    assert records == []


HOLD_A_GPU = """
import sys, ray
ray.init()
@ray.remote(num_gpus=1, num_cpus=0)
class Holder:
    def ready(self):
        return True
holder = Holder.remote()
ray.get(holder.ready.remote())
print("held", flush=True)
sys.stdin.readline()
"""


@pytest.fixture(scope="module")
def grown(cluster):
    """The same cluster with a third node of two GPUs."""
    cluster.add_node(cpus=6, gpus=2)
    return cluster


def test_tensor_parallel_one_puts_one_engine_on_every_gpu_of_every_node(grown, corpus, tiny_model_path, tmp_path):
    proc, _, records = ingest(grown, corpus, tmp_path / "db", tiny_model_path, "--run.engines-per-device", "1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    groups = by_gpu(records)
    assert len(records) == 4 and all(len(g) == 1 for g in groups.values())  # 1 + 1 + 2 GPUs
    nodes = defaultdict(set)
    for node, gpu_ids in groups:
        nodes[node] |= set(gpu_ids)
    assert sorted(len(ids) for ids in nodes.values()) == [1, 1, 2]
    assert all(r["assigned"]["GPU"] == 1 for r in records)


def test_tensor_parallel_two_gets_both_gpus_of_the_one_node_that_has_two(grown, corpus, tiny_model_path, tmp_path):
    proc, _, records = ingest(grown, corpus, tmp_path / "db", tiny_model_path, "--tensor-parallel-size", "2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    [engine] = records  # the one-GPU nodes hold none
    assert len(engine["gpu_ids"]) == 2 and engine["cuda_visible_devices"] == ",".join(engine["gpu_ids"])
    assert (engine["assigned"]["GPU"], engine["assigned"]["CPU"]) == (2, 3)  # the engine and its 2 worker processes
    kwargs = engine["engine_kwargs"]
    assert (kwargs["tensor_parallel_size"], kwargs["distributed_executor_backend"]) == (2, "mp")


def test_vllm_would_choose_its_ray_executor_inside_an_engines_placement_and_the_arguments_override_it(grown):
    """vLLM 0.32's own choice, reproduced where an engine runs: in an actor in a placement group, world size 2."""
    proc = subprocess.run(
        [sys.executable, "-c", VLLM_CHOICE],
        cwd=REPO,
        env=grown.job_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "default=ray ours=mp", proc.stdout


VLLM_CHOICE = """
import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from pipeline.engine.vllm import executor_backend

@ray.remote
class PlacedLikeAnEngine:
    def backends(self, ours):
        from vllm.config import ParallelConfig
        default = ParallelConfig(tensor_parallel_size=2).distributed_executor_backend
        chosen = ParallelConfig(tensor_parallel_size=2, distributed_executor_backend=ours).distributed_executor_backend
        return default, chosen

ray.init()
group = ray.util.placement_group([{"CPU": 1, "GPU": 2}])
ray.get(group.ready(), timeout=120)
actor = PlacedLikeAnEngine.options(
    num_cpus=1, num_gpus=2, scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0)
).remote()
default, chosen = ray.get(actor.backends.remote(executor_backend(2)), timeout=500)
print(f"default={default} ours={chosen}")
"""


def test_gpu_engines_on_a_cluster_without_gpus_ask_the_autoscaler_then_refuse(corpus, tiny_model_path, tmp_path):
    """A cluster scaling from zero GPU workers: the job asks Ray's autoscaler for the engines' bundles that cover
    run.gpus (`ray status` shows the request while it waits), withdraws the request, and refuses after its bound."""
    cpu_only = LocalCluster("nogpu", {})
    try:
        cpu_only.add_node(cpus=2)
        cpu_only.records = tmp_path / "records"
        cpu_only.records.mkdir()
        status = []

        def watch() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not any("4 from request_resources" in s for s in status):
                status.append(ray_status(cpu_only))
                time.sleep(2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        proc, seconds, _ = ingest(
            cpu_only, corpus, tmp_path / "db", tiny_model_path, "--run.placement-timeout-s", "10", "--run.gpus", "4"
        )
        watcher.join(timeout=5)
        after = ray_status_once(cpu_only, "From request_resources:\n (none)", within_s=30)
    finally:
        cpu_only.stop()
        shutil.rmtree(cpu_only.temp_dir, ignore_errors=True)
    assert proc.returncode == 2, proc.stderr[-4000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert "no node of the cluster has a GPU" in error and "asked Ray's autoscaler for 4 bundles" in error, error
    assert "waited 10 s" in error and seconds < 10 + 60
    asked = re.compile(r"From request_resources:\n \{[^}]*'GPU': 1(\.0)?[,}][^\n]*: 4 from request_resources\(\)")
    assert any(asked.search(s) for s in status), status[-1:]
    assert "From request_resources:\n (none)" in after  # not left to keep GPU nodes up


def ray_status_once(cluster, text: str, within_s: float) -> str:
    """`ray status` once it shows `text`, or its last reading: the autoscaler's monitor refreshes what it reports
    every few seconds, so a request withdrawn just now shows there a little later."""
    deadline = time.monotonic() + within_s
    while True:
        status = ray_status(cluster)
        if text in status or time.monotonic() > deadline:
            return status
        time.sleep(2)


def ray_status(cluster) -> str:
    proc = subprocess.run([str(BIN / "ray"), "status"], env=cluster.job_env(), capture_output=True, text=True)
    return proc.stdout
