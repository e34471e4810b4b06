"""How a worker's failure reaches the driver, without a cluster: as the error it raised, through Ray's wrapping."""

from __future__ import annotations

import pytest
from ray.exceptions import RayTaskError

from pipeline.errors import EngineError, InputRejected
from pipeline.run.ray.group_records import pipeline_error

pytestmark = pytest.mark.unit


def test_a_workers_pipeline_error_reaches_the_driver_as_itself():
    cause = InputRejected("prompt of 600 tokens is longer than the engine's 512")
    wrapped = RayTaskError("map_batches", "Traceback ...", cause)
    assert pipeline_error(wrapped) is cause
    chained = RuntimeError("outer")
    chained.__cause__ = cause
    assert pipeline_error(chained) is cause


def test_any_other_worker_failure_becomes_an_engine_error_with_its_last_line():
    error = pipeline_error(RuntimeError("Traceback (most recent call last):\n  ...\nOSError: disk full"))
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
    error = pipeline_error(RuntimeError(printed))
    assert type(error) is EngineError
    assert str(error) == "engine 0 hung 2 times; its last log lines: WARNING vllm: stuck"
