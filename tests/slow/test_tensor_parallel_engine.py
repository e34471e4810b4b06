"""Tensor parallelism as the engine actor runs it, on vLLM's CPU build: the engine's own arguments (the `mp`
executor, its workers spawned inside the actor) give the vectors of one rank, and killing the actor leaves no
worker process behind."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline import schema as s
from pipeline.run.in_process import planned_documents
from pipeline.settings import InputSettings, LoggingSettings, Settings
from pipeline.stages.chunk_step import ChunkStep
from pipeline.stages.chunking import Chunker
from pipeline.stages.tokenizer import load_tokenizer
from tests.support.plans import plan_on_one_node

pytestmark = pytest.mark.slow


def children(pid: int) -> set[int]:
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(proc.name))
    return found


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists()}


@pytest.fixture(scope="module")
def chunks(minilm_path, sample_texts, tmp_path_factory) -> tuple[pa.Table, object]:
    settings = Settings(
        model={
            "path": str(minilm_path),
            "device": "cpu",
            "dtype": "float32",
            "enforce_eager": True,
            "gpu_memory_utilization": 0.1,
        }
    )
    plan = plan_on_one_node(settings, 2, gpus=0, cpus=2)
    shard = tmp_path_factory.mktemp("in") / "docs.jsonl"
    shard.write_text("\n".join(json.dumps({"id": f"d{i}", "text": t}) for i, t in enumerate(sample_texts[:3])))
    docs = planned_documents(InputSettings(paths=[str(shard)]), plan.chunk.fingerprint)
    chunked = ChunkStep(Chunker(load_tokenizer(minilm_path), plan.chunk))(docs)
    return chunked.filter(pa.compute.is_valid(chunked.column(s.CHUNK_ID))).slice(0, 24), plan


def test_a_tensor_parallel_engine_in_an_actor_gives_one_ranks_vectors_and_leaves_no_process(ray_local, chunks):
    from pipeline.run.ray.engines import EngineActor, EngineRun

    batch, plan = chunks
    vectors, workers = {}, {}
    for tp in (1, 2):
        spec = replace(plan.engine, tensor_parallel_size=tp, cpu_threads=2)
        actor = EngineActor.options(num_cpus=1).remote(0, LoggingSettings(), spec, EngineRun())
        out = ray_local.get(actor.embed.remote(batch), timeout=600)
        stats = json.loads(out.column(s.BATCH_STATS)[0].as_py())
        assert stats["engine"]["engine"] == "vllm"
        pid = int(stats["batch"]["actor"].split(":")[1].split()[0])
        workers[tp] = {c for c in children(pid) if "VLLM::Worker" in Path(f"/proc/{c}/cmdline").read_text()}
        vectors[tp] = np.asarray(out.column(s.VECTOR).to_pylist(), dtype=np.float64)
        ray_local.kill(actor)
        deadline = time.monotonic() + 30
        while alive({pid, *workers[tp]}) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not alive({pid, *workers[tp]}), f"left behind after ray.kill: {alive({pid, *workers[tp]})}"
    assert (len(workers[1]), len(workers[2])) == (0, 2)  # TP 1 runs in the actor; TP 2 spawned one worker per rank
    one, two = vectors[1], vectors[2]
    assert one.shape == two.shape and one.shape[0] == batch.num_rows
    cos = (one * two).sum(1) / np.linalg.norm(one, axis=1) / np.linalg.norm(two, axis=1)
    assert cos.min() >= 0.9999, cos.min()
