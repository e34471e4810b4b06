"""The Ray Data adapter's own logic, without a cluster: how a worker's failure reaches the driver, and that the chunk
actor is the pure chunk step. The wiring itself runs in tests/integration."""

from __future__ import annotations

import pyarrow as pa
from ray.exceptions import RayTaskError

from pipeline import schema as s
from pipeline.errors import EngineError, InputRejected
from pipeline.ray_stages import ChunkActor, _pipeline_error
from pipeline.settings import LoggingSettings
from pipeline.stages.chunk_step import ChunkStep
from pipeline.stages.chunking import Chunker
from pipeline.stages.tokenizer import load_tokenizer


def test_the_chunk_actor_is_the_chunk_step_with_the_plans_chunking(plan, planned, minilm_path):
    tokenizer = load_tokenizer(minilm_path)
    out = ChunkActor(LoggingSettings(), plan.chunk, tokenizer)(planned)
    same = [s.CHUNK_ID, s.TOKEN_IDS, s.N_TOKENS, s.REJECT_REASON]
    assert out.select(same).equals(ChunkStep(Chunker(tokenizer, plan.chunk))(planned).select(same))
    assert pa.compute.max(out.column(s.N_TOKENS)).as_py() <= plan.chunk.max_tokens
    assert "blank" in out.filter(pa.compute.is_valid(out.column(s.REJECT_REASON))).column(s.DOC_ID).to_pylist()


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
