"""A store made before a side-table column existed keeps working: the column is added, empty."""

import lancedb
import pyarrow as pa

from pipeline import schema as s
from pipeline.io.lance_store import LanceStore


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
