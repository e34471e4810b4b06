"""Shard files in, chunk rows out: read, parse, skip documents already stored unchanged, chunk the rest.
Pure: no ray or vllm imports; Ray calls it through ChunkActor."""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pyarrow.fs as pafs

from pipeline import schema as s
from pipeline.chunking import Chunker
from pipeline.documents import Shard, parse_shard
from pipeline.settings import InputSettings


class ChunkStep:
    def __init__(
        self,
        chunker: Chunker,
        input_cfg: InputSettings,
        fs: pafs.FileSystem,
        shards: dict[str, Shard],
        unchanged: dict[str, str],
    ):
        """`unchanged` maps doc_id -> doc_hash for documents stored completely with this run's chunking."""
        self.chunker = chunker
        self.input = input_cfg
        self.fs = fs
        self.shards = shards
        self.unchanged = unchanged

    def __call__(self, paths: list[str]) -> pa.Table:
        return pa.concat_tables([self.process(self.shards[path]) for path in paths])

    def process(self, shard: Shard) -> pa.Table:
        """The shard's rows; the first carries the time spent reading, parsing and chunking it (JSON)."""
        t0 = time.perf_counter()
        try:
            with self.fs.open_input_stream(shard.path) as stream:
                data = stream.read()
        except OSError as exc:
            row = {s.SOURCE: shard.source, s.REJECT_REASON: "unreadable", s.REJECT_DETAIL: f"cannot read: {exc}"}
            return pa.Table.from_pylist([row], schema=s.CHUNK_SCHEMA)
        t1 = time.perf_counter()
        docs = parse_shard(shard, data, self.input)
        t2 = time.perf_counter()
        stored = pa.array([self.unchanged.get(d) for d in docs.column(s.DOC_ID).to_pylist()], pa.string())
        is_unchanged = pa.compute.fill_null(pa.compute.equal(stored, docs.column(s.DOC_HASH)), False)
        skipped = docs.filter(is_unchanged).select([s.DOC_ID, s.SOURCE, s.LINE, s.DOC_HASH])
        skipped = skipped.append_column(s.UNCHANGED, pa.array([True] * len(skipped), pa.bool_()))
        chunks = self.chunker.chunk(docs.filter(pa.compute.invert(is_unchanged)))
        out = pa.concat_tables([chunks, skipped], promote_options="default").cast(s.CHUNK_SCHEMA)
        if len(out):
            stats = {"read_s": t1 - t0, "parse_s": t2 - t1, "chunk_s": time.perf_counter() - t2, "bytes": len(data)}
            column = pa.array([json.dumps(stats)] + [None] * (len(out) - 1), pa.string())
            out = out.set_column(out.schema.get_field_index(s.SHARD_STATS), s.SHARD_STATS, column)
        return out
