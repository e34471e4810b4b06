"""One start for the run, its estimate, its dry run and the benchmark: for the same settings and cluster they build the
same plan (here on a cluster of two 8-GPU nodes that only the plan sees, and on one CPU node), with its memory
verdict, and a GPU run on a cluster without GPUs is refused the same way by all of them."""

from __future__ import annotations

import json

import pytest

from benchmarks.runner import engine_plan
from pipeline.errors import ConfigError
from pipeline.plan.estimate import Sample
from pipeline.plan.placement import Cluster, Node
from pipeline.run.dry_run import dry_run
from pipeline.run.estimate import run_estimate
from pipeline.run.in_process import InProcessExecutor
from pipeline.run.ingest import run_ingest
from pipeline.settings import Settings
from tests.fakes import FakeEmbedder

pytestmark = pytest.mark.unit

H100 = {"gpu_name": "NVIDIA H100 80GB HBM3", "gpu_memory_bytes": 80 * 2**30, "host_memory_bytes": 512 * 2**30}
GPU_NODES = Cluster(tuple(Node(f"node{i}", f"10.0.0.{i}", 32.0, 8.0, **H100) for i in range(2)))
CPU_NODE = Cluster.one_node(0, 4, host_memory_bytes=16 * 2**30)


class Watching(InProcessExecutor):
    """The in-process executor on a cluster the test describes, noting each plan it is given."""

    def __init__(self, cluster: Cluster):
        super().__init__(FakeEmbedder(dim=16), cluster)
        self.plans = []

    def engines(self, plan, settings, cluster, run_id):
        self.plans.append(plan)
        return super().engines(plan, settings, cluster, run_id)

    def tally(self, settings, plan, inputs, tokenizer, keys, sample):
        self.plans.append(plan)
        return super().tally(settings, plan, inputs, tokenizer, keys, sample)


@pytest.fixture
def corpus(tmp_path, sample_texts):
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "a.jsonl").write_text(
        "".join(json.dumps({"id": f"d{i}", "text": sample_texts[i]}) + "\n" for i in range(4))
    )
    return root


def settings(corpus, db, minilm_path, device: str) -> Settings:
    return Settings(
        input={"paths": [str(corpus)]},
        model={"path": str(minilm_path), "name": "minilm", "device": device, "max_num_batched_tokens": 4096},
        store={"uri": str(db)},
        run={"engines_per_device": 1, "batch_rows": 8, "commit_rows": 16},
        index={"after_run": False},
    )


@pytest.mark.parametrize(("cluster", "device"), [(GPU_NODES, "auto"), (CPU_NODE, "cpu")], ids=["gpus", "cpu"])
def test_the_run_the_estimate_the_dry_run_and_the_benchmark_plan_alike(cluster, device, corpus, tmp_path, minilm_path):
    s = settings(corpus, tmp_path / "db", minilm_path, device)
    ran, estimated = Watching(cluster), Watching(cluster)
    run_ingest(s, ran)
    run_estimate(s, Sample(1.0, 1), estimated)  # every piece: a path-dependent draw could keep none
    dry, _ = dry_run(s, Watching(cluster), "the test's cluster")
    bench = engine_plan(s, Watching(cluster))
    [plan] = ran.plans
    assert estimated.plans == [plan] and dry.plan == plan and bench == plan
    assert plan.memory is not None and plan.memory.fits is not False
    assert plan.engine.device == ("cuda" if cluster is GPU_NODES else "cpu")
    assert plan.actors == (16 if cluster is GPU_NODES else 1)


def test_a_gpu_run_on_a_cluster_without_gpus_is_refused_alike(corpus, tmp_path, minilm_path):
    s = settings(corpus, tmp_path / "db", minilm_path, "cuda")
    starts = {
        "run": lambda: run_ingest(s, Watching(CPU_NODE)),
        "estimate": lambda: run_estimate(s, None, Watching(CPU_NODE)),
        "dry run": lambda: dry_run(s, Watching(CPU_NODE), "the test's cluster"),
        "benchmark": lambda: engine_plan(s, Watching(CPU_NODE)),
    }
    for name, start in starts.items():
        with pytest.raises(ConfigError, match=r"model\.device = cuda but this machine has no GPU"):
            start()
        assert not (tmp_path / "db" / "runs.lance").exists(), name
