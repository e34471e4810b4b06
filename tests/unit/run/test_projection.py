"""Where an estimate's rate is read from in a real LanceDB store: its runs table and, when the benchmark ran
against it, the benchmark table's pipeline rows (older tables' missing columns are read as absent)."""

import random
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest

from benchmarks.bench_table import BENCH_SCHEMA
from pipeline import schema as s
from pipeline.plan.estimate import rate_from_bench
from pipeline.run.projection import RateHistory
from pipeline.store.lance_store import LanceStore
from pipeline.store.runs import RunLog

pytestmark = pytest.mark.unit


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


def test_recent_runs_are_the_newest_ones_newest_first_whatever_order_they_were_written_in(tmp_path):
    store = LanceStore(str(tmp_path / "db"))
    hours = list(range(30))
    random.Random(3).shuffle(hours)
    first = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = [{"run_id": f"r{h:02d}", "started_at": first + timedelta(hours=h)} for h in hours]
    for part in (rows[:10], rows[10:]):  # two fragments
        store.table(store.names.runs, s.RUNS_SCHEMA).add(pa.Table.from_pylist(part, schema=s.RUNS_SCHEMA))
    recent = RunLog(store).recent(20, ["run_id", "tokens", "engine_s"])
    assert [r.run_id for r in recent] == [f"r{h:02d}" for h in range(29, 9, -1)]
    assert RunLog(store).recent(0) == []
    with pytest.raises(ValueError, match="not_a_column"):
        RunLog(store).recent(20, ["run_id", "not_a_column"])


def test_an_older_benchmark_table_without_the_model_column_is_read_with_the_columns_it_has(tmp_path):
    store = LanceStore(str(tmp_path / "db"))
    old = pa.schema([f for f in BENCH_SCHEMA if f.name not in ("model", "device")])
    row = {k: v for k, v in bench_row("pipeline", 6000.0).items() if k in old.names}
    store.table(store.names.bench, old).add(pa.Table.from_pylist([row], schema=old))
    [read] = RateHistory.read(store).bench
    assert read["tokens_per_s"] == 6000.0 and "model" not in read
