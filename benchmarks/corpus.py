"""The fixed chunks every baseline embeds: the pipeline's own chunker over the same inputs, run in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather

from pipeline import schema as s
from pipeline.plan.job import plan_lengths
from pipeline.run.in_process import planned_documents
from pipeline.settings import Settings
from pipeline.stages.chunk_step import ChunkStep
from pipeline.stages.chunking import Chunker
from pipeline.stages.run_tokenizer import checked_tokenizer
from pipeline.store.chunk_writer import stored_chunk_rows
from pipeline.store.lance_store import LanceStore


def chunk_corpus(settings: Settings) -> pa.Table:
    """Chunk rows (token ids included) for every document the pipeline would embed; rejects dropped."""
    lengths = plan_lengths(settings)
    tokenizer = checked_tokenizer(settings, lengths)
    rows = ChunkStep(Chunker(tokenizer, lengths.chunk))(planned_documents(settings.input, lengths.chunk.fingerprint))
    return rows.filter(pc.is_valid(rows.column(s.CHUNK_ID))).drop_columns([s.SHARD_STATS])


def save(table: pa.Table, path: Path) -> Path:
    feather.write_feather(table, path, compression="uncompressed")
    return path


def load(path: Path) -> pa.Table:
    return feather.read_table(path)


def lengths_of(table: pa.Table) -> list[int]:
    return table.column(s.N_TOKENS).to_pylist()


def write_rows(store: LanceStore, table_name: str, part: pa.Table, vectors: dict[str, list[float]]) -> None:
    """A baseline's output as the pipeline stores it: the chunk's columns and its vector, appended."""
    dim = len(next(iter(vectors.values())))
    flat = np.asarray([vectors[i] for i in part.column(s.CHUNK_ID).to_pylist()], dtype=np.float32).reshape(-1)
    part = part.append_column(s.VECTOR, pa.FixedSizeListArray.from_arrays(pa.array(flat), dim))
    table = stored_chunk_rows(part, "baseline", "baseline", table_name, dim)
    store.append(table_name, table)
