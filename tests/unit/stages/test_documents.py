from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import schema as s
from pipeline.settings import InputSettings
from pipeline.stages.documents import Shard
from tests.support.shards import parse_shard

pytestmark = pytest.mark.unit

CFG = InputSettings()


def parse(fmt: str, data: bytes, doc_id: str = "f.txt", cfg: InputSettings = CFG) -> list[dict]:
    return parse_shard(Shard("/x/" + doc_id, "/x/" + doc_id, fmt, doc_id), data, cfg).to_pylist()


def test_jsonl_lines_become_documents_or_rejects_with_line_numbers():
    lines = [
        json.dumps({"id": "a", "text": "Alpha text."}),
        "{not json",
        json.dumps({"id": 7, "text": "Numeric id."}),
        json.dumps({"id": "c", "text": "   \n"}),
        json.dumps({"text": "no id"}),
        json.dumps(["a", "list"]),
        "",
        json.dumps({"id": "d", "text": 5}),
    ]
    data = ("\n".join(lines)).encode() + b"\n" + b'{"id": "e", "text": "caf\xe9"}\n'
    rows = parse("jsonl", data, "s.jsonl")
    by_line = {r[s.LINE]: r for r in rows}
    assert by_line[1][s.DOC_ID] == "a" and by_line[1][s.REJECT_REASON] is None and by_line[1][s.DOC_HASH]
    assert by_line[2][s.REJECT_REASON] == "invalid_json"
    assert by_line[3][s.DOC_ID] == "7"
    assert by_line[4][s.REJECT_REASON] == "empty_text"
    assert by_line[5][s.REJECT_REASON] == "missing_id"
    assert by_line[6][s.REJECT_REASON] == "invalid_json"
    assert 7 not in by_line  # blank line
    assert by_line[8][s.REJECT_REASON] == "bad_text"
    assert by_line[9][s.REJECT_REASON] == "not_utf8"
    assert len(rows) == 8


def test_configured_field_names_are_used():
    cfg = InputSettings(id_field="uid", text_field="body")
    [row] = parse("jsonl", json.dumps({"uid": "u1", "body": "Hello."}).encode(), "s.jsonl", cfg)
    assert (row[s.DOC_ID], row[s.TEXT]) == ("u1", "Hello.")


def test_parquet_rows_and_a_missing_column_and_a_corrupt_file():
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": ["p1", "p2"], "text": ["One.", ""]}), buf)
    rows = parse("parquet", buf.getvalue(), "p.parquet")
    assert [(r[s.DOC_ID], r[s.REJECT_REASON]) for r in rows] == [("p1", None), ("p2", "empty_text")]

    buf = io.BytesIO()
    pq.write_table(pa.table({"id": ["p1"], "body": ["x"]}), buf)
    [row] = parse("parquet", buf.getvalue(), "p.parquet")
    assert row[s.REJECT_REASON] == "missing_column" and "text" in row[s.REJECT_DETAIL]

    [row] = parse("parquet", b"PAR1 this is not parquet", "p.parquet")
    assert row[s.REJECT_REASON] == "unreadable_parquet"


def test_text_files_are_one_document_each():
    [row] = parse("text", "\ufeff# Title\n\nBody.".encode(), "docs/a.md")
    assert (row[s.DOC_ID], row[s.TEXT]) == ("docs/a.md", "# Title\n\nBody.")
    assert parse("text", b"\x89PNG\x00\x00", "b.txt")[0][s.REJECT_REASON] == "binary"
    assert parse("text", b"caf\xe9", "c.txt")[0][s.REJECT_REASON] == "not_utf8"
