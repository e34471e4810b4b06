"""Where an estimate's rate is read from in a real LanceDB store: its runs table and, when the benchmark ran
against it, the benchmark table's pipeline rows (older tables' missing columns are read as absent)."""

from datetime import datetime, timezone

import pyarrow as pa

from benchmarks.bench_table import BENCH_SCHEMA
from pipeline.estimate_run import RateHistory
from pipeline.plan.estimate import rate_from_bench
from pipeline.store.lance_store import LanceStore


def bench_row(kind: str, tokens_per_s: float) -> dict:
    return {
        "bench_id": "b1",
        "kind": kind,
        "label": kind,
        "params": '{"actors": 2}',
        "max_num_batched_tokens": 8192,
        "max_model_len": 256,
        "startup_s": 9.0,
        "tokens_per_s": tokens_per_s,
        "created_at": datetime.now(timezone.utc),
        "model": "m",
        "device": "cpu",
    }


def test_a_store_without_runs_or_benchmark_has_no_history(tmp_path):
    history = RateHistory.read(LanceStore(str(tmp_path / "db")))
    assert (history.runs, history.bench) == ([], [])


def test_the_benchmark_tables_pipeline_rows_are_read(tmp_path):
    store = LanceStore(str(tmp_path / "db"), "p_")
    rows = [bench_row("pipeline", 6000.0), bench_row("bare", 9000.0)]
    store.table(store.names.bench, BENCH_SCHEMA).add(pa.Table.from_pylist(rows, schema=BENCH_SCHEMA))
    history = RateHistory.read(store)
    assert [r["kind"] for r in history.bench] == ["pipeline"]
    assert rate_from_bench(history.bench, "m", 256, 8192, "cpu").tokens_per_engine_s == 3000.0
    assert RateHistory.read(LanceStore(str(tmp_path / "db"))).bench == []  # another prefix, another table
