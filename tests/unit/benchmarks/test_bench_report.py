"""The report and the bench table from hand-made points: every baseline or its reason, the diagnosis, the
stage table, the plots, and rows that carry the same figures."""

import lancedb
import pytest

from benchmarks.metrics import Point
from benchmarks.report import write_outputs
from benchmarks.runner import BenchResult
from benchmarks.settings import BenchJobSettings

pytestmark = pytest.mark.unit


def _point(kind, label, budget, tps, startup=10.0, **kw):
    steady = 50.0
    tokens = int(tps * steady)
    return Point(
        kind=kind,
        label=label,
        params={"max_num_batched_tokens": budget, "max_model_len": 512, "actors": 1, "batch_rows": 64},
        wall_s=steady + startup,
        startup_s=startup,
        chunks=100,
        tokens=tokens,
        engine_tokens=tokens,
        stages={
            "embed_s": 0.95 * steady,
            "wait_s": 1.0,
            "read_s": 0.1,
            "parse_s": 0.2,
            "chunk_s": 0.5,
            "write_s": 0.8,
        },
        tokens_per_call=25_000.0,
        **kw,
    )


def _result(tmp_path, minilm_path, **kw) -> BenchResult:
    settings = BenchJobSettings(
        model={"path": str(minilm_path), "device": "cpu"},
        store={"uri": str(tmp_path / "db")},
        input={"paths": ["corpus"]},
    )
    return BenchResult(
        "b1",
        tmp_path,
        settings,
        chunks=100,
        tokens=250_000,
        lengths=[2500] * 100,
        flops_per_token=2.5e7,
        peak_tflops=None,
        peak_source="no known peak",
        device=None,
        engine_devices=1,
        model="all-MiniLM-L6-v2",
        engine_device="cpu",
        **kw,
    )


def test_report_and_bench_rows(tmp_path, minilm_path):
    result = _result(tmp_path, minilm_path)
    result.points = [
        _point("bare", "bare", 8192, 6000.0),
        _point("pipeline", "pipeline p0", 8192, 5700.0, run_id="r0"),
        _point("pipeline", "pipeline p1", 16192, 5650.0, run_id="r1"),
        _point("serve", "serve c=4", 8192, 5000.0),
        Point("ray_data_llm", "ray.data.llm", {"max_num_batched_tokens": 8192}, 0, 0, 0, 0, 0, error="Boom: no"),
    ]
    result.missing["ray_data_llm"] = "Boom: no"
    report = write_outputs(result)
    text = report.read_text()
    assert "engine-bound" in text and "efficiency 0.95 of the bare engine" in text
    assert "Ray Data LLM processor: not run: Boom: no" in text
    assert "vLLM server + HTTP: best 5,000 tokens/s at serve c=4" in text
    assert "| pipeline p0 | 8,192 |" in text and "r0" in text
    for png in ("throughput.png", "stages.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {r["label"]: r for r in lancedb.connect(tmp_path / "db").open_table("bench").to_arrow().to_pylist()}
    assert set(rows) == {"bare", "pipeline p0", "pipeline p1", "serve c=4", "ray.data.llm"}
    p0 = rows["pipeline p0"]
    assert p0["run_id"] == "r0" and p0["tokens"] == 285_000 and p0["wall_s"] == 60.0
    assert abs(p0["efficiency"] - 0.95) < 1e-9 and abs(p0["vs_serve"] - 1.14) < 1e-9
    assert p0["diagnosis"].startswith("engine-bound") and rows["bare"]["diagnosis"] is None
    assert rows["ray.data.llm"]["error"] == "Boom: no"


def test_report_names_the_cpu_each_process_role_used(tmp_path, minilm_path):
    from benchmarks.report import cpu_lines

    result = _result(tmp_path, minilm_path, cores=2)
    cpu = {
        "engine actors": {"cpu_s": 90.0, "processes": 1},
        "raylet": {"cpu_s": 6.0, "processes": 1},
        "driver": {"cpu_s": 4.0, "processes": 1},
    }
    result.points = [
        _point("bare", "bare", 8192, 6000.0, cpu={"engine (bare)": {"cpu_s": 99.0, "processes": 1}}),
        _point("pipeline", "pipeline p0", 8192, 5700.0, cpu=cpu),
    ]
    text = "\n".join(cpu_lines(result))
    assert "| process role | bare | pipeline p0 |" in text
    assert "| raylet |  | 6.0 (1) |" in text and "| engine (bare) | 99.0 (1) |  |" in text
    assert "| **besides the engine** | 0.0 (0%) | 10.0 (10%) |" in text
    assert "| core-seconds available | 100.0 | 100.0 |" in text


def test_targets_per_engines_per_device_setting_and_the_winner(tmp_path, minilm_path):
    from benchmarks.report import target_lines

    result = _result(tmp_path, minilm_path)

    def pipe(label, budget, tps, share, startup):
        point = _point("pipeline", label, budget, tps, startup=startup)
        return Point(**{**point.__dict__, "params": {**point.params, "engines_per_device": share}})

    result.points = [
        _point("bare", "bare", 8192, 6000.0, startup=20.0),
        pipe("p0", 8192, 5800.0, 1, 22.0),
        pipe("p1", 8192, 5000.0, 2, 30.0),
        _point("serve", "serve c=16", 8192, 5900.0, startup=30.0),
        _point("ray_data_llm", "ray.data.llm", 8192, 5500.0, startup=25.0),
    ]
    text = "\n".join(target_lines(result))
    assert "on a running Ray" not in text
    result.ray_start_s = 5.25
    text = "\n".join(target_lines(result))
    assert "target <= 1.15), on a running Ray: starting a local one took 5.2 s more, once" in text
    assert "- PASS engines per device 1: efficiency 0.97 at budgets 8,192" in text
    assert "- FAIL engines per device 1: best 5,800 tokens/s = 0.98x vLLM serve" in text
    assert "- PASS engines per device 1: 1.05x Ray Data LLM steady" in text
    assert "- PASS engines per device 1: start-up 1.10x the bare engine's" in text
    assert "- FAIL engines per device 2: efficiency 0.83" in text and "start-up 1.50x" in text
    assert "1: 5,800, 2: 5,000: 1 won" in text
