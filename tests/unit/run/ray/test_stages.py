"""The Ray Data stages' own logic, without a cluster: the chunk actor is the pure chunk step, and what Ray Data is
told of the run. The wiring itself runs in tests/ray/."""

from __future__ import annotations

import warnings

import pyarrow as pa
import pytest

from pipeline import schema as s
from pipeline.run.ray.stages import ChunkActor
from pipeline.settings import LoggingSettings
from pipeline.stages.chunk_step import ChunkStep
from pipeline.stages.chunking import Chunker
from pipeline.stages.tokenizer import load_tokenizer

pytestmark = pytest.mark.unit


def test_the_chunk_actor_is_the_chunk_step_with_the_plans_chunking(plan, planned, minilm_path):
    tokenizer = load_tokenizer(minilm_path)
    out = ChunkActor(LoggingSettings(), plan.chunk, tokenizer)(planned)
    same = [s.CHUNK_ID, s.TOKEN_IDS, s.N_TOKENS, s.REJECT_REASON]
    assert out.select(same).equals(ChunkStep(Chunker(tokenizer, plan.chunk))(planned).select(same))
    assert pa.compute.max(out.column(s.N_TOKENS)).as_py() <= plan.chunk.max_tokens
    assert "blank" in out.filter(pa.compute.is_valid(out.column(s.REJECT_REASON))).column(s.DOC_ID).to_pylist()


def test_ray_data_is_told_the_engines_reserve_the_stall_bound_and_the_shuffles_cpus(plan):
    from ray.data import DataContext
    from ray.data._internal.execution.operators.shuffle_operators.shuffle_map_operator import ShuffleMapOp
    from ray.data._internal.execution.operators.shuffle_operators.shuffle_reduce_operator import ShuffleReduceOp
    from ray.util.annotations import RayDeprecationWarning

    from pipeline.plan.placement import STAGE_CPUS
    from pipeline.run.ray.stages import _tell_ray_data, no_progress_timeout_s
    from pipeline.settings import RunSettings

    plan_settings = RunSettings()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RayDeprecationWarning)  # Ray 2.60 deprecates exclude_resources
        _tell_ray_data(plan, plan_settings, {"CPU": 8.0, "GPU": 0.0})
    context = DataContext.get_current()
    assert context.execution_options.resource_limits.cpu == 8.0 - plan.placement.bundle["CPU"] * plan.actors
    assert context.execution_no_progress_timeout_s == no_progress_timeout_s(plan_settings)
    # private defaults of Ray Data 2.60 (the tasks' asks, as Ray schedules them, are read in tests/ray/
    # test_kuberay_shape.py): a renamed one fails the run's start, not silently
    assert ShuffleMapOp.__init__.__kwdefaults__["map_cpus"] == STAGE_CPUS.shuffle < 1
    assert ShuffleReduceOp._DEFAULT_SHUFFLE_REDUCE_TASK_NUM_CPUS == STAGE_CPUS.shuffle
