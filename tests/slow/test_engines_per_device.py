"""Two engines sharing one 2-core node, one core each: each gives the model's vectors, and every batch row names
the engine (and cores) that embedded it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import lancedb
import pytest

from pipeline import schema as s
from pipeline.engine.reference import ReferenceEmbedder, cosine
from pipeline.plan.model_dir import ModelDir
from pipeline.stages.tokenizer import load_tokenizer
from tests.job_process import REPO, job_command, job_env

pytestmark = pytest.mark.slow


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
def two(tmp_path_factory, sample_texts) -> lancedb.DBConnection:
    corpus = tmp_path_factory.mktemp("corpus")
    # Enough batches (some 15 s of engine work) that the second engine is up before the first has done them all.
    texts = [f"Copy {k}. {t}" for k in range(4) for t in sample_texts[:24]]
    lines = [json.dumps({"id": f"d{i}", "text": t}) for i, t in enumerate(texts)]
    (corpus / "docs.jsonl").write_text("\n".join(lines) + "\n")
    return ingest(corpus, tmp_path_factory.mktemp("dbs") / "two", "--run.engines-per-device", "2")


def test_two_one_core_engines_each_give_the_models_vectors(two, minilm_path):
    """Each engine's vectors equal a plain transformers forward pass over the same tokens (one engine with every
    core: tests/engine/test_vllm_embedder.py and test_ingest_job.py)."""
    model = ModelDir.read(str(minilm_path))
    tokenizer, reference = load_tokenizer(model.path), ReferenceEmbedder(model)
    rows = two.open_table("chunks").to_arrow().to_pylist()
    batches = two.open_table("batches").to_arrow().to_pylist()
    assert len(rows) >= 96 and len({b["actor"] for b in batches if b["n_chunks"]}) == 2  # both engines embedded
    for row in rows[::3]:
        ids = tokenizer.with_special_tokens(tokenizer.encode(row[s.TEXT])[0])
        assert cosine(reference.embed_ids(ids), row[s.VECTOR]) >= 0.9999, row[s.CHUNK_ID]


def test_every_batch_row_names_its_engine_and_the_engines_own_different_cores(two):
    actors = two.open_table("batches").to_arrow().column("actor").to_pylist()
    assert all(actors) and len(set(actors)) == 2
    assert sorted(a.split(" cores ")[1] for a in set(actors)) == ["0", "1"]
    [row] = two.open_table("runs").to_arrow().to_pylist()
    resolved = json.loads(row["settings"])["resolved"]
    assert (resolved["actors"], resolved["engines_per_device"], resolved["cpu_threads"]) == (2, 2, 1)
