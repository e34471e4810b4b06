"""Kill and resume with the real engine (vLLM's CPU build on a tiny model): a driver killed after its second commit,
then rerun, leaves the store a clean run would leave, vectors included. The same property at every point of the
run, and for killed engines and write tasks, with the stand-in engine: tests/ray/test_reliability.py."""

from __future__ import annotations

import json

import lancedb
import pyarrow as pa
import pytest

from pipeline import schema as s
from pipeline.engine.reference import ReferenceEmbedder, cosine
from pipeline.plan.job import plan_lengths
from pipeline.plan.model_dir import ModelDir
from pipeline.run.in_process import planned_documents
from pipeline.settings import InputSettings, Settings
from pipeline.stages.chunk_step import ChunkStep
from pipeline.stages.chunking import Chunker
from pipeline.stages.tokenizer import load_tokenizer
from tests.job_process import IngestProcess

pytestmark = pytest.mark.slow
DOCS = 24


def engine_job(model, corpus, db, **faults) -> IngestProcess:
    args = [
        *("--model-path", str(model), "--model.name", "tiny", "--model.enforce-eager", "true"),
        *("--model.gpu-memory-utilization", "0.1", "--chunk-tokens", "128"),
        *("--inputs", str(corpus), "--db", str(db), "--no-index.after-run"),
        *("--run.commit-rows", "16", "--run.batch-rows", "8"),
    ]
    return IngestProcess(args, **faults)


def stored(db) -> dict[str, dict]:
    table = lancedb.connect(str(db)).open_table("chunks").to_arrow()
    ids = table.column(s.CHUNK_ID).to_pylist()
    assert len(ids) == len(set(ids)), "duplicate chunks"
    return {row[s.CHUNK_ID]: row for row in table.to_pylist()}


def test_a_driver_killed_after_its_second_commit_then_rerun_stores_what_a_clean_run_would(
    tiny_model_path, sample_texts, tmp_path
):
    """What a clean run would store: every chunk the job's own chunking makes (chunked here, in this process), each
    with the model's vector (a plain transformers forward pass over its text)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    lines = [json.dumps({"id": f"d{i}", "text": sample_texts[i % 36] + f"\n\nCopy {i}."}) for i in range(DOCS)]
    (corpus / "a.jsonl").write_text("\n".join(lines) + "\n")
    db = tmp_path / "db"
    engine_job(tiny_model_path, corpus, db, faults="commit.after_group=kill@2", faults_dir=tmp_path / "f").died()
    killed = stored(db)
    assert 0 < len(killed)
    engine_job(tiny_model_path, corpus, db).finish()
    resumed = stored(db)
    assert set(resumed) == clean_ids(tiny_model_path, corpus) and set(killed) <= set(resumed)
    runs = {row[s.RUN_ID] for row in resumed.values()}
    assert len(runs) == 2, "the rerun embedded again what the killed run had committed, or nothing"
    model = ModelDir.read(str(tiny_model_path))
    tokenizer, reference = load_tokenizer(model.path), ReferenceEmbedder(model)
    for row in resumed.values():
        ids = tokenizer.with_special_tokens(tokenizer.encode(row[s.TEXT])[0])
        assert cosine(reference.embed_ids(ids), row[s.VECTOR]) >= 0.999, row[s.CHUNK_ID]
    history = lancedb.connect(str(db)).open_table("runs").to_arrow().sort_by("started_at").to_pylist()
    assert [r["status"] for r in history] == ["interrupted", "succeeded"]
    assert history[-1]["skipped"] > 0 and history[-1]["docs_in"] == DOCS


def clean_ids(model, corpus) -> set[str]:
    settings = Settings(model={"path": str(model), "name": "tiny"}, chunk={"tokens": 128})
    lengths = plan_lengths(settings)
    docs = planned_documents(InputSettings(paths=[str(corpus)]), lengths.chunk.fingerprint)
    rows = ChunkStep(Chunker(load_tokenizer(lengths.model.path), lengths.chunk))(docs)
    return set(rows.filter(pa.compute.is_valid(rows.column(s.CHUNK_ID))).column(s.CHUNK_ID).to_pylist())
