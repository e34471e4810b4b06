"""Two engines sharing one 2-core node, one core each, against one engine with both cores: the same vectors,
and every batch row names the engine (and cores) that embedded it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import lancedb
import numpy as np
import pytest

from pipeline import schema as s
from tests.job_process import REPO, job_command, job_env

pytestmark = pytest.mark.engine


def ingest(corpus: Path, db: Path, *extra: str) -> lancedb.DBConnection:
    env = job_env(EMBEDPIPE_RUN__NUM_CPUS="2", RAY_DATA_DISABLE_PROGRESS_BARS="1")
    args = job_command(
        "jobs.ingest",
        "--inputs",
        str(corpus),
        "--db",
        str(db),
        "--no-index.after-run",
        "--run.batch-rows",
        "8",
        *extra,
    )
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return lancedb.connect(str(db))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sample_texts):
    corpus = tmp_path_factory.mktemp("corpus")
    # Enough batches (some 15 s of engine work) that the second engine is up before the first has done them all.
    texts = [f"Copy {k}. {t}" for k in range(4) for t in sample_texts[:24]]
    lines = [json.dumps({"id": f"d{i}", "text": t}) for i, t in enumerate(texts)]
    (corpus / "docs.jsonl").write_text("\n".join(lines) + "\n")
    root = tmp_path_factory.mktemp("dbs")
    one = ingest(corpus, root / "one")
    two = ingest(corpus, root / "two", "--run.engines-per-device", "2")
    return one, two


def vectors(db: lancedb.DBConnection) -> dict[str, np.ndarray]:
    table = db.open_table("chunks").to_arrow()
    ids = table.column(s.CHUNK_ID).to_pylist()
    return dict(zip(ids, np.asarray(table.column(s.VECTOR).to_pylist(), dtype=np.float64), strict=True))


def test_two_one_core_engines_give_the_vectors_of_one_two_core_engine(runs):
    one, two = (vectors(db) for db in runs)
    assert len(one) >= 96 and set(one) == set(two)
    cos = [float(one[k] @ two[k] / np.linalg.norm(one[k]) / np.linalg.norm(two[k])) for k in one]
    assert min(cos) >= 0.9999


def test_every_batch_row_names_its_engine_and_the_engines_own_different_cores(runs):
    one, two = runs
    [single] = set(one.open_table("batches").to_arrow().column("actor").to_pylist())
    assert "cores" not in single  # alone on the node: all cores, no label
    actors = two.open_table("batches").to_arrow().column("actor").to_pylist()
    assert all(actors) and len(set(actors)) == 2
    assert sorted(a.split(" cores ")[1] for a in set(actors)) == ["0", "1"]
    [row] = two.open_table("runs").to_arrow().to_pylist()
    resolved = json.loads(row["settings"])["resolved"]
    assert (resolved["actors"], resolved["engines_per_device"], resolved["cpu_threads"]) == (2, 2, 1)
