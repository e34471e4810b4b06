"""The driver's side of the write stage: commit each group of fragments atomically, and at the run's end remove
what must go.

A group's new chunks and the removal of the chunks they replace (older versions of the documents it writes)
land in one Lance transaction (an Update when something is removed, else an Append), tagged with the run and
group. A group seen before (Ray re-ran its task) is skipped, and a commit whose acknowledgement was lost is
recognized in the versions that followed, so no group is applied twice. Its rejects and batch statistics go to
their tables. The driver holds ids of the documents the run changes and fragment metadata, never chunk rows; the
run's counts are kept apart (pipeline/run/accounts.py). No ray or vllm imports.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
import structlog

from pipeline import schema as s
from pipeline.errors import StoreError
from pipeline.plan.index import vector_metric
from pipeline.records import GroupRecord
from pipeline.stats import RunTotals
from pipeline.store.lance_store import LanceStore
from pipeline.store.sql import sql_list, sql_str

log = structlog.get_logger(__name__)
RUN_PROPERTY, GROUP_PROPERTY = "embedpipe.run", "embedpipe.group"
DELETE_IDS = 1000


@dataclass(frozen=True)
class Applied:
    """What committing one group did."""

    new: bool
    """False for a group seen before (Ray re-ran its task): nothing was applied, and nothing is to be counted."""
    rejected: int = 0
    """Reject rows recorded (an engine's refusals count once per document)."""
    seconds: float = 0.0


@dataclass(frozen=True)
class Finished:
    """What the end of a run removed."""

    discarded: RunTotals = field(default_factory=RunTotals)
    """Chunks and tokens the run had committed for documents the engine refused, removed again."""
    unstored: Counter = field(default_factory=Counter)
    """Of those documents, how many of each fate (new or changed) had their first chunk committed."""
    removed: int = 0
    """Documents removed because no input holds them."""
    seconds: float = 0.0


class GroupCommitter:
    """Commits a run's groups, each once, and at its end removes what the run must not leave."""

    def __init__(self, store: LanceStore, run_id: str, metadata: dict):
        self.store = store
        self.run_id = run_id
        self.metadata = metadata
        self.applied: set[str] = set()
        self.failed: dict[str, str | None] = {}
        """Documents the engine refused: doc_id -> their fate (new or changed)."""
        self.removal: list[str] = []
        """Stored documents no input holds (delete_missing)."""
        self.no_id_rejects = 0
        self.groups = 0
        """Transactions committed (one chunks-table version each)."""

    def add(self, record: GroupRecord) -> Applied:
        """One write task's record: commit its fragments, then its rejects and batch stats."""
        if record.group in self.applied:
            log.warning("group_seen_again", group=record.group, reason="Ray re-ran a write task; skipped")
            return Applied(new=False)
        started = time.perf_counter()
        if record.fragments:
            self._commit_group(record)
        rejected = self._side_rows(record)
        self.applied.add(record.group)
        self.removal.extend(record.removed_ids)
        if record.fragments or record.rejects:
            log.info("rows_committed", chunks=record.rows, rejected=len(record.rejects), node=record.node)
        return Applied(new=True, rejected=rejected, seconds=time.perf_counter() - started)

    def _side_rows(self, record: GroupRecord) -> int:
        """The group's rejects (an engine's refusals once per document) and batch statistics, in their tables."""
        rejects = []
        for r in record.rejects:
            r = dict(r)
            fate = r.pop(s.FATE, None)
            if r["reason"] == s.RejectReason.ENGINE_REJECTED:
                if r[s.DOC_ID] in self.failed:
                    continue  # another refused chunk of a document already rejected: one reject per document
                self.failed[r[s.DOC_ID]] = fate
            self.no_id_rejects += r[s.DOC_ID] is None
            rejects.append({**r, "rejected_at": datetime.fromisoformat(r["rejected_at"])})
        if rejects:
            self.store.table(self.store.names.rejects, s.REJECTS_SCHEMA).add(
                pa.Table.from_pylist(rejects, schema=s.REJECTS_SCHEMA)
            )
        stats = [payload.batch.to_row(self.run_id) for payload in record.batches]
        if stats:
            self.store.table(self.store.names.batches, s.BATCHES_SCHEMA).add(
                pa.Table.from_pylist(stats, schema=s.BATCHES_SCHEMA)
            )
        return len(rejects)

    def _commit_group(self, record: GroupRecord) -> None:
        from lance import LanceOperation
        from lance.fragment import FragmentMetadata

        new = [FragmentMetadata.from_json(f) for f in record.fragments]
        dataset = self.store.chunks_dataset()
        if dataset is None:
            schema = s.chunks_table_schema(record.dim, self.created_with(record))
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

    def created_with(self, record: GroupRecord) -> dict:
        """The new chunks table's metadata: the run's, and what its first vectors show (their width, whether they
        are of unit length, so the distance to search them with)."""
        normalized = bool(record.unit_length)
        metric = vector_metric(normalized, self.metadata.get("similarity"))
        return {
            **self.metadata,
            "dim": record.dim,
            "vector_dtype": "float32",
            "normalized": normalized,
            "metric": metric,
        }

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
    def finish(self, delete_missing: bool) -> Finished:
        """Drop what the run wrote for documents the engine refused; remove documents gone from the inputs."""
        started = time.perf_counter()
        discarded, unstored = self._discard_failed() if self.failed else (RunTotals(), Counter())
        removed = self._remove_missing() if delete_missing and self.removal else 0
        return Finished(discarded, unstored, removed, time.perf_counter() - started)

    def _remove_missing(self) -> int:
        if self.no_id_rejects:
            log.warning("removal_skipped", reason=f"{self.no_id_rejects} inputs could not be read whole")
            return 0
        ids = sorted(set(self.removal))
        for i in range(0, len(ids), DELETE_IDS):
            self._delete(f"{s.DOC_ID} IN ({sql_list(ids[i : i + DELETE_IDS])})", f"remove-{i}")
        return len(ids)

    def _discard_failed(self) -> tuple[RunTotals, Counter]:
        dataset = self.store.chunks_dataset()
        if dataset is None:
            return RunTotals(), Counter()
        mine = f"{s.RUN_ID} = {sql_str(self.run_id)} AND {s.DOC_ID} IN ({sql_list(sorted(self.failed))})"
        rows = dataset.to_table(columns=[s.DOC_ID, s.CHUNK_INDEX, s.N_TOKENS], filter=mine)
        if not len(rows):
            return RunTotals(), Counter()
        discarded = RunTotals(chunks=len(rows), tokens=pc.sum(rows.column(s.N_TOKENS)).as_py() or 0)
        firsts = rows.filter(pc.equal(rows.column(s.CHUNK_INDEX), 0)).column(s.DOC_ID).to_pylist()
        unstored = Counter(s.Fate.CHANGED if self.failed[d] == s.Fate.CHANGED else s.Fate.NEW for d in firsts)
        self._delete(mine, "discard")
        return discarded, unstored

    def _delete(self, predicate: str, label: str) -> None:
        from lance import LanceOperation

        dataset = self.store.chunks_dataset()
        if dataset is None:
            return
        removed, updated = _deletions(dataset, predicate)
        if removed or updated:
            op = LanceOperation.Delete(updated_fragments=updated, deleted_fragment_ids=removed, predicate=predicate)
            self._commit(dataset, op, f"{label}-{self.run_id}")


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
