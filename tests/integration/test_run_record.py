"""The `runs` row is finished whatever ends the run once it is recorded: a failure between the row's start and
the first commit (here a side table that cannot be opened) leaves it `failed` with the error, not `running`."""

import json

import lancedb
import pytest

from tests.job_process import stand_in_ingest

pytestmark = pytest.mark.ray


def test_a_side_table_that_cannot_be_opened_fails_the_recorded_run(tiny_model_path, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "text": f"text {i}"}) + "\n" for i in range(4)))
    db = tmp_path / "db"
    db.mkdir()
    (db / "rejects.lance").write_text("not a table")  # a file where the rejects table's directory should be
    records = tmp_path / "records"
    records.mkdir()
    stand_in_ingest(tiny_model_path, corpus, db, records, status=1)
    rows = lancedb.connect(str(db)).open_table("runs").to_arrow().to_pylist()
    assert [r["status"] for r in rows] == ["failed"], rows
    assert "rejects.lance" in rows[0]["error"] and rows[0]["finished_at"] is not None
