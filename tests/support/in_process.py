"""The store's side of a run in this process, without the run's row: the in-process executor's stages, each group
committed and counted as the run does. For tests of commits, re-ingestion and search on a real LanceDB directory with
any embedder and chunker."""

from __future__ import annotations

from pipeline.records import GroupRecord
from pipeline.run.accounts import RunAccounts, RunOutcome
from pipeline.run.in_process import InProcessFleet, stage_records
from pipeline.settings import InputSettings, RunSettings
from pipeline.stages.chunking import Chunker
from pipeline.stages.embed import Embedder, EmbedStep
from pipeline.stages.sources import Inputs
from pipeline.store.group_commit import GroupCommitter
from pipeline.store.lance_store import LanceStore
from pipeline.store.session import open_session


class CommittedRun:
    """Groups committed and counted as the run does it (pipeline/run/ingest.py: Execution.embed)."""

    def __init__(self, store: LanceStore, run_id: str, metadata: dict):
        self.committer = GroupCommitter(store, run_id, metadata)
        self.accounts = RunAccounts()

    def add(self, record: GroupRecord) -> None:
        self.accounts.group(record, self.committer.add(record))

    def finish(self, delete_missing: bool = False) -> RunOutcome:
        self.accounts.finished(self.committer.finish(delete_missing))
        return self.accounts.outcome(self.committer.groups)


def ingest_in_process(
    store: LanceStore,
    run_id: str,
    cfg: InputSettings,
    chunker: Chunker,
    embedder: Embedder,
    metadata: dict,
    *,
    commit_rows: int,
    embed_rows: int = 64,
    delete_missing: bool = False,
) -> tuple[RunOutcome, EmbedStep]:
    dim = store.check_chunks_table(metadata["model"])
    session = open_session(store, run_id, chunker.plan.fingerprint, metadata, dim)
    fleet = InProcessFleet(embedder)
    run = RunSettings(commit_rows=commit_rows, batch_rows=embed_rows, delete_missing=delete_missing)
    committed = CommittedRun(store, run_id, metadata)
    for record in stage_records(cfg, run, chunker, Inputs.listed(cfg), session, fleet):
        committed.add(record)
    return committed.finish(delete_missing), fleet.step
