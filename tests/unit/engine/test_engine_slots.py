"""Engines on one device: core sets on CPU nodes that never overlap, each engine's slot and binding, and the share
of a GPU's memory each takes. (How many share a device: tests/unit/plan/test_placement.py.)"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.engine.slots import bind_spec, core_sets, node_slots
from pipeline.engine.vllm import engine_environment, engine_kwargs
from pipeline.errors import ConfigError
from pipeline.plan.engine_spec import EngineSpec
from pipeline.settings import ModelSettings

pytestmark = pytest.mark.unit


@given(st.sets(st.integers(0, 63), min_size=1), st.integers(1, 64))
def test_core_sets_are_disjoint_equal_and_never_empty(cores, engines):
    if engines > len(cores):
        with pytest.raises(ConfigError):
            core_sets(sorted(cores), engines)
        return
    sets = core_sets(sorted(cores), engines)
    assert len(sets) == engines
    flat = [c for part in sets for c in part]
    assert len(flat) == len(set(flat)) and set(flat) <= cores
    assert {len(part) for part in sets} == {len(cores) // engines}


def test_bind_spec_writes_ranges():
    assert bind_spec([0, 1, 2, 3]) == "0-3"
    assert bind_spec([4, 0, 1, 6]) == "0-1,4,6"
    assert bind_spec([7]) == "7"


def test_node_slots_rank_bundles_per_node():
    assert node_slots(["a", "b", "a", "a", "b"]) == [0, 0, 1, 2, 1]


def spec(device: str, engines: int, threads: int = 2) -> EngineSpec:
    model = ModelSettings(path="m", gpu_memory_utilization=0.8)
    resolved = {"model_dir": "m", "max_model_len": 512, "cpu_threads": threads, "allow_long_max_model_len": False}
    return EngineSpec.resolve(model, device=device, engine_log_level="WARNING", engines_per_device=engines, **resolved)


def test_engines_sharing_a_gpu_split_its_memory_fraction():
    assert engine_kwargs(spec("cuda", 4))["gpu_memory_utilization"] == pytest.approx(0.2)
    assert engine_kwargs(spec("cpu", 2))["gpu_memory_utilization"] == pytest.approx(0.8)


def test_two_engines_on_a_cpu_node_bind_different_cores(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    first, second = (engine_environment(spec("cpu", 2), slot) for slot in (0, 1))
    assert (first["VLLM_CPU_OMP_THREADS_BIND"], second["VLLM_CPU_OMP_THREADS_BIND"]) == ("0-1", "2-3")
    assert first["OMP_NUM_THREADS"] == second["OMP_NUM_THREADS"] == "2"
