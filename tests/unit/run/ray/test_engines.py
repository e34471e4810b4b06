"""The engines' Ray adapter, without a cluster: where each feeder runs, how batch rows name their engine, and what
a failed engine start keeps. Placement on a cluster of logical GPUs: tests/ray/test_gpu_placement.py."""

from __future__ import annotations

import itertools

import pytest

from pipeline.errors import ChunkBudgetError, EngineError
from pipeline.run.ray.engines import Engines, _message_only, engine_label
from pipeline.run.ray.feeder import ENGINE_ENV

pytestmark = pytest.mark.unit


def test_feeders_take_the_engines_in_turn_each_on_its_engines_node():
    node_a, node_b = "a" * 56, "b" * 56  # Ray's node ids: 28 bytes in hex
    engines = Engines(actors=["a", "b"], nodes=[node_a, node_b], feeders=itertools.count())
    args = [engines.feeder_args() for _ in range(3)]
    assert [a["runtime_env"]["env_vars"][ENGINE_ENV] for a in args] == ["0", "1", "0"]
    assert [a["scheduling_strategy"].node_id for a in args] == [node_a, node_b, node_a]
    assert all(a["scheduling_strategy"].soft for a in args)


def test_an_engine_label_names_its_cores_only_when_it_shares_its_node():
    assert engine_label("abcdef123456", {"engines_per_device": 1, "cpu_bind": "0-1"}).startswith("abcdef12:")
    assert "cores" not in engine_label("abcdef123456", {"engines_per_device": 1, "cpu_bind": "0-1"})
    assert engine_label("abcdef123456", {"engines_per_device": 2, "cpu_bind": "2-3"}).endswith(" cores 2-3")
    assert "cores" not in engine_label("abcdef123456", {"engines_per_device": 2, "cpu_bind": "nobind"})


def test_a_failed_start_keeps_its_message_and_not_the_half_built_engine():
    class HalfBuilt:
        def __init__(self):
            self.weights = bytearray(2**20)
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    try:
        HalfBuilt()
    except RuntimeError as exc:
        kept = _message_only(exc)
    assert isinstance(kept, EngineError) and kept.__traceback__ is None and kept.__cause__ is None
    assert str(kept) == "an engine could not start: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    ours = _message_only(ChunkBudgetError("a chunk of 600 tokens reached the engine"))
    assert type(ours) is ChunkBudgetError and str(ours) == "a chunk of 600 tokens reached the engine"
