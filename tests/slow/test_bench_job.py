"""The benchmark job as a user runs it, on a few documents: the real engine in the pipeline and in all three
baselines, one budget. The report must carry every baseline, the stage breakdown and the diagnosis, and the
bench table must agree with the runs and batches rows of the same run."""

from __future__ import annotations

import json
import subprocess

import lancedb
import pyarrow.compute as pc
import pytest

from tests.job_process import REPO, SMALL_RAY, job_command, job_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench(tmp_path_factory, sample_texts):
    root = tmp_path_factory.mktemp("bench")
    corpus = root / "corpus"
    corpus.mkdir()
    lines = [json.dumps({"id": f"d{i}", "text": t}) for i, t in enumerate(sample_texts[:10])]
    (corpus / "docs.jsonl").write_text("\n".join(lines) + "\n")
    env = job_env(**SMALL_RAY)
    args = job_command(
        "benchmarks.bench",
        "--inputs",
        str(corpus),
        "--db",
        str(root / "db"),
        "--bench.output-dir",
        str(root / "out"),
        "--budgets",
        "[8192]",
        "--bench.serve-concurrency",
        "[2]",
        "--bench.bare-runs",
        "1",
        "--run.batch-rows",
        "16",
        "--bench.engines-per-device",
        "[1]",
        config="conf/bench.toml",
    )
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root, proc


def test_report_has_every_baseline_the_breakdown_and_a_diagnosis(bench):
    root, proc = bench
    assert "diagnosis: " in proc.stdout
    [report] = (root / "out").glob("*/report.md")
    text = report.read_text()
    for name in ("bare LLM.embed: best", "vLLM server + HTTP: best", "Ray Data LLM processor: best"):
        assert name in text, text
    assert "## Where the time goes" in text and "## Diagnosis" in text
    assert "measured with plain PyTorch" in text
    for png in ("throughput.png", "stages.png"):
        assert (report.parent / png).stat().st_size > 10_000
    # every runner returned the bare engine's vectors for the same token ids
    cosines = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if "lowest cosine" in line]
    assert len(cosines) == 3 and min(cosines) > 0.9999


def test_bench_rows_agree_with_the_runs_and_batches_rows(bench):
    root, _ = bench
    db = lancedb.connect(str(root / "db"))
    rows = db.open_table("bench").to_arrow().to_pylist()
    assert {r["kind"] for r in rows} == {"pipeline", "bare", "serve", "ray_data_llm"}
    assert all(r["error"] is None for r in rows)
    tokens = {r["tokens"] for r in rows}
    assert len(tokens) == 1, rows  # every runner embedded the same chunks
    assert all(r["engine_tokens"] == r["tokens"] for r in rows)
    [p] = [r for r in rows if r["kind"] == "pipeline"]
    prefix = next(n for n in db.list_tables().tables if n.endswith("p0_runs")).removesuffix("runs")
    [run] = db.open_table(f"{prefix}runs").to_arrow().to_pylist()
    batches = db.open_table(f"{prefix}batches").to_arrow()
    assert p["run_id"] == run["run_id"] and run["status"] == "succeeded"
    assert (p["wall_s"], p["startup_s"], p["tokens"]) == (run["wall_s"], run["startup_s"], run["tokens"])
    assert p["engine_tokens"] == run["engine_tokens"] == pc.sum(batches.column("engine_tokens")).as_py()
    assert p["tokens_per_call"] == pytest.approx(pc.mean(batches.column("engine_tokens")).as_py())
    assert json.loads(p["stages"])["embed_s"] == pytest.approx(run["embed_s"])
    assert p["tokens_per_s"] == pytest.approx(run["tokens"] / (run["wall_s"] - run["startup_s"]))
    [bare] = [r for r in rows if r["kind"] == "bare"]
    assert p["efficiency"] == pytest.approx(p["tokens_per_s"] / bare["tokens_per_s"])
    assert p["diagnosis"] and p["flops_per_token"] > 2e7  # MiniLM: about 2 x 21 M matmul weights + attention
    stored = db.open_table(f"{prefix}chunks").count_rows()
    for name in (n for n in db.list_tables().tables if n.endswith(("serve_c2_chunks", "ray_data_llm_chunks"))):
        assert db.open_table(name).count_rows() == stored
