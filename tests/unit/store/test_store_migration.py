"""A store made before a side-table column existed keeps working: the column is added, empty."""

import lancedb
import pyarrow as pa
import pytest

from pipeline import schema as s
from pipeline.store.lance_store import LanceStore
from pipeline.store.runs import RunLog
from tests.support.stores import empty_chunks_table, run_record

pytestmark = pytest.mark.unit


def test_old_batches_table_gains_new_columns(tmp_path):
    old_schema = pa.schema([f for f in s.BATCHES_SCHEMA if f.name != "engine_tokens"])
    db = lancedb.connect(tmp_path)
    db.create_table("batches", schema=old_schema).add(
        pa.Table.from_pylist([{"run_id": "old", "n_chunks": 3}], schema=old_schema)
    )
    store = LanceStore(str(tmp_path))
    table = store.table("batches", s.BATCHES_SCHEMA)
    assert "engine_tokens" in table.schema.names
    rows = table.to_arrow().to_pylist()
    assert rows == [{**dict.fromkeys(s.BATCHES_SCHEMA.names), "run_id": "old", "n_chunks": 3}]


def test_tables_left_half_created_by_a_killed_run_are_completed(tmp_path):
    for name in ("runs", "chunks"):
        (tmp_path / f"{name}.lance" / "_versions").mkdir(parents=True)  # what a kill mid-create leaves
    store = LanceStore(str(tmp_path))
    assert not store.exists("runs") and store.stored_keys() is None
    RunLog(store).start(run_record("r1"))
    assert store.table("runs", s.RUNS_SCHEMA).count_rows() == 1
    assert empty_chunks_table(store, 8, {"model": "m"}).count_rows() == 0
