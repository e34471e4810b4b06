"""The Ray adapter's own logic, without a cluster: which engine a feeder uses, what an engine actor reserves, how a
worker's failure reaches the driver, and that the chunk actor is the pure chunk step. The wiring itself runs in
tests/integration."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pyarrow as pa
import pytest
from ray.exceptions import RayTaskError

from pipeline import schema as s
from pipeline.errors import EngineError, InputRejected
from pipeline.local_executor import planned_documents
from pipeline.plan.job import plan_job
from pipeline.ray_stages import (
    ENGINE_ENV,
    ChunkActor,
    EngineFeeder,
    Engines,
    _pipeline_error,
    engine_cpus,
    engine_label,
)
from pipeline.settings import InputSettings, LoggingSettings, Settings
from pipeline.stages.chunk_step import ChunkStep
from pipeline.stages.chunking import Chunker
from pipeline.stages.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def plan(minilm_path):
    return plan_job(Settings(model={"path": str(minilm_path), "device": "cpu"}), 2, gpus=0, cpus=2)


@pytest.fixture(scope="module")
def planned(plan, sample_texts, tmp_path_factory) -> pa.Table:
    shard = tmp_path_factory.mktemp("in") / "s.jsonl"
    lines = [json.dumps({"id": f"doc{i}", "text": t}) for i, t in enumerate(sample_texts[:4])]
    shard.write_text("\n".join([*lines, json.dumps({"id": "blank", "text": " "})]))
    return planned_documents(InputSettings(paths=[str(shard)]), plan.chunk.fingerprint)


def test_the_chunk_actor_is_the_chunk_step_with_the_plans_chunking(plan, planned, minilm_path):
    tokenizer = load_tokenizer(minilm_path)
    out = ChunkActor(LoggingSettings(), plan.chunk, tokenizer)(planned)
    same = [s.CHUNK_ID, s.TOKEN_IDS, s.N_TOKENS, s.REJECT_REASON]
    assert out.select(same).equals(ChunkStep(Chunker(tokenizer, plan.chunk))(planned).select(same))
    assert pa.compute.max(out.column(s.N_TOKENS)).as_py() <= plan.chunk.max_tokens
    assert "blank" in out.filter(pa.compute.is_valid(out.column(s.REJECT_REASON))).column(s.DOC_ID).to_pylist()


def test_a_feeder_sends_to_the_engine_its_environment_names(monkeypatch):
    engines = ["e0", "e1", "e2"]
    monkeypatch.setenv(ENGINE_ENV, "4")
    assert EngineFeeder(engines).engine == "e1"
    monkeypatch.delenv(ENGINE_ENV)
    assert EngineFeeder(engines).engine == "e0"


def test_a_batch_without_chunks_passes_the_embed_stage_without_an_engine(plan, planned, minilm_path):
    chunks = ChunkStep(Chunker(load_tokenizer(minilm_path), plan.chunk))(planned)
    rejected = chunks.filter(pa.compute.is_null(chunks.column(s.CHUNK_ID)))
    assert rejected.num_rows == 1
    out = EngineFeeder([None], dim=384)(rejected)  # an engine call would fail on None
    assert out.column(s.VECTOR).null_count == 1 and out.column(s.REJECT_REASON).to_pylist() == ["empty_text"]


def test_feeders_take_the_engines_in_turn_each_on_its_engines_node():
    node_a, node_b = "a" * 56, "b" * 56  # Ray's node ids: 28 bytes in hex
    engines = Engines(actors=["a", "b"], nodes=[node_a, node_b], feeders=itertools.count())
    args = [engines.feeder_args() for _ in range(3)]
    assert [a["runtime_env"]["env_vars"][ENGINE_ENV] for a in args] == ["0", "1", "0"]
    assert [a["scheduling_strategy"].node_id for a in args] == [node_a, node_b, node_a]
    assert all(a["scheduling_strategy"].soft for a in args)


def test_engines_sharing_a_cpu_node_reserve_one_cpu_between_them(plan):
    assert engine_cpus(plan) == 1.0
    assert engine_cpus(replace(plan, engine=replace(plan.engine, engines_per_device=4))) == 0.25
    assert engine_cpus(replace(plan, engine=replace(plan.engine, device="cuda", engines_per_device=4))) == 1.0


def test_an_engine_label_names_its_cores_only_when_it_shares_its_node():
    assert engine_label("abcdef123456", {"engines_per_device": 1, "cpu_bind": "0-1"}).startswith("abcdef12:")
    assert "cores" not in engine_label("abcdef123456", {"engines_per_device": 1, "cpu_bind": "0-1"})
    assert engine_label("abcdef123456", {"engines_per_device": 2, "cpu_bind": "2-3"}).endswith(" cores 2-3")
    assert "cores" not in engine_label("abcdef123456", {"engines_per_device": 2, "cpu_bind": "nobind"})


def test_a_workers_pipeline_error_reaches_the_driver_as_itself():
    cause = InputRejected("prompt of 600 tokens is longer than the engine's 512")
    wrapped = RayTaskError("map_batches", "Traceback ...", cause)
    assert _pipeline_error(wrapped) is cause
    chained = RuntimeError("outer")
    chained.__cause__ = cause
    assert _pipeline_error(chained) is cause


def test_any_other_worker_failure_becomes_an_engine_error_with_its_last_line():
    error = _pipeline_error(RuntimeError("Traceback (most recent call last):\n  ...\nOSError: disk full"))
    assert isinstance(error, EngineError)
    assert str(error) == "a pipeline worker failed after Ray's retries: OSError: disk full"
