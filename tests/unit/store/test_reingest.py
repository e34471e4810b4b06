"""Re-ingest semantics on the pipeline's own steps (read, plan, chunk, embed, write, commit) without Ray."""

from __future__ import annotations

import json
from pathlib import Path

import lancedb
import pyarrow as pa
import pytest

from pipeline import schema as s
from pipeline.errors import StoreError
from pipeline.plan.chunk_plan import ChunkPlan
from pipeline.settings import InputSettings
from pipeline.stages.chunking import Chunker
from pipeline.stages.pieces import Piece, PieceReader
from pipeline.stages.sources import list_shards
from pipeline.stages.tokenizer import load_tokenizer
from pipeline.store.lance_store import LanceStore
from pipeline.store.locks import store_lock
from tests.fakes import FakeEmbedder
from tests.support.in_process import ingest_in_process

pytestmark = pytest.mark.unit

PLAN = ChunkPlan(max_tokens=64, overlap_tokens=0, boundary_window=0.15, model_id="fake")


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    return load_tokenizer(minilm_path)


def run_once(tokenizer, inputs: Path, db: Path, run_id: str, delete_missing=False, refuse_token=None):
    return ingest_in_process(
        LanceStore(str(db)),
        run_id,
        InputSettings(paths=[str(inputs)]),
        Chunker(tokenizer, PLAN),
        FakeEmbedder(dim=8, refuse_token=refuse_token),
        {"model": "fake"},
        commit_rows=10,
        embed_rows=7,
        delete_missing=delete_missing,
    )


def write_docs(path: Path, docs: dict[str, str]) -> None:
    path.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in docs.items()))


def chunk_table(db: Path) -> pa.Table:
    return lancedb.connect(str(db)).open_table("chunks").to_arrow().sort_by(s.CHUNK_ID)


@pytest.fixture
def corpus(tmp_path, sample_texts):
    inputs = tmp_path / "in"
    inputs.mkdir()
    docs = {f"d{i}": t[:1500] for i, t in enumerate(sample_texts[:10])}
    write_docs(inputs / "a.jsonl", docs)
    return inputs, tmp_path / "db", docs


def test_second_run_over_unchanged_inputs_embeds_nothing(tokenizer, corpus):
    inputs, db, _ = corpus
    first, _ = run_once(tokenizer, inputs, db, "r1")
    before = chunk_table(db)
    second, embed = run_once(tokenizer, inputs, db, "r2")
    assert (first.added, first.skipped) == (10, 0)
    assert all(first.stages[k] > 0 for k in ("read_s", "parse_s", "chunk_s", "embed_s", "write_s"))
    assert (second.added, second.replaced, second.skipped, second.totals.chunks) == (0, 0, 10, 0)
    assert embed.embedder.tokens_processed == 0
    after = chunk_table(db)
    assert after.column(s.CHUNK_ID) == before.column(s.CHUNK_ID)
    assert after.column(s.VECTOR) == before.column(s.VECTOR)
    assert second.totals.docs_in == 10


def test_changed_added_and_removed_documents(tokenizer, corpus, sample_texts):
    inputs, db, docs = corpus
    run_once(tokenizer, inputs, db, "r1")
    old_d0 = set(
        chunk_table(db).filter(pa.compute.equal(chunk_table(db).column(s.DOC_ID), "d0")).column(s.CHUNK_ID).to_pylist()
    )
    docs = dict(docs)
    docs["d0"] = "An edited document. " + docs["d0"]
    docs["new"] = sample_texts[20][:900]
    del docs["d9"]
    write_docs(inputs / "a.jsonl", docs)
    outcome, _ = run_once(tokenizer, inputs, db, "r2", delete_missing=True)
    assert (outcome.added, outcome.replaced, outcome.skipped, outcome.removed) == (1, 1, 8, 1)
    table = chunk_table(db)
    ids = table.column(s.DOC_ID).to_pylist()
    assert "d9" not in ids and "new" in ids
    new_d0 = set(table.filter(pa.compute.equal(table.column(s.DOC_ID), "d0")).column(s.CHUNK_ID).to_pylist())
    assert new_d0 and not (new_d0 & old_d0)  # no stale chunk of d0 survives
    # the table now equals a clean run over the edited inputs
    clean_db = db.parent / "clean"
    run_once(tokenizer, inputs, clean_db, "c1")
    assert chunk_table(clean_db).column(s.CHUNK_ID) == table.column(s.CHUNK_ID)


def test_partly_committed_document_is_completed_not_duplicated(tokenizer, corpus):
    inputs, db, _ = corpus
    run_once(tokenizer, inputs, db, "r1")
    full = chunk_table(db)
    long_doc = max(set(full.column(s.DOC_ID).to_pylist()), key=full.column(s.DOC_ID).to_pylist().count)
    lancedb.connect(str(db)).open_table("chunks").delete(f"doc_id = '{long_doc}' AND chunk_index > 0")
    outcome, _embed = run_once(tokenizer, inputs, db, "r2")
    assert (outcome.replaced, outcome.skipped) == (1, 9)
    assert chunk_table(db).column(s.CHUNK_ID) == full.column(s.CHUNK_ID)


def test_duplicate_ids_in_one_run_keep_the_first_copy(tokenizer, corpus):
    inputs, db, docs = corpus
    (inputs / "b.jsonl").write_text(json.dumps({"id": "d1", "text": "A different text under a taken id."}) + "\n")
    outcome, _ = run_once(tokenizer, inputs, db, "r1")
    rejects = lancedb.connect(str(db)).open_table("rejects").to_arrow().to_pylist()
    assert [(r["doc_id"], r["reason"], r["source"].endswith("b.jsonl")) for r in rejects] == [
        ("d1", "duplicate_id", True)
    ]
    assert outcome.totals.docs_in == 11 and outcome.totals.docs == 10
    d1 = chunk_table(db).filter(pa.compute.equal(chunk_table(db).column(s.DOC_ID), "d1"))
    assert docs["d1"].startswith(d1.sort_by(s.CHUNK_INDEX).column(s.TEXT)[0].as_py())


def test_chunk_the_engine_refuses_rejects_its_whole_document(tokenizer, corpus):
    inputs, db, docs = corpus
    victim_token = tokenizer.encode("zebra")[0][0]
    docs = dict(docs)
    docs["d3"] = docs["d3"] + " zebra"
    write_docs(inputs / "a.jsonl", docs)
    outcome, _ = run_once(tokenizer, inputs, db, "r1", refuse_token=victim_token)
    rejects = lancedb.connect(str(db)).open_table("rejects").to_arrow().to_pylist()
    assert [(r["doc_id"], r["reason"]) for r in rejects] == [("d3", "engine_rejected")]
    assert "out of vocabulary" in rejects[0]["detail"]
    assert "d3" not in chunk_table(db).column(s.DOC_ID).to_pylist()
    assert (outcome.totals.docs, outcome.totals.rejected, outcome.totals.docs_in) == (9, 1, 10)


def test_several_refused_chunks_of_one_document_give_one_reject(tokenizer, corpus):
    inputs, db, docs = corpus
    victim_token = tokenizer.encode("zebra")[0][0]
    docs = dict(docs)
    docs["d3"] = "zebra " + docs["d3"] + " zebra"
    write_docs(inputs / "a.jsonl", docs)
    outcome, _ = run_once(tokenizer, inputs, db, "r1", refuse_token=victim_token)
    rejects = lancedb.connect(str(db)).open_table("rejects").to_arrow().to_pylist()
    assert [(r["doc_id"], r["reason"]) for r in rejects] == [("d3", "engine_rejected")]
    assert (outcome.totals.docs, outcome.totals.rejected, outcome.totals.docs_in) == (9, 1, 10)


def test_unreadable_shard_is_rejected_and_blocks_removal(tokenizer, corpus):
    inputs, db, _ = corpus
    run_once(tokenizer, inputs, db, "r1")
    (inputs / "a.jsonl").rename(inputs / "a.parquet")  # now unreadable as parquet: its docs vanish from the run
    outcome, _ = run_once(tokenizer, inputs, db, "r2", delete_missing=True)
    reasons = [r["reason"] for r in lancedb.connect(str(db)).open_table("rejects").to_arrow().to_pylist()]
    assert reasons == ["unreadable_parquet"]
    assert outcome.removed == 0 and chunk_table(db).num_rows > 0


def test_dangling_link_among_the_inputs_is_rejected_not_ignored(tokenizer, corpus):
    inputs, db, _ = corpus
    (inputs / "gone.jsonl").symlink_to(inputs / "no-such-target.jsonl")
    outcome, _ = run_once(tokenizer, inputs, db, "r1")
    [reject] = lancedb.connect(str(db)).open_table("rejects").to_arrow().to_pylist()
    assert (reject["reason"], reject["source"]) == ("unreadable", "gone.jsonl")
    assert outcome.totals.docs_in == 11


def test_file_gone_between_listing_and_reading_is_rejected(tokenizer, corpus):
    inputs, _, _ = corpus
    cfg = InputSettings(paths=[str(inputs)])
    fs, shards = list_shards(cfg)
    (inputs / "a.jsonl").unlink()
    rows = pa.concat_tables(PieceReader(fs, cfg)(Piece(shards[0])))
    assert rows.column(s.REJECT_REASON).to_pylist() == ["unreadable"]
    assert rows.column(s.SOURCE).to_pylist() == ["a.jsonl"]


def test_second_writer_on_a_locked_store_is_refused(tmp_path):
    with store_lock(str(tmp_path / "db"), "", "run-a"):
        with pytest.raises(StoreError, match=r"another ingestion run \(run run-a, pid \d+"):
            with store_lock(str(tmp_path / "db"), "", "run-b"):
                pass
    with store_lock(str(tmp_path / "db"), "", "run-c"):
        pass  # released when the first run ended
    with store_lock(str(tmp_path / "db"), "other_", "run-d"), store_lock(str(tmp_path / "db"), "", "run-e"):
        pass  # another table prefix is another lock


def test_a_table_from_before_the_reader_columns_gains_them_from_its_own_and_the_next_run_appends(
    tokenizer, tmp_path, sample_texts
):
    inputs, db = tmp_path / "in.jsonl", tmp_path / "db"
    write_docs(inputs, {"a": sample_texts[0], "b": sample_texts[1]})
    run_once(tokenizer, inputs, db, "r1")
    lancedb.connect(str(db)).open_table("chunks").drop_columns(s.READER_COLUMNS)  # as a store of before them
    assert LanceStore(str(db)).check_chunks_table("fake") == 8  # still ours, not a foreign table
    write_docs(inputs, {"a": sample_texts[0], "b": sample_texts[1], "c": sample_texts[2]})
    run_once(tokenizer, inputs, db, "r2")
    table = chunk_table(db)
    assert table.column(s.ID).to_pylist() == table.column(s.CHUNK_ID).to_pylist()
    metadata = table.column(s.METADATA).to_pylist()
    assert metadata == table.select(s.METADATA_FIELDS).to_pylist()
    assert {m[s.DOC_ID] for m in metadata} == {"a", "b", "c"}
