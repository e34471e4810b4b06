"""Group commits under failure: a lost acknowledgement, a record delivered twice, a writer that died after
writing its files, a driver killed between commits. Each ends with every chunk id once and the counts right.
Also: a changed document's replacement is one version, never a moment with both texts stored."""

from __future__ import annotations

import json
from pathlib import Path

import lance
import lancedb
import pyarrow as pa
import pytest

from pipeline import schema as s
from pipeline.plan.chunk_plan import ChunkPlan
from pipeline.records import GroupRecord
from pipeline.run.in_process import planned_documents
from pipeline.settings import InputSettings
from pipeline.stages.chunk_step import ChunkStep
from pipeline.stages.chunking import Chunker
from pipeline.stages.embed import EmbedStep
from pipeline.stages.tokenizer import load_tokenizer
from pipeline.store.group_commit import GROUP_PROPERTY
from pipeline.store.lance_store import LanceStore
from pipeline.store.runs import RunLog
from tests.fakes import FakeEmbedder
from tests.support.in_process import CommittedRun, ingest_in_process
from tests.support.stores import run_record

pytestmark = pytest.mark.unit

PLAN = ChunkPlan(max_tokens=64, overlap_tokens=0, boundary_window=0.15, model_id="fake")
META = {"model": "fake"}


@pytest.fixture(scope="module")
def chunker(minilm_path):
    return Chunker(load_tokenizer(minilm_path), PLAN)


@pytest.fixture
def inputs(tmp_path, sample_texts) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    docs = {f"d{i}": t[:1200] for i, t in enumerate(sample_texts[:8])}
    (folder / "a.jsonl").write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in docs.items()))
    return folder


def records(store: LanceStore, inputs: Path, chunker: Chunker, run_id: str, commit_rows: int) -> list[GroupRecord]:
    """What the write tasks of a run over `inputs` would send the driver, in order."""
    planned = planned_documents(InputSettings(paths=[str(inputs)]), PLAN.fingerprint, store.stored_keys())
    embedded = EmbedStep(FakeEmbedder(dim=8), "a")(ChunkStep(chunker)(planned))
    writer = store.chunk_writer(run_id, "fake", PLAN.fingerprint, META)
    return [writer.write(embedded.slice(i, commit_rows)) for i in range(0, len(embedded), commit_rows)]


def chunk_ids(db: Path) -> list[str]:
    return lancedb.connect(str(db)).open_table("chunks").to_arrow().column(s.CHUNK_ID).to_pylist()


def clean_ids(tmp_path: Path, inputs: Path, chunker: Chunker) -> list[str]:
    ingest_in_process(
        LanceStore(str(tmp_path / "clean")),
        "c",
        InputSettings(paths=[str(inputs)]),
        chunker,
        FakeEmbedder(8),
        META,
        commit_rows=1000,
    )
    return sorted(chunk_ids(tmp_path / "clean"))


def test_commit_whose_acknowledgement_is_lost_is_recognized_not_repeated(tmp_path, inputs, chunker, monkeypatch):
    store = LanceStore(str(tmp_path / "db"))
    store.ensure_side_tables()
    recs = records(store, inputs, chunker, "r1", commit_rows=10)
    committer = CommittedRun(store, "r1", META)
    committer.add(recs[0])
    real_commit, calls = lance.LanceDataset.commit, []

    def commit_then_fail(*args, **kwargs):
        calls.append(real_commit(*args, **kwargs))
        if len(calls) == 1:
            raise OSError("connection reset before the reply")
        return calls[-1]

    monkeypatch.setattr(lance.LanceDataset, "commit", commit_then_fail)
    committer.add(recs[1])
    assert len(calls) == 1, "the landed commit was sent again"
    monkeypatch.undo()
    for rec in recs[2:]:
        committer.add(rec)
    versions_before = store.chunks_dataset().version
    committer.add(recs[1])  # the same group delivered again (Ray re-ran its task)
    assert store.chunks_dataset().version == versions_before
    outcome = committer.finish(delete_missing=False)
    ids = chunk_ids(tmp_path / "db")
    assert len(ids) == len(set(ids)) == outcome.totals.chunks
    assert sorted(ids) == clean_ids(tmp_path, inputs, chunker)
    groups = [store.chunks_dataset().read_transaction(v) for v in range(1, versions_before + 1)]
    assert len({t.transaction_properties[GROUP_PROPERTY] for t in groups if t}) == len(recs)


def test_writer_that_died_after_writing_leaves_orphan_files_not_rows(tmp_path, inputs, chunker):
    store = LanceStore(str(tmp_path / "db"))
    store.ensure_side_tables()
    first = records(store, inputs, chunker, "r1", commit_rows=10_000)  # its task died before reporting
    again = records(store, inputs, chunker, "r1", commit_rows=10_000)  # Ray's retry of the same rows
    assert first[0].group == again[0].group and first[0].fragments != again[0].fragments
    committer = CommittedRun(store, "r1", META)
    committer.add(again[0])
    committer.finish(delete_missing=False)
    ids = chunk_ids(tmp_path / "db")
    assert len(ids) == len(set(ids)) and sorted(ids) == clean_ids(tmp_path, inputs, chunker)
    files = list((tmp_path / "db" / "chunks.lance" / "data").iterdir())
    assert len(files) == 2  # one committed, one orphan for maintenance's cleanup


def test_driver_killed_between_commits_then_rerun_equals_a_clean_run(tmp_path, inputs, chunker):
    store = LanceStore(str(tmp_path / "db"))
    store.ensure_side_tables()
    recs = records(store, inputs, chunker, "dead", commit_rows=10)
    committer = CommittedRun(store, "dead", META)
    for rec in recs[:2]:  # then the driver died
        committer.add(rec)
    outcome, _ = ingest_in_process(
        store, "r2", InputSettings(paths=[str(inputs)]), chunker, FakeEmbedder(8), META, commit_rows=10
    )
    ids = chunk_ids(tmp_path / "db")
    assert len(ids) == len(set(ids)) and sorted(ids) == clean_ids(tmp_path, inputs, chunker)
    assert outcome.skipped > 0 and outcome.totals.docs_in == 8
    assert outcome.added + outcome.replaced + outcome.skipped == 8


def test_a_changed_document_is_replaced_in_one_version(tmp_path, inputs, chunker):
    store = LanceStore(str(tmp_path / "db"))
    cfg = InputSettings(paths=[str(inputs)])
    ingest_in_process(store, "r1", cfg, chunker, FakeEmbedder(8), META, commit_rows=10)
    lines = (inputs / "a.jsonl").read_text().splitlines()
    lines[3] = json.dumps({"id": "d3", "text": "Edited. " + json.loads(lines[3])["text"]})
    (inputs / "a.jsonl").write_text("\n".join(lines) + "\n")
    before = store.chunks_dataset().version
    outcome, _ = ingest_in_process(store, "r2", cfg, chunker, FakeEmbedder(8), META, commit_rows=10)
    assert (outcome.replaced, outcome.skipped) == (1, 7)
    uri = store.chunks_uri
    for version in range(before, store.chunks_dataset().version + 1):
        rows = lance.dataset(uri, version=version).to_table(columns=[s.DOC_ID, s.DOC_HASH], filter="doc_id = 'd3'")
        assert len(set(rows.column(s.DOC_HASH).to_pylist())) == 1, f"version {version} holds two texts of d3"
    latest = store.chunks_dataset()
    kinds = [type(latest.read_transaction(v).operation).__name__ for v in range(before + 1, latest.version + 1)]
    assert kinds == ["Update"]  # the new chunks and the removal of the old ones together
    assert pa.compute.count_distinct(store.chunks_dataset().to_table().column(s.CHUNK_ID)).as_py() == len(
        chunk_ids(tmp_path / "db")
    )


def test_a_failing_run_keeps_its_own_error_when_the_store_cannot_record_its_end(tmp_path, monkeypatch):
    from dataclasses import replace
    from datetime import timedelta

    from pipeline.errors import StoreError
    from pipeline.schema import RunStatus

    store = LanceStore(str(tmp_path))
    started = run_record("r1", "index", model="m")
    RunLog(store).start(started)

    def unreachable(*args, **kwargs):
        raise StoreError("the store is unreachable")

    monkeypatch.setattr(store, "table", unreachable)
    ended = replace(started, wall_s=1.0, finished_at=started.started_at + timedelta(seconds=1))
    # logged: the run's own error is what propagates
    RunLog(store).finish(replace(ended, status=RunStatus.FAILED, error="EngineError: it broke"))
    with pytest.raises(StoreError, match="unreachable"):  # a run that succeeded must not pass as recorded
        RunLog(store).finish(replace(ended, status=RunStatus.SUCCEEDED, maintenance="{}", maintenance_s=0.1))
    monkeypatch.undo()
    [row] = store.table(store.names.runs, s.RUNS_SCHEMA).to_arrow().to_pylist()
    assert row["status"] == "running"  # until the next run marks it interrupted
