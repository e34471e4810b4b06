"""A run's cost from its own figures: the engines' held time, their busy share, device-hours, MFU and money."""

import pytest

from benchmarks.model_configs import QWEN3
from pipeline.plan.compute import flops_per_token
from pipeline.plan.cost import run_cost
from pipeline.plan.model_params import shape_from_config

pytestmark = pytest.mark.unit


def test_two_gpu_engines_held_for_an_hour_cost_two_gpu_hours_at_the_price():
    cost = run_cost(
        engines=2, wall_s=3600, busy_s=5400, tokens=10_000_000, chunks=5000, devices_per_engine=1.0, price=2.5
    )
    assert cost.engine_s == 7200 and cost.device_hours == pytest.approx(2.0)
    assert cost.engine_busy == pytest.approx(0.75)
    assert cost.tokens_per_engine_s == pytest.approx(10_000_000 / 7200)
    assert cost.cost == pytest.approx(5.0) and cost.cost_per_million_tokens == pytest.approx(0.5)
    assert "engines 2 x 3,600.0 s, busy 75%" in cost.summary() and "0.5 per million tokens" in cost.summary()


def test_engines_sharing_a_gpu_pay_their_share_and_no_price_means_no_cost():
    cost = run_cost(engines=4, wall_s=900, busy_s=0, tokens=1, chunks=1, devices_per_engine=0.25)
    assert cost.device_hours == pytest.approx(0.25)
    assert cost.cost is None and cost.cost_per_million_tokens is None and "cost" not in cost.summary()


def test_mfu_is_the_flops_done_over_the_device_seconds_at_peak():
    shape = shape_from_config(QWEN3)
    tokens, chunks, peak = 4_000_000, 2000, 989.0
    cost = run_cost(
        engines=1,
        wall_s=100,
        busy_s=90,
        tokens=tokens,
        chunks=chunks,
        devices_per_engine=1.0,
        shape=shape,
        peak_tflops=peak,
    )
    expected = tokens * flops_per_token(shape, [tokens // chunks]) / (100 * peak * 1e12)
    assert cost.mfu == pytest.approx(expected) and 0 < cost.mfu < 1
    assert run_cost(engines=1, wall_s=100, busy_s=90, tokens=1, chunks=1, devices_per_engine=1.0).mfu is None


def test_a_run_that_held_nothing_has_no_rates():
    cost = run_cost(engines=1, wall_s=0, busy_s=0, tokens=0, chunks=0, devices_per_engine=1.0, price=1.0)
    assert cost.engine_busy is None and cost.tokens_per_engine_s is None and cost.cost_per_million_tokens is None
