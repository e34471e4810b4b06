"""Planned documents in, chunk rows out: chunk the new and changed documents, pass the rest on as reject or
marker rows. Pure: no ray or vllm imports; Ray calls it through ChunkActor."""

from __future__ import annotations

import time

import pyarrow as pa

from pipeline import schema as s
from pipeline.stages.chunking import Chunker
from pipeline.stages.fates import merge_stats
from pipeline.stats import ShardStats

DOCS_PER_BATCH = 64
"""Planned documents the chunk stage takes at a time."""


class ChunkStep:
    def __init__(self, chunker: Chunker):
        self.chunker = chunker

    def __call__(self, docs: pa.Table) -> pa.Table:
        """The batch's rows; the first carries the read, parse and chunk seconds of what it holds (JSON)."""
        t0 = time.perf_counter()
        rows: list[dict] = []
        for doc in docs.to_pylist():
            if doc[s.REJECT_REASON] is not None:
                rows.append(_passed_on(doc))
            elif doc[s.FATE] in s.FATES_TO_CHUNK:
                rows.extend({**r, s.FATE: doc[s.FATE]} for r in self.chunker.chunk_document(doc))
            else:
                rows.append(_passed_on(doc))
        out = pa.Table.from_pylist(rows, schema=s.CHUNK_SCHEMA)
        stats = [p for p in docs.column(s.SHARD_STATS).to_pylist() if p]
        stats.append(ShardStats(chunk_s=time.perf_counter() - t0).to_json())
        if len(out):
            column = pa.array([merge_stats(stats)] + [None] * (len(out) - 1), pa.string())
            out = out.set_column(out.schema.get_field_index(s.SHARD_STATS), s.SHARD_STATS, column)
        return out


def _passed_on(doc: dict) -> dict:
    keep = (s.DOC_ID, s.SOURCE, s.LINE, s.DOC_HASH, s.REJECT_REASON, s.REJECT_DETAIL, s.FATE)
    return {k: doc[k] for k in keep}
