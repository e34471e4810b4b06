"""The benchmark's arithmetic and diagnosis on hand-made points (no engine): each verdict has a case that
produces it and the numbers it must quote."""

import pytest

from benchmarks.metrics import Point, diagnose, efficiency, mfu
from benchmarks.runner import sweep_settings
from pipeline.plan.model_params import shape_from_config
from pipeline.settings import Settings

pytestmark = pytest.mark.unit


def point(kind="pipeline", budget=8192, tps=1000.0, busy=0.95, per_call=20_000.0, engines=1, **stages):
    steady = 100.0
    return Point(
        kind=kind,
        label=f"{kind} {budget}",
        params={"max_num_batched_tokens": budget, "max_model_len": 512},
        wall_s=steady + 20,
        startup_s=20,
        chunks=10,
        tokens=int(tps * steady),
        engine_tokens=int(tps * steady),
        stages={
            "embed_s": busy * steady * engines,
            "wait_s": 0.0,
            "read_s": 0.1,
            "parse_s": 0.1,
            "chunk_s": 1.0,
            "write_s": 1.0,
            **stages,
        },
        engines=engines,
        tokens_per_call=per_call,
    )


def test_efficiency_and_mfu():
    bare = point("bare", tps=1000.0)
    assert efficiency(point(tps=950.0), bare) == pytest.approx(0.95)
    # two engines on two GPUs are judged against two bare engines; on a CPU they share one machine
    assert efficiency(point(tps=1900.0, engines=2), bare, engine_devices=2) == pytest.approx(0.95)
    assert efficiency(point(tps=950.0, engines=2), bare, engine_devices=1) == pytest.approx(0.95)
    assert efficiency(point(tps=950.0), None) is None
    assert mfu(point(tps=1000.0), flops_token=1e9, peak=1.0) == pytest.approx(1.0)
    assert mfu(point(tps=1000.0), flops_token=1e9, peak=None) is None


def test_diagnosis_engine_bound_and_flat():
    sweep = [point(budget=b, tps=t) for b, t in ((8192, 1000), (16192, 1010), (24288, 995))]
    text = diagnose(sweep, lambda p: point("bare", tps=1050.0))
    assert text.startswith("engine-bound")
    assert "compute-bound" in text and "spread 1.5%" in text and "0.95-0.96 of the bare engine" in text


def test_diagnosis_feed_bound_names_the_tokens_per_call():
    sweep = [point(budget=b, per_call=3_000.0) for b in (8192, 16192)]
    text = diagnose(sweep, lambda p: None)
    assert text.startswith("feed-bound") and "3,000 tokens per call" in text and "8,192" in text


def test_diagnosis_outside_the_engine_names_the_largest_other_stage():
    sweep = [point(budget=8192, busy=0.4, write_s=50.0), point(budget=16192, busy=0.5)]
    text = diagnose(sweep, lambda p: None)
    assert text.startswith("bound outside the engine") and "40%" in text and "write (50.0 s" in text


def test_diagnosis_when_budget_matters():
    sweep = [point(budget=8192, tps=1000.0), point(budget=16192, tps=1400.0)]
    assert "the budget matters: best at 16,192" in diagnose(sweep, lambda p: None)


def test_sweep_is_the_product_and_each_point_has_its_own_tables(minilm_path):
    from benchmarks.settings import BenchJobSettings

    settings = BenchJobSettings(
        model={"path": str(minilm_path)},
        bench={"budgets": [8192, 16384], "batch_rows": [16, 64]},
        store={"table_prefix": "x_"},
    )
    points = sweep_settings(settings, "x_bench1_")
    assert [(p.model.max_num_batched_tokens, p.run.batch_rows) for p in points] == [
        (8192, 16),
        (8192, 64),
        (16384, 16),
        (16384, 64),
    ]
    assert len({p.store.table_prefix for p in points}) == 4
    assert settings.index.after_run and not any(p.index.after_run for p in points)  # baselines build no index
    assert all(type(p) is Settings and "bench" not in p.model_dump() for p in points)  # runs record no bench section


def test_diagnosis_says_when_the_engine_itself_ran_slower_than_alone():
    sweep = [point(budget=8192, tps=900.0, busy=1.0)]
    text = diagnose(sweep, lambda p: point("bare", tps=1000.0))
    assert "engine itself computed at 0.90-0.90 of the bare engine's speed" in text
    assert "engine itself" not in diagnose([point(tps=990.0, busy=1.0)], lambda p: point("bare", tps=1000.0))


def test_every_baseline_gets_the_pipelines_engine_arguments(minilm_path):
    from benchmarks.runner import engine_plan
    from benchmarks.serve import server_command
    from pipeline.engine.vllm import engine_kwargs

    settings = Settings(
        model={
            "path": str(minilm_path),
            "device": "cpu",
            "dtype": "float32",
            "max_num_batched_tokens": 16192,
            "enforce_eager": True,
        }
    )
    spec = engine_plan(settings).engine
    kwargs = engine_kwargs(spec)
    assert (kwargs["max_num_batched_tokens"], kwargs["max_model_len"], kwargs["enforce_eager"]) == (16192, 256, True)
    cmd = " ".join(server_command(spec, 8000))
    assert "--max-num-batched-tokens 16192 " in cmd and "--max-model-len 256 " in cmd and "--dtype float32" in cmd
    assert "--enforce-eager" in cmd and "--trust-remote-code" not in cmd


DTYPE_CASES = [  # setting, device, checkpoint's dtype, what vLLM 0.32 computes a pooling model in
    ("auto", "cuda", "float16", "float16"),
    ("auto", "cuda", "float32", "float16"),  # not bfloat16: vLLM prefers float16 for pooling models
    ("auto", "cpu", "float32", "float16"),  # measured here: MiniLM's float32 checkpoint runs as torch.float16
    ("auto", "cuda", "bfloat16", "bfloat16"),
    ("bfloat16", "cuda", "float16", "bfloat16"),
]


@pytest.mark.parametrize(("dtype", "device", "checkpoint", "expected"), DTYPE_CASES)
def test_the_device_measurement_computes_in_the_memory_planners_dtype(
    minilm_path, dtype, device, checkpoint, expected
):
    from dataclasses import replace

    from benchmarks.device import engine_dtype
    from pipeline.plan.memory import load_config, resolve_dtype
    from tests.support.plans import plan_on_one_node

    spec = plan_on_one_node(Settings(model={"path": str(minilm_path), "dtype": dtype}), 2, gpus=0, cpus=2).engine
    spec = replace(spec, device=device)
    shape = replace(shape_from_config(load_config(str(minilm_path))[0]), torch_dtype=checkpoint)
    assert engine_dtype(spec, shape) == resolve_dtype(dtype, shape) == expected
