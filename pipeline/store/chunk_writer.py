"""The write stage: workers write embedded chunk rows as Lance fragments and hand the driver only what it
needs to commit and count them. No ray or vllm imports; Ray calls ChunkWriter.write from a task."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schema as s
from pipeline.plan.index import unit_length
from pipeline.records import BatchPayload, GroupRecord
from pipeline.runtime.faults import fault_point
from pipeline.stats import ShardStats


@dataclass(frozen=True)
class ChunkWriter:
    """Where and how a run writes its chunk rows; picklable, sent to every write task."""

    uri: str
    """The chunks table's Lance dataset."""
    run_id: str
    model_id: str
    chunking: str
    metadata: dict
    storage_options: dict[str, str] | None = field(default=None, repr=False)
    vector_dtype: str = "float32"
    max_rows_per_file: int = 1 << 20

    def write(self, batch: pa.Table, node: str = "") -> GroupRecord:
        """One group of embedded rows (embedded_schema) in; fragments written; the group's record out.

        Chunks of a document the engine refused in this group are left out here; the driver removes any the
        run committed for it in other groups. The record is all that reaches the driver (no data).
        """
        from lance.fragment import write_fragments  # pylance, imported where fragments are written

        reasons = batch.column(s.REJECT_REASON)
        failed = pc.unique(batch.filter(pc.equal(reasons, s.RejectReason.ENGINE_REJECTED.value)).column(s.DOC_ID))
        keep = pc.and_(pc.is_valid(batch.column(s.CHUNK_ID)), pc.is_null(reasons))
        keep = pc.and_(keep, pc.invert(pc.is_in(batch.column(s.DOC_ID), failed)))
        chunks = batch.filter(keep)
        fates = batch.column(s.FATE)
        stages = (ShardStats.total(batch.column(s.SHARD_STATS).to_pylist()) or ShardStats()).stages()
        record = GroupRecord(
            group=group_id(batch),
            node=node,
            rows=len(chunks),
            tokens=pc.sum(chunks.column(s.N_TOKENS)).as_py() or 0,
            docs={
                s.Fate.NEW.value: _first_chunks(chunks, s.Fate.NEW),
                s.Fate.CHANGED.value: _first_chunks(chunks, s.Fate.CHANGED),
                s.Fate.UNCHANGED.value: int(
                    pc.sum(pc.fill_null(pc.equal(fates, s.Fate.UNCHANGED), False)).as_py() or 0
                ),
            },
            replaced_ids=_distinct(chunks.filter(pc.equal(chunks.column(s.FATE), s.Fate.CHANGED))),
            removed_ids=_distinct(batch.filter(pc.fill_null(pc.equal(fates, s.Fate.REMOVED), False))),
            rejects=_rejects(batch, self.run_id),
            batches=[BatchPayload.from_json(p) for p in batch.column(s.BATCH_STATS).drop_null().to_pylist()],
            stages=stages,
        )
        if not len(chunks):
            return record
        dim = chunks.schema.field(s.VECTOR).type.list_size
        rows = stored_chunk_rows(
            chunks, self.model_id, self.chunking, self.run_id, dim, self.metadata, self.vector_dtype
        )
        started = time.perf_counter()
        fragments = write_fragments(
            rows,
            self.uri,
            schema=rows.schema,
            max_rows_per_file=self.max_rows_per_file,
            storage_options=self.storage_options or None,
        )
        stages = {**stages, "write_s": stages.get("write_s", 0.0) + time.perf_counter() - started}
        fault_point("write.after_fragments")
        fragments_json = [json.dumps(f.to_json()) for f in fragments]
        unit = unit_length(rows.column(s.VECTOR))
        return replace(record, fragments=fragments_json, dim=dim, unit_length=unit, stages=stages)


def group_id(batch: pa.Table) -> str:
    """The same rows give the same id, however Ray cut or retried the work: how a group is known again."""
    cols = [s.CHUNK_ID, s.DOC_ID, s.SOURCE, s.LINE, s.REJECT_REASON, s.FATE]
    keys = sorted("\0".join(str(v) for v in row.values()) for row in batch.select(cols).to_pylist())
    digest = hashlib.sha256()
    for key in keys:
        digest.update(key.encode("utf-8", "surrogatepass") + b"\n")
    return digest.hexdigest()[:32]


def _first_chunks(chunks: pa.Table, fate: str) -> int:
    mask = pc.and_(pc.equal(chunks.column(s.CHUNK_INDEX), 0), pc.equal(chunks.column(s.FATE), fate))
    return int(pc.sum(mask).as_py() or 0)


def _distinct(rows: pa.Table) -> list[str]:
    return sorted(pc.unique(rows.column(s.DOC_ID)).drop_null().to_pylist())


def _rejects(batch: pa.Table, run_id: str) -> list[dict]:
    now = datetime.now(timezone.utc).isoformat()
    rows = batch.filter(pc.is_valid(batch.column(s.REJECT_REASON)))
    cols = [s.DOC_ID, s.SOURCE, s.LINE, s.REJECT_REASON, s.REJECT_DETAIL, s.FATE]
    return [
        {
            s.RUN_ID: run_id,
            s.DOC_ID: r[s.DOC_ID],
            s.SOURCE: r[s.SOURCE],
            s.LINE: r[s.LINE],
            "reason": r[s.REJECT_REASON],
            "detail": r[s.REJECT_DETAIL],
            "rejected_at": now,
            s.FATE: r[s.FATE],
        }
        for r in rows.select(cols).to_pylist()
    ]


def stored_chunk_rows(
    chunks: pa.Table,
    model_id: str,
    chunking: str,
    run_id: str,
    dim: int,
    metadata: dict | None = None,
    vector_dtype: str = "float32",
) -> pa.Table:
    n = len(chunks)
    now = datetime.now(timezone.utc)
    table = chunks.select(s.STORED_CHUNK_COLUMNS)
    table = table.append_column(s.MODEL, pa.array([model_id] * n, pa.string()))
    table = table.append_column(s.CHUNKING, pa.array([chunking] * n, pa.string()))
    table = table.append_column(s.RUN_ID, pa.array([run_id] * n, pa.string()))
    table = table.append_column(s.INGESTED_AT, pa.array([now] * n, s.TIMESTAMP))
    for name, column in zip(s.READER_COLUMNS, s.reader_columns(table), strict=True):
        table = table.append_column(name, column)
    return table.cast(s.chunks_table_schema(dim, metadata, vector_dtype))
