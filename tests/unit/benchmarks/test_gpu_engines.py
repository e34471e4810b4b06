"""The GPU engines benchmark's reading of vLLM's own lines (it runs on a GPU machine with vLLM only)."""

import pytest

from benchmarks.gpu_engines import parse_engine_log, render

pytestmark = pytest.mark.unit

ALONE = """INFO 12-03 10:00:01 [default_loader.py:291] Loading weights took 1.10 seconds
INFO 12-03 10:00:01 [gpu_model_runner.py:2070] Model loading took 7.7646 GiB memory and 1.6 seconds
INFO 12-03 10:00:09 [gpu_worker.py:760] Available KV cache memory: 53.21 GiB
"""
RACED = """INFO 12-03 10:00:09 [gpu_worker.py:760] Available KV cache memory: -2.14 GiB
ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`
"""


def test_an_engines_log_gives_its_weights_its_cache_and_its_first_error():
    assert parse_engine_log(ALONE) == {"kv_cache_gib": 53.21, "weights_gib": 7.7646, "error": None}
    raced = parse_engine_log(RACED)
    assert raced["error"].startswith("Error: No available memory for the cache blocks")
    assert parse_engine_log("") == {"kv_cache_gib": None, "weights_gib": None, "error": None}


def test_the_report_has_a_row_per_engine_and_per_engine_count():
    logs = [parse_engine_log(ALONE), parse_engine_log(RACED)]
    run = {"engines": 1, "reports": [{"start_s": 31.5}], "logs": logs[:1], "tokens_per_s": 52000.0}
    results = {
        "device": "cuda",
        "date": "2026-12-03",
        "race": {
            "together": {"logs": logs, "reports": [{}, {}]},
            "one_after_another": {"logs": [logs[0], parse_engine_log("")], "reports": [{}, {"error": "OOM"}]},
        },
        "per_gpu": [run, {**run, "engines": 2, "tokens_per_s": None, "reports": [{"start_s": 31.5, "error": "OOM"}]}],
        "compile": {"cold_s": 80.0, "warm_s": 20.0},
        "plan": {"weights": 7.6},
    }
    text = render(results)
    assert "| together | 1 | None | Error: No available memory" in text
    assert "| one_after_another | 1 | None | OOM |" in text  # a failure the log does not show is still reported
    assert "| 1 | 52,000 | 31.5 |" in text and "| 2 | failed: OOM | 31.5 |" in text
    assert "cold start 80.0 s, warm start 20.0 s" in text
