"""The run's own logic in this process (the in-process executor, a fake engine, a real LanceDB directory and the
packaged model's real tokenizer): the `runs` row from its start to success, failure, interruption or refusal, the
summary line, the live metrics, and what a rerun embeds. The same run on Ray: tests/ray/ with the stand-in engine,
tests/engine/ with the real one."""

from __future__ import annotations

import json
import os
import re
import signal
from datetime import timedelta

import lancedb
import pytest

from pipeline import schema as s
from pipeline.errors import ConfigError, EngineError, ForeignTable, RunInterrupted
from pipeline.plan.index import unit_length
from pipeline.run.executor import FleetReport
from pipeline.run.in_process import InProcessExecutor
from pipeline.run.ingest import run_ingest, with_losses
from pipeline.schema import RunStatus
from pipeline.settings import Settings
from pipeline.store.lance_store import LanceStore
from pipeline.store.maintenance import search_metric
from pipeline.store.runs import RunLog
from tests.fakes import FakeEmbedder

pytestmark = pytest.mark.unit

DOCS = 12
SUMMARY = re.compile(
    r"Ingestion took [\d.]+ s \(first engine ready at [\d.]+ s\): (\d+) docs, ([\d,]+) chunks, ([\d,]+) tokens, "
    r"[\d,]+ tokens/s, (\d+) rejected; (\d+) added, (\d+) replaced, (\d+) unchanged, (\d+) removed; busy s: "
    r"read [\d.]+, parse [\d.]+, chunk [\d.]+, engine [\d.]+, engine idle [\d.]+, write [\d.]+; engines 1 x [\d.,]+ "
    r"s, busy \d+%, [\d.e+-]+ device-hours(; cost [\d.,e+-]+ \([\d.,e+-]+ per million tokens\))?"
)


@pytest.fixture
def corpus(tmp_path, sample_texts):
    root = tmp_path / "corpus"
    root.mkdir()
    lines = [json.dumps({"id": f"d{i}", "text": sample_texts[i]}) for i in range(DOCS)] + ["{not json"]
    (root / "a.jsonl").write_text("\n".join(lines) + "\n")
    return root


def settings_for(corpus, db, minilm_path, **sections) -> Settings:
    base = {
        "input": {"paths": [str(corpus)]},
        "model": {"path": str(minilm_path), "name": "minilm", "device": "cpu"},
        "store": {"uri": str(db)},
        "run": {"batch_rows": 8, "commit_rows": 16, "device_hour_price": 2.0},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return Settings(**base)


def runs(db) -> list:
    return sorted(RunLog(LanceStore(str(db))).recent(100), key=lambda r: r.started_at)


def chunk_count(db) -> int:
    return lancedb.connect(str(db)).open_table("chunks").count_rows()


class Failing(FakeEmbedder):
    """A fake engine that fails (or is told to stop) on its `at`-th call."""

    def __init__(self, at: int, then):
        super().__init__(dim=16)
        self.calls, self.at, self.then = 0, at, then

    def embed(self, token_ids):
        self.calls += 1
        if self.calls == self.at:
            self.then()
        return super().embed(token_ids)


def test_a_run_records_its_row_says_its_summary_and_a_rerun_embeds_nothing(
    corpus, tmp_path, minilm_path, sample_texts
):
    db, engine = tmp_path / "db", FakeEmbedder(dim=16)
    executor = InProcessExecutor(engine)
    result = run_ingest(settings_for(corpus, db, minilm_path), executor)
    [row] = runs(db)
    assert row.status == result.status == RunStatus.SUCCEEDED and row.error is None and row.missing() == []
    said = SUMMARY.fullmatch(result.summary_line())
    assert said, result.summary_line()
    docs, chunks, tokens, rejected, added, replaced, unchanged, removed = (
        int(g.replace(",", "")) for g in said.groups()[:8]
    )
    assert (docs, rejected, added, replaced, unchanged, removed) == (DOCS, 1, DOCS, 0, 0, 0)
    assert (row.docs, row.rejected, row.added, row.chunks, row.tokens) == (docs, rejected, added, chunks, tokens)
    assert row.docs_in == row.docs + row.skipped + row.rejected == DOCS + 1
    assert row.chunks == chunk_count(db) and row.groups == -(-chunks // 16) and row.engine_tokens == tokens
    assert row.finished_at == row.started_at + timedelta(seconds=row.wall_s)
    assert 0 <= row.startup_s < row.wall_s and json.loads(row.engine)["engine"] == "fake"
    assert row.cost == pytest.approx(row.device_hours * 2.0) and row.maintenance is not None
    assert json.loads(row.lost_nodes) == [] and (row.engines_lost, row.engine_restarts) == (0, 0)
    assert row.estimate_s is None  # no run before it to take a rate from
    table = lancedb.connect(str(db)).open_table("chunks")
    made = s.table_meta(table.schema)
    stored = table.to_arrow().column(s.VECTOR)
    assert (made["model"], made["dim"], made["vector_dtype"], made["pooling"]) == ("minilm", 16, "float32", "mean")
    assert made["normalized"] == unit_length(stored) and made["metric"] == ("dot" if made["normalized"] else "cosine")
    assert made["model_fingerprint"] == json.loads(row.settings)["resolved"]["model_fingerprint"]
    assert made["chunking"] == table.to_arrow().column(s.CHUNKING)[0].as_py()
    assert search_metric(table, similarity=None) == made["metric"]  # what jobs.query searches with
    live = executor.registry
    assert live.get_sample_value("embedpipe_chunks_total", {"store": str(db)}) == row.chunks
    assert live.get_sample_value("embedpipe_tokens_embedded_total", {"store": str(db)}) == row.tokens
    assert live.get_sample_value("embedpipe_documents_total", {"store": str(db), "fate": "new"}) == row.added
    assert live.get_sample_value("embedpipe_run_status", {"store": str(db), "status": "succeeded"}) == 1
    assert live.get_sample_value("embedpipe_run_status", {"store": str(db), "status": "running"}) == 0

    processed = engine.tokens_processed
    again = run_ingest(settings_for(corpus, db, minilm_path), InProcessExecutor(engine))
    assert engine.tokens_processed == processed, "a rerun with nothing new called the engine"
    last = runs(db)[-1]
    assert (last.skipped, last.added, last.chunks, last.tokens, last.rejected) == (DOCS, 0, 0, 0, 1)
    assert last.estimate_s is None and "estimated" not in again.summary_line()  # nothing embedded to project

    more = [json.dumps({"id": f"new{i}", "text": sample_texts[DOCS + i]}) for i in range(3)]
    (corpus / "b.jsonl").write_text("\n".join(more) + "\n")
    grown = run_ingest(settings_for(corpus, db, minilm_path), InProcessExecutor(engine))
    last = runs(db)[-1]
    assert (last.added, last.skipped) == (3, DOCS) and engine.tokens_processed == processed + last.tokens
    assert last.estimate_s > 0 and last.estimate_source.startswith("median of 1 earlier run")  # the run that embedded
    assert re.search(r"; estimated [\d.,]+ s from earlier runs' rate, took [\d.,]+ s", grown.summary_line())


def test_a_failing_engine_fails_the_run_whose_row_keeps_what_it_committed(corpus, tmp_path, minilm_path):
    db = tmp_path / "db"

    def broken():
        raise EngineError("the engine's GPU fell off the bus")

    with pytest.raises(EngineError, match="fell off the bus"):
        run_ingest(settings_for(corpus, db, minilm_path), InProcessExecutor(Failing(at=5, then=broken)))
    [row] = runs(db)
    assert row.status == RunStatus.FAILED and row.error == "EngineError: the engine's GPU fell off the bus"
    assert row.groups >= 1 and row.chunks == chunk_count(db) > 0 and row.finished_at is not None
    assert row.missing() == []


def test_sigterm_ends_the_run_interrupted_after_the_commit_in_flight_and_a_rerun_completes_it(
    corpus, tmp_path, minilm_path
):
    db = tmp_path / "db"
    stop = Failing(at=5, then=lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(RunInterrupted) as raised:
        run_ingest(settings_for(corpus, db, minilm_path), InProcessExecutor(stop))
    assert str(raised.value).startswith("interrupted by SIGTERM (the driver was asked to stop)")
    assert re.search(r"; \d+ groups \(\d+ chunks\) committed before it stay, and a rerun resumes", str(raised.value))
    [row] = runs(db)
    assert row.status == RunStatus.INTERRUPTED and row.error.startswith("interrupted by SIGTERM")
    assert row.chunks == chunk_count(db) > 0
    run_ingest(settings_for(corpus, db, minilm_path), InProcessExecutor(FakeEmbedder(dim=16)))
    clean = tmp_path / "clean"
    run_ingest(settings_for(corpus, clean, minilm_path), InProcessExecutor(FakeEmbedder(dim=16)))
    ids = lancedb.connect(str(db)).open_table("chunks").to_arrow().column(s.CHUNK_ID).to_pylist()
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(
        lancedb.connect(str(clean)).open_table("chunks").to_arrow().column(s.CHUNK_ID).to_pylist()
    )
    assert [r.status for r in runs(db)] == [RunStatus.INTERRUPTED, RunStatus.SUCCEEDED]


def test_a_refused_run_records_nothing_and_never_calls_its_engine(corpus, tmp_path, minilm_path):
    db, engine = tmp_path / "db", FakeEmbedder(dim=16)
    overlapping = settings_for(corpus, db, minilm_path, chunk={"overlap_tokens": 200})
    with pytest.raises(ConfigError, match=r"chunk.overlap_tokens=200 leaves no room"):
        run_ingest(overlapping, InProcessExecutor(engine))
    assert engine.tokens_processed == 0 and runs(db) == []
    with pytest.raises(ConfigError, match=r"model\.device = cuda but this machine has no GPU"):
        run_ingest(settings_for(corpus, db, minilm_path, model={"device": "cuda"}), InProcessExecutor(engine))
    assert runs(db) == []


def test_a_chunks_table_another_writer_replaced_is_refused_and_nothing_is_appended(corpus, tmp_path, minilm_path):
    db, engine = tmp_path / "db", FakeEmbedder(dim=16)
    run_ingest(settings_for(corpus, db, minilm_path), InProcessExecutor(engine))
    # what LangChain's LanceDB store does on add_texts with its default mode="overwrite", table_name="chunks"
    langchain_rows = [{"vector": [0.25] * 16, "id": "lc-1", "text": "hello", "metadata": {"source": "notes.txt"}}]
    lancedb.connect(str(db)).create_table("chunks", data=langchain_rows, mode="overwrite")
    before, processed = runs(db), engine.tokens_processed
    with pytest.raises(ForeignTable) as refused:
        run_ingest(settings_for(corpus, db, minilm_path), InProcessExecutor(engine))
    said = str(refused.value)
    assert "table 'chunks'" in said and "is not one this pipeline wrote" in said and "no embedpipe metadata" in said
    assert "'chunk_id'" in said and "'doc_hash'" in said and "appends nothing" in said and "restore" in said
    assert engine.tokens_processed == processed and runs(db) == before  # nothing started, nothing recorded
    table = lancedb.connect(str(db)).open_table("chunks")
    assert table.count_rows() == 1 and set(table.schema.names) == {"vector", "id", "text", "metadata"}


def test_a_failure_after_the_row_starts_leaves_it_failed_with_the_error(corpus, tmp_path, minilm_path):
    db = tmp_path / "db"
    db.mkdir()
    (db / "rejects.lance").write_text("not a table")  # a file where the rejects table's directory should be
    with pytest.raises(Exception, match=r"rejects\.lance"):
        run_ingest(settings_for(corpus, db, minilm_path), InProcessExecutor(FakeEmbedder(dim=16)))
    [row] = runs(db)
    assert row.status == RunStatus.FAILED and "rejects.lance" in row.error and row.finished_at is not None


def test_a_failure_says_what_the_cluster_lost_and_what_the_run_kept():
    kept = "3 groups (48 chunks) committed before it stay"
    lost = FleetReport(engines_lost=2, engine_restarts=1, engines_hung=0, lost_nodes=["10.0.0.7 (ab12cd34)"])
    said = str(with_losses(EngineError("every engine is lost"), lost, kept))
    assert said == (
        "every engine is lost. nodes lost: 10.0.0.7 (ab12cd34) (engines lost: 2); engine restarts: 1; " + kept
    )
    quiet = EngineError("no engine answered")
    assert with_losses(quiet, FleetReport(0, 0, 0, []), kept) is quiet
    assert "(engines lost: ?)" in str(with_losses(quiet, FleetReport(lost_nodes=["n"]), kept))
