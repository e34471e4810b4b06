"""The driver's side of the write stage: commit each group of fragments atomically, count from the records.

A group's new chunks and the removal of the chunks they replace (older versions of the documents it writes)
land in one Lance transaction (an Update when something is removed, else an Append), tagged with the run and
group. A group seen before (Ray re-ran its task) is skipped, and a commit whose acknowledgement was lost is
recognized in the versions that followed, so no group is applied twice. The driver holds counts, ids of the
documents the run changes and fragment metadata, never chunk rows. No ray or vllm imports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
import structlog

from pipeline import schema as s
from pipeline.errors import StoreError
from pipeline.records import GroupRecord
from pipeline.stats import STAGES, RunTotals
from pipeline.store.lance_store import LanceStore
from pipeline.store.sql import sql_list, sql_str

log = structlog.get_logger(__name__)
RUN_PROPERTY, GROUP_PROPERTY = "embedpipe.run", "embedpipe.group"
DELETE_IDS = 1000


@dataclass(frozen=True)
class RunOutcome:
    totals: RunTotals
    added: int
    replaced: int
    skipped: int
    removed: int
    stages: dict[str, float] = field(default_factory=dict)
    """Busy seconds per stage, summed over workers: read_s, parse_s, chunk_s, embed_s, wait_s, write_s."""
    chunks_discarded: int = 0
    """Embedded but not stored: chunks of documents the engine refused in part."""
    tokens_discarded: int = 0
    engine_tokens: int = 0
    """Tokens the engines report having processed, kept or discarded; equals the chunker's count."""
    first_engine_ready: datetime | None = None
    groups: int = 0
    """Groups of fragments committed (one chunks-table version each, plus one per removal batch)."""
    record_bytes: int = 0
    """Bytes of the group records that reached the driver: its whole share of the run's data."""
    nodes: tuple[str, ...] = ()
    """Nodes whose tasks wrote the committed fragments."""
    commit_s: float = 0.0
    """Driver seconds spent committing; the rest of write_s is the workers' fragment writing."""


class RunCommitter:
    def __init__(self, store: LanceStore, run_id: str, metadata: dict):
        self.store = store
        self.run_id = run_id
        self.metadata = metadata
        self.stages = dict.fromkeys(STAGES, 0.0)
        self.engine_info: dict | None = None
        self.engine_ready: list[datetime] = []
        self.applied: set[str] = set()
        self.failed: dict[str, str | None] = {}
        """Documents the engine refused: doc_id -> their fate (new or changed)."""
        self.removal: list[str] = []
        self.no_id_rejects = 0
        self.counts = dict.fromkeys(("rows", "tokens", s.Fate.NEW, s.Fate.CHANGED, s.Fate.UNCHANGED, "rejected"), 0)
        self.embedded = RunTotals()
        self.engine_tokens = 0
        self.record_bytes = 0
        self.groups = 0
        self.nodes: set[str] = set()
        self.removed = 0
        self.commit_s = 0.0
        """Seconds the driver spent committing (chunks, rejects, batch stats); write_s adds the workers' writing."""
        self._discarded = RunTotals()

    # -- groups -------------------------------------------------------------------------------------------
    def add(self, record: GroupRecord) -> None:
        """One write task's record: commit its fragments, then its rejects and batch stats."""
        self.record_bytes += len(record.to_json())
        if record.group in self.applied:
            log.warning("group_seen_again", group=record.group, reason="Ray re-ran a write task; skipped")
            return
        started = time.perf_counter()
        try:
            if record.fragments:
                self._commit_group(record)
                self.nodes.add(record.node)
            self._side_rows(record)
        finally:
            elapsed = time.perf_counter() - started
            self.commit_s += elapsed
            self.stages["write_s"] += elapsed
        self.applied.add(record.group)
        self.counts["rows"] += record.rows
        self.counts["tokens"] += record.tokens
        for fate in (s.Fate.NEW, s.Fate.CHANGED, s.Fate.UNCHANGED):
            self.counts[fate] += record.count(fate)
        self.removal.extend(record.removed_ids)
        if record.fragments or record.rejects:
            log.info("rows_committed", chunks=record.rows, rejected=len(record.rejects), node=record.node)

    def _side_rows(self, record: GroupRecord) -> None:
        for stage, seconds in record.stages.items():
            if stage in self.stages:
                self.stages[stage] += seconds
        stats = []
        for payload in record.batches:
            batch = payload.batch
            stats.append(batch.to_row(self.run_id))
            self.stages["wait_s"] += batch.wait_s
            self.stages["embed_s"] += batch.embed_s
            self.engine_tokens += batch.engine_tokens
            self.embedded += RunTotals(chunks=batch.n_chunks, tokens=batch.n_tokens)
            if payload.engine is not None:
                self.engine_ready.append(datetime.fromisoformat(payload.engine["ready_at"]))
                self.engine_info = self.engine_info or payload.engine
        rejects = []
        for r in record.rejects:
            fate = r.pop(s.FATE, None)
            if r["reason"] == s.RejectReason.ENGINE_REJECTED:
                if r[s.DOC_ID] in self.failed:
                    continue  # another refused chunk of a document already rejected: one reject per document
                self.failed[r[s.DOC_ID]] = fate
            self.no_id_rejects += r[s.DOC_ID] is None
            rejects.append({**r, "rejected_at": datetime.fromisoformat(r["rejected_at"])})
        self.counts["rejected"] += len(rejects)
        if rejects:
            self.store.table(self.store.names.rejects, s.REJECTS_SCHEMA).add(
                pa.Table.from_pylist(rejects, schema=s.REJECTS_SCHEMA)
            )
        if stats:
            self.store.table(self.store.names.batches, s.BATCHES_SCHEMA).add(
                pa.Table.from_pylist(stats, schema=s.BATCHES_SCHEMA)
            )

    def _commit_group(self, record: GroupRecord) -> None:
        from lance import LanceOperation
        from lance.fragment import FragmentMetadata

        new = [FragmentMetadata.from_json(f) for f in record.fragments]
        dataset = self.store.chunks_dataset()
        if dataset is None:
            schema = s.chunks_table_schema(record.dim, self.metadata)
            self._commit(None, LanceOperation.Overwrite(schema, new), record.group)
            return
        self.store.check_chunks_table(self.metadata["model"], record.dim, dataset.schema)
        stale = f"{s.RUN_ID} != {sql_str(self.run_id)} AND {s.DOC_ID} IN ({sql_list(record.replaced_ids)})"
        removed, updated = _deletions(dataset, stale) if record.replaced_ids else ([], [])
        if removed or updated:
            op = LanceOperation.Update(removed_fragment_ids=removed, updated_fragments=updated, new_fragments=new)
        else:
            op = LanceOperation.Append(new)
        self._commit(dataset, op, record.group)

    def _commit(self, dataset, operation, group: str) -> None:
        """One transaction; if its outcome is unknown (the call failed), look for it before trying again."""
        import lance
        from lance.dataset import Transaction

        read_version = dataset.version if dataset is not None else 0
        properties = {RUN_PROPERTY: self.run_id, GROUP_PROPERTY: group}
        uri, options = self.store.chunks_uri, self.store.storage_options
        for attempt in range(3):
            try:
                lance.LanceDataset.commit(
                    uri,
                    Transaction(read_version, operation, transaction_properties=properties),
                    storage_options=options,
                )
                break
            except Exception as exc:
                if self._landed(group, read_version):
                    log.warning("commit_recovered", group=group, error=str(exc)[:200])
                    break
                if attempt == 2:
                    msg = f"cannot commit a group of chunks to {uri}: {type(exc).__name__}: {exc}"
                    raise StoreError(msg) from exc
                log.warning("commit_retried", group=group, error=str(exc)[:200])
        self.groups += 1

    def _landed(self, group: str, since: int) -> bool:
        dataset = self.store.chunks_dataset()
        if dataset is None:
            return False
        for version in range(since + 1, dataset.version + 1):
            transaction = dataset.read_transaction(version)
            if transaction is not None and (transaction.transaction_properties or {}).get(GROUP_PROPERTY) == group:
                return True
        return False

    # -- end of run ---------------------------------------------------------------------------------------
    def finish(self, delete_missing: bool) -> RunOutcome:
        """Drop what the run wrote for documents the engine refused; remove documents gone from the inputs."""
        started = time.perf_counter()
        self._finish(delete_missing)
        elapsed = time.perf_counter() - started
        self.commit_s += elapsed
        self.stages["write_s"] += elapsed
        return self.outcome()

    def _finish(self, delete_missing: bool) -> None:
        if self.failed:
            self._discard_failed()
        if delete_missing and self.removal:
            if self.no_id_rejects:
                log.warning("removal_skipped", reason=f"{self.no_id_rejects} inputs could not be read whole")
            else:
                ids = sorted(set(self.removal))
                for i in range(0, len(ids), DELETE_IDS):
                    self._delete(f"{s.DOC_ID} IN ({sql_list(ids[i : i + DELETE_IDS])})", f"remove-{i}")
                self.removed = len(ids)

    def _discard_failed(self) -> None:
        dataset = self.store.chunks_dataset()
        if dataset is None:
            return
        mine = f"{s.RUN_ID} = {sql_str(self.run_id)} AND {s.DOC_ID} IN ({sql_list(sorted(self.failed))})"
        rows = dataset.to_table(columns=[s.DOC_ID, s.CHUNK_INDEX, s.N_TOKENS], filter=mine)
        if not len(rows):
            return
        self._discarded = RunTotals(chunks=len(rows), tokens=pc.sum(rows.column(s.N_TOKENS)).as_py() or 0)
        firsts = rows.filter(pc.equal(rows.column(s.CHUNK_INDEX), 0)).column(s.DOC_ID).to_pylist()
        for doc_id in firsts:
            key = s.Fate.CHANGED if self.failed[doc_id] == s.Fate.CHANGED else s.Fate.NEW
            self.counts[key] -= 1
        self._delete(mine, "discard")

    def _delete(self, predicate: str, label: str) -> None:
        from lance import LanceOperation

        dataset = self.store.chunks_dataset()
        if dataset is None:
            return
        removed, updated = _deletions(dataset, predicate)
        if removed or updated:
            op = LanceOperation.Delete(updated_fragments=updated, deleted_fragment_ids=removed, predicate=predicate)
            self._commit(dataset, op, f"{label}-{self.run_id}")

    def outcome(self) -> RunOutcome:
        c = self.counts
        chunks, tokens = c["rows"] - self._discarded.chunks, c["tokens"] - self._discarded.tokens
        docs = c[s.Fate.NEW] + c[s.Fate.CHANGED]
        return RunOutcome(
            totals=RunTotals(
                docs_in=docs + c["unchanged"] + c["rejected"],
                docs=docs,
                chunks=chunks,
                tokens=tokens,
                rejected=c["rejected"],
            ),
            added=c[s.Fate.NEW],
            replaced=c[s.Fate.CHANGED],
            skipped=c["unchanged"],
            removed=self.removed,
            stages=dict(self.stages),
            engine_tokens=self.engine_tokens,
            first_engine_ready=min(self.engine_ready, default=None),
            chunks_discarded=self.embedded.chunks - chunks,
            tokens_discarded=self.embedded.tokens - tokens,
            groups=self.groups,
            record_bytes=self.record_bytes,
            nodes=tuple(sorted(self.nodes)),
            commit_s=self.commit_s,
        )


def _deletions(dataset, predicate: str) -> tuple[list[int], list]:
    """Fragments that lose every row to the predicate, and new metadata (deletion files) for those that lose
    some. Only the fragments holding matching rows are touched: a B-tree on doc_id finds them."""
    hits = dataset.to_table(columns=[s.DOC_ID], filter=predicate, with_row_address=True)
    fragment_ids = sorted({address >> 32 for address in hits.column("_rowaddr").to_pylist()})
    removed, updated = [], []
    for fragment_id in fragment_ids:
        meta = dataset.get_fragment(fragment_id).delete(predicate)
        if meta is None:
            removed.append(fragment_id)
        else:
            updated.append(meta)
    return removed, updated
