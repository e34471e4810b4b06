"""How many chunk actors keep the engines fed: the engines' expected tokens per second (the FLOP rule on GPUs)
divided by what one chunk actor turns out (measured by benchmarks/chunk_rate.py), capped by the CPUs the engines
leave. Pure: no ray, vllm or torch imports."""

from __future__ import annotations

import math

from pipeline.plan.compute import flops_per_token
from pipeline.plan.model_params import ModelShape

CHUNK_TOKENS_PER_S = 350_000.0
"""Tokens one chunk actor tokenizes and cuts per second (one CPU): benchmarks/chunk_rate.py measured 515,000 and
559,000 (medians; 364,000-634,000 over all runs) on two corpora, stdlib and package docs, with all-MiniLM-L6-v2's
tokenizer and 2,000-token chunks, on a shared 2-core machine under load: rounded down below the slowest run."""
EXPECTED_MFU = 0.4
"""Share of the device's 16-bit peak an engine's forward pass is assumed to reach (compute.py: 40-60% for a model
that fills the GPU; small models reach less, so this errs towards more chunk actors)."""


def engines_tokens_per_s(shape: ModelShape, chunk_tokens: int, gpus: float, peak_tflops: float) -> float:
    """Tokens per second the engines on `gpus` GPUs embed at EXPECTED_MFU of their peak."""
    return gpus * peak_tflops * 1e12 * EXPECTED_MFU / flops_per_token(shape, [chunk_tokens])


def chunk_actors_for(tokens_per_s: float | None) -> int:
    """Chunk actors that keep engines embedding `tokens_per_s` fed (one when the rate is unknown: CPU engines)."""
    if not tokens_per_s:
        return 1
    return max(1, math.ceil(tokens_per_s / CHUNK_TOKENS_PER_S))
