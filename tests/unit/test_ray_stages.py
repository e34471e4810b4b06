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


def test_a_workers_pipeline_error_is_read_back_from_the_remote_traceback_ray_data_keeps():
    """Ray Data 2.60 re-raises a UDF's error `from None` inside a UserCodeException: only the printed remote
    traceback still names it (the text below is what it prints, shortened)."""
    printed = (
        "\x1b[36mray::MapWorker(MapBatches(EngineFeeder)).submit()\x1b[39m (pid=12138)\n"
        '  File "pipeline/ray_engines.py", line 7, in __call__\n'
        "pipeline.errors.EngineError: engine 0 hung 2 times; its last log lines: WARNING vllm: stuck\n\n"
        "The above exception was the direct cause of the following exception:\n\n"
        "ray.exceptions.UserCodeException: UDF failed to process a data block.\n"
        "To change retry attempts, backoff, or which errors are retried, configure ..."
    )
    error = _pipeline_error(RuntimeError(printed))
    assert type(error) is EngineError
    assert str(error) == "engine 0 hung 2 times; its last log lines: WARNING vllm: stuck"


def test_ray_data_is_told_the_engines_reserve_the_stall_bound_and_the_shuffles_cpus(plan):
    from ray.data import DataContext
    from ray.data._internal.execution.operators.hash_shuffle import HashShufflingOperatorBase

    from pipeline.plan.placement import STAGE_CPUS
    from pipeline.ray_stages import _tell_ray_data, no_progress_timeout_s
    from pipeline.settings import RunSettings

    plan_settings = RunSettings()
    _tell_ray_data(plan, plan_settings)
    context = DataContext.get_current()
    assert context.execution_options.exclude_resources.cpu == plan.placement.bundle["CPU"] * plan.actors
    assert context.execution_no_progress_timeout_s == no_progress_timeout_s(plan_settings)
    # a private constant of Ray Data 2.60: if Ray renames it, this fails instead of the stall coming back silently
    assert HashShufflingOperatorBase._DEFAULT_SHUFFLE_BLOCK_NUM_CPUS == STAGE_CPUS.shuffle < 1
