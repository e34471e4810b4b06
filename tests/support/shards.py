"""Whole shards parsed at once, for tests (the pipeline streams pieces)."""

import io

import pyarrow as pa

from pipeline import schema as s
from pipeline.settings import InputSettings
from pipeline.stages.documents import Shard, parse_jsonl_lines, parse_parquet, parse_text, split_lines


def parse_shard(shard: Shard, data: bytes, cfg: InputSettings) -> pa.Table:
    """A whole shard held in memory, parsed at once."""
    if shard.format == "jsonl":
        rows = parse_jsonl_lines(shard, split_lines([data], 1), cfg)
    elif shard.format == "parquet":
        rows = parse_parquet(shard, io.BytesIO(data), cfg)
    else:
        rows = parse_text(shard, data, cfg)
    return pa.Table.from_pylist(list(rows), schema=s.DOC_SCHEMA)
