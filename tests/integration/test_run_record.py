"""The `runs` row is finished whatever ends the run once it is recorded: a failure between the row's start and
the first commit (here a side table that cannot be opened) leaves it `failed` with the error, not `running`."""

import json
import subprocess

import lancedb
import pytest

from tests.fakes import RECORDS_ENV
from tests.job_process import REPO, SMALL_RAY, job_command, job_env

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
    args = job_command(
        "jobs.ingest",
        *("--model-path", str(tiny_model_path), "--model.name", "tiny", "--inputs", str(corpus), "--db", str(db)),
        *("--model.embedder", "tests.fakes:RecordingEngine", "--no-index.after-run"),
    )
    env = job_env(**SMALL_RAY, **{RECORDS_ENV: str(records)})
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    rows = lancedb.connect(str(db)).open_table("runs").to_arrow().to_pylist()
    assert [r["status"] for r in rows] == ["failed"], rows
    assert "rejects.lance" in rows[0]["error"] and rows[0]["finished_at"] is not None
