"""The embed stage's feeders, without a cluster: which engine a feeder uses first, and a batch with nothing to embed
passing without one. A feeder on a cluster: tests/ray/test_cluster_faults.py."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline import schema as s
from pipeline.run.ray.feeder import ENGINE_ENV, EngineFeeder
from pipeline.stages.chunk_step import ChunkStep
from pipeline.stages.chunking import Chunker
from pipeline.stages.tokenizer import load_tokenizer

pytestmark = pytest.mark.unit


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
