"""A chunks table is ours only if it has our metadata and every column we write, of our types: what any other
writer changed is named. No store needed: the check reads a schema."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline import schema as s

pytestmark = pytest.mark.unit
OURS = s.chunks_table_schema(8, {"model": "m"})


def test_a_table_of_ours_has_no_changes():
    assert s.foreign_changes(OURS) == []
    assert s.foreign_changes(OURS.append(pa.field("note", pa.string()))) == []  # a nullable column added is harmless


def test_each_change_another_writer_makes_is_named():
    bare = OURS.remove_metadata()
    assert s.foreign_changes(bare) == [
        "its schema has no embedpipe metadata (the model and settings its vectors were made with)"
    ]
    dropped = OURS.remove(OURS.get_field_index(s.DOC_HASH))
    assert s.foreign_changes(dropped) == [f"columns {[s.DOC_HASH]} are missing"]
    retyped = OURS.set(OURS.get_field_index(s.N_TOKENS), pa.field(s.N_TOKENS, pa.string()))
    assert s.foreign_changes(retyped) == [f"{s.N_TOKENS} is string, not {OURS.field(s.N_TOKENS).type}"]
    variable = OURS.set(OURS.get_field_index(s.VECTOR), pa.field(s.VECTOR, pa.list_(pa.float32())))
    assert s.foreign_changes(variable) == ["vector is list<item: float>, not a fixed-size list of float32 or float16"]
    strict = OURS.append(pa.field("tenant", pa.string(), nullable=False))
    assert s.foreign_changes(strict) == ["columns ['tenant'] are not ours and may not be null"]
