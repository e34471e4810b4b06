"""Engines per device: the setting checked, the planner's fit and cap on GPUs, one per TP group, and core sets
on CPU nodes that never overlap."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.engine.slots import bind_spec, choose_engines_per_device, core_sets, node_slots
from pipeline.engine.vllm import EngineSpec, engine_environment, engine_kwargs
from pipeline.errors import ConfigError
from pipeline.settings import ModelSettings


def test_gpu_default_is_what_fits_capped_by_the_setting():
    assert choose_engines_per_device(None, 4, "cuda", 1, fitting=9, cores=16).engines_per_device == 4
    assert choose_engines_per_device(None, 4, "cuda", 1, fitting=3, cores=16).engines_per_device == 3
    capped = choose_engines_per_device(None, 4, "cuda", 1, fitting=9, cores=16)
    assert "fits 9" in capped.note and "max_engines_per_device=4" in capped.note


def test_gpu_unknown_memory_or_nothing_fitting_means_one():
    assert choose_engines_per_device(None, 4, "cuda", 1, fitting=None, cores=16).engines_per_device == 1
    assert choose_engines_per_device(None, 4, "cuda", 1, fitting=0, cores=16).engines_per_device == 1


def test_a_setting_above_the_fit_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"lower run\.engines_per_device to 2"):
        choose_engines_per_device(5, 8, "cuda", 1, fitting=2, cores=16)
    assert choose_engines_per_device(2, 8, "cuda", 1, fitting=2, cores=16).engines_per_device == 2


def test_tensor_parallel_engines_never_share():
    assert choose_engines_per_device(None, 4, "cuda", 2, fitting=9, cores=16).engines_per_device == 1
    with pytest.raises(ConfigError, match="tensor_parallel_size"):
        choose_engines_per_device(2, 4, "cuda", 2, fitting=9, cores=16)


def test_cpu_default_is_one_engine_and_more_engines_than_cores_is_refused():
    assert choose_engines_per_device(None, 4, "cpu", 1, fitting=None, cores=2).engines_per_device == 1
    assert choose_engines_per_device(2, 4, "cpu", 1, fitting=None, cores=2).engines_per_device == 2
    with pytest.raises(ConfigError, match="at most 2"):
        choose_engines_per_device(3, 4, "cpu", 1, fitting=None, cores=2)


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
