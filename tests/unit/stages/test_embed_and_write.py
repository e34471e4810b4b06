from __future__ import annotations

import json
from datetime import datetime, timezone

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from pipeline import schema as s
from pipeline.errors import StoreError
from pipeline.plan.chunk_plan import ChunkPlan
from pipeline.records import BatchPayload
from pipeline.run.in_process import planned_documents
from pipeline.settings import InputSettings
from pipeline.stages.chunk_step import ChunkStep
from pipeline.stages.chunking import Chunker
from pipeline.stages.embed import EmbedStep, has_chunks, passed_through
from pipeline.stages.tokenizer import load_tokenizer
from pipeline.store.lance_store import LanceStore
from tests.fakes import FakeEmbedder
from tests.support.in_process import CommittedRun

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def chunk_batches(minilm_path, sample_texts, tmp_path_factory):
    lines = [json.dumps({"id": f"doc{i}", "text": t}) for i, t in enumerate(sample_texts[:12])]
    lines += ["{broken", json.dumps({"id": "blank", "text": " "})]
    shard = tmp_path_factory.mktemp("in") / "s.jsonl"
    shard.write_text("\n".join(lines))
    plan = ChunkPlan(200, 0, 0.15, "fake")
    docs = planned_documents(InputSettings(paths=[str(shard)]), plan.fingerprint)
    table = ChunkStep(Chunker(load_tokenizer(minilm_path), plan))(docs)
    return [table.slice(i, 16) for i in range(0, len(table), 16)]


def write_and_commit(store: LanceStore, batches: list[pa.Table], model: str, commit_rows: int):
    """The write stage's two halves as the job runs them: a worker writes fragments, the driver commits."""
    step = EmbedStep(FakeEmbedder(dim=8), actor="a1")
    embedded = pa.concat_tables([step(b) for b in batches])
    store.ensure_side_tables()
    store.check_chunks_table(model)
    writer = store.chunk_writer("r1", model, "fp", {"model": model})
    committer = CommittedRun(store, "r1", {"model": model})
    for i in range(0, len(embedded), commit_rows):
        committer.add(writer.write(embedded.slice(i, commit_rows)))
    return committer.finish(delete_missing=False)


def test_embed_step_keeps_rejects_and_puts_stats_on_the_first_row(chunk_batches):
    step = EmbedStep(FakeEmbedder(dim=8), actor="a1")
    out = [step(b) for b in chunk_batches]
    table = pa.concat_tables(out)
    assert table.schema.field(s.VECTOR).type == pa.list_(pa.float32(), 8)
    is_reject = table.column(s.REJECT_REASON).is_valid().to_pylist()
    vectors = table.column(s.VECTOR).to_pylist()
    assert all((v is None) == r for v, r in zip(vectors, is_reject, strict=False))
    assert sum(is_reject) == 2
    stats = [BatchPayload.from_json(b.column(s.BATCH_STATS)[0].as_py()) for b in out]
    assert [st.batch.batch_index for st in stats] == list(range(len(out)))
    assert stats[0].engine is not None and stats[1].engine is None
    sent = sum(st.batch.n_tokens for st in stats)
    assert sent == pa.compute.sum(pa.concat_tables(chunk_batches).column(s.N_TOKENS)).as_py()
    assert [st.batch.engine_tokens for st in stats] == [st.batch.n_tokens for st in stats]
    assert all(b.column(s.BATCH_STATS).null_count == len(b) - 1 for b in out)


def test_a_batch_without_chunks_passes_without_an_engine_as_the_engine_would_pass_it(chunk_batches):
    table = pa.concat_tables(chunk_batches)
    rejects = table.filter(pa.compute.is_null(table.column(s.CHUNK_ID)))
    assert rejects.num_rows == 2 and not has_chunks(rejects) and has_chunks(table)
    through_engine = EmbedStep(FakeEmbedder(dim=8), actor="a1")(rejects)
    passed = passed_through(rejects, 8)
    assert passed.schema == through_engine.schema
    assert passed.drop_columns([s.BATCH_STATS]).equals(through_engine.drop_columns([s.BATCH_STATS]))
    assert passed.column(s.BATCH_STATS).null_count == 2  # no engine call, so no batches row


def test_writer_accounts_for_every_document_and_commits_in_groups(tmp_path, chunk_batches):
    store = LanceStore(str(tmp_path / "db"))
    outcome = write_and_commit(store, chunk_batches, "fake", commit_rows=25)
    t = outcome.totals
    db = lancedb.connect(str(tmp_path / "db"))
    chunks = db.open_table("chunks").to_arrow()
    assert (t.docs, t.rejected, t.docs_in, outcome.added) == (12, 2, 14, 12)
    all_rows = pa.concat_tables(chunk_batches)
    assert t.chunks == chunks.num_rows == all_rows.filter(pa.compute.is_valid(all_rows.column(s.CHUNK_ID))).num_rows
    assert t.tokens == pa.compute.sum(chunks.column(s.N_TOKENS)).as_py()
    assert len(set(chunks.column(s.DOC_ID).to_pylist())) == 12
    assert sorted(db.open_table("rejects").to_arrow().column("reason").to_pylist()) == ["empty_text", "invalid_json"]
    batches = db.open_table("batches").to_arrow()
    assert pa.compute.sum(batches.column("n_chunks")).as_py() == t.chunks
    assert pa.compute.sum(batches.column("engine_tokens")).as_py() == outcome.engine_tokens == t.tokens
    assert outcome.first_engine_ready is not None and outcome.first_engine_ready <= datetime.now(timezone.utc)
    assert len(db.open_table("chunks").list_versions()) >= 3  # a version per group (the first creates the table)
    assert json.loads(chunks.schema.metadata[b"embedpipe"])["model"] == "fake"


def test_chunks_table_of_another_model_is_refused(tmp_path, chunk_batches):
    store = LanceStore(str(tmp_path / "db"))
    write_and_commit(store, chunk_batches[:1], "fake", commit_rows=10_000)
    with pytest.raises(StoreError, match="holds vectors of model 'fake'"):
        write_and_commit(store, chunk_batches[:1], "other", commit_rows=10_000)


def test_fake_vectors_are_deterministic_unit_vectors():
    v = FakeEmbedder(4).embed([[1, 2, 3], [1, 2, 3], [4]])
    assert np.allclose(v[0], v[1]) and not np.allclose(v[0], v[2])
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0)
