"""FLOPs per token and per forward pass, and device peaks: the arithmetic that places engines on GPUs and that the
benchmark's MFU divides by."""

import pytest

from benchmarks.model_configs import BERT_BASE, PHI3V
from pipeline.plan.compute import flops_per_token, forward_ms, peak_tflops
from pipeline.plan.model_params import shape_from_config

pytestmark = pytest.mark.unit


def test_flops_per_token_is_two_per_matmul_weight_plus_attention():
    shape = shape_from_config(BERT_BASE)
    h, i, layers = 768, 3072, 12
    weights = layers * (4 * h * h + 2 * h * i)
    for length in (128, 512):
        expected = 2 * weights + layers * 4 * h * length
        assert flops_per_token(shape, [length] * 3) == pytest.approx(expected, rel=2e-3)
    # mixed lengths: longer chunks cost more per token, weighted by their tokens
    mixed = flops_per_token(shape, [100, 500])
    assert flops_per_token(shape, [100]) < mixed < flops_per_token(shape, [500])
    decoder = shape_from_config({**BERT_BASE, "model_type": "llama"})
    causal = 2 * layers * (4 * h * h + 3 * h * i) + layers * 2 * h * 512  # gated MLP, half the attention term
    assert flops_per_token(decoder, [512]) == pytest.approx(causal, rel=1e-6)


def test_peak_lookup_override_and_unknown():
    assert peak_tflops("NVIDIA H200", "bfloat16") == (989.0, "data sheet, H200 16-bit dense")
    assert peak_tflops("NVIDIA H100 PCIe", "float16")[0] == 756.0
    assert peak_tflops("NVIDIA L4", "bfloat16")[0] == 121.0  # not L40's figure
    assert peak_tflops("AMD EPYC", "float32")[0] is None
    assert peak_tflops("AMD EPYC", "float32", 1.5, "bench.peak_tflops") == (1.5, "bench.peak_tflops")
    assert peak_tflops("Acme X1", "bfloat16", None, "bench.peak_tflops")[1].endswith("(set bench.peak_tflops)")
    assert peak_tflops("NVIDIA H200", "float32")[0] is None  # the table holds 16-bit peaks only


def test_a_forward_pass_at_the_budget_at_the_devices_peak():
    phi3v = shape_from_config(PHI3V)
    per_token = flops_per_token(phi3v, [2000])
    assert per_token == pytest.approx(7.64e9, rel=0.02)  # the 4B text tower: ~7.6 GFLOP a token at 2,000 tokens
    assert forward_ms(phi3v, 8192, 2000, 989.0) == pytest.approx(8192 * per_token / 989e12 * 1e3)
    assert forward_ms(phi3v, 16384, 2000, 989.0) == pytest.approx(2 * forward_ms(phi3v, 8192, 2000, 989.0))
