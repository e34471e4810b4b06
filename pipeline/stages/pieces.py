"""Shards split into pieces that separate tasks read, and the streaming reader of one piece. Pure: no ray
or vllm imports; pyarrow filesystems do the I/O.

A plain jsonl shard larger than a piece is cut at line ends (found by one sequential pass over the file that
keeps only the cut offsets and line counts, so reported line numbers stay exact); a parquet shard is cut
between row groups (from its footer). Compressed jsonl and text files are one piece each, read as a stream.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import schema as s
from pipeline.errors import ConfigError
from pipeline.plan.estimate import PieceIndex, Sample
from pipeline.settings import InputSettings
from pipeline.stages.documents import (
    READ_BLOCK_BYTES,
    Shard,
    parse_jsonl_lines,
    parse_parquet,
    parse_text,
    shard_reject,
    split_lines,
)
from pipeline.stats import ShardStats


@dataclass(frozen=True)
class Piece:
    shard: Shard
    start: int = 0
    """jsonl: byte offset of the piece's first line; parquet: its first row group."""
    end: int | None = None
    """jsonl: byte offset just after its last line; parquet: the row group after its last; None: the file's end."""
    first_line: int = 1
    """jsonl: line number of the piece's first line; parquet: row number of its first row."""

    @property
    def key(self) -> str:
        """Names the piece the same way in every listing of the same input (what a sample is drawn by)."""
        return f"{self.shard.source}:{self.start}"

    def to_row(self) -> dict:
        return {**asdict(self.shard), "start": self.start, "end": self.end, "first_line": self.first_line}

    @classmethod
    def from_row(cls, row: dict) -> Piece:
        shard = Shard(row["path"], row["source"], row["format"], row["text_doc_id"])
        return cls(shard, row["start"], row["end"], row["first_line"])


def split_shard(shard: Shard, fs: pafs.FileSystem, piece_bytes: int) -> list[Piece]:
    """The shard's pieces, in file order. A shard that cannot be opened is one piece: reading it rejects it."""
    try:
        if shard.format == "parquet":
            return _parquet_pieces(shard, fs, piece_bytes)
        if shard.format == "jsonl" and shard.compression is None:
            return _jsonl_pieces(shard, fs, piece_bytes)
    except (OSError, pa.ArrowException):
        pass
    return [Piece(shard)]


def _parquet_pieces(shard: Shard, fs: pafs.FileSystem, piece_bytes: int) -> list[Piece]:
    with fs.open_input_file(shard.path) as f:
        meta = pq.ParquetFile(f).metadata
    pieces, start, first_row, rows, size = [], 0, 0, 0, 0
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        rows, size = rows + group.num_rows, size + group.total_byte_size
        if size >= piece_bytes or i == meta.num_row_groups - 1:
            pieces.append(Piece(shard, start, i + 1, first_row))
            start, first_row, size = i + 1, first_row + rows, 0
            rows = 0
    return pieces or [Piece(shard)]


def _jsonl_pieces(shard: Shard, fs: pafs.FileSystem, piece_bytes: int) -> list[Piece]:
    size = fs.get_file_info(shard.path).size
    if size is None or size <= piece_bytes:  # None: not there (a dangling link); reading it rejects it
        return [Piece(shard)]
    cuts = [(0, 1)]  # (byte offset, line number) where each piece starts
    offset, lines, target = 0, 0, piece_bytes
    with fs.open_input_stream(shard.path) as stream:
        while block := stream.read(READ_BLOCK_BYTES):
            pos = 0
            while target < offset + len(block):
                newline = block.find(b"\n", max(target - offset, pos))
                if newline < 0:
                    break
                lines += block.count(b"\n", pos, newline + 1)
                pos = newline + 1
                cuts.append((offset + pos, lines + 1))
                target = offset + pos + piece_bytes
            lines += block.count(b"\n", pos)
            offset += len(block)
    cuts = [c for c in cuts if c[0] < offset]
    ends = [c[0] for c in cuts[1:]] + [None]
    return [Piece(shard, start, end, line) for (start, line), end in zip(cuts, ends, strict=True)]


class PieceReader:
    """Streams one piece's documents (DOC_SCHEMA plus the plan key) in batches of at most batch_docs rows; the
    first row of each batch carries the seconds spent reading and parsing it (JSON in SHARD_STATS)."""

    def __init__(self, fs: pafs.FileSystem, cfg: InputSettings, batch_docs: int = 1024):
        self.fs = fs
        self.cfg = cfg
        self.batch_docs = batch_docs

    def __call__(self, piece: Piece) -> Iterator[pa.Table]:
        self.read_s, self.bytes = 0.0, 0
        rows: list[dict] = []
        started = time.perf_counter()
        for row in self._rows(piece):
            rows.append(row)
            if len(rows) >= self.batch_docs:
                yield self._batch(rows, time.perf_counter() - started)
                rows, started = [], time.perf_counter()
        if rows:
            yield self._batch(rows, time.perf_counter() - started)

    def _batch(self, rows: list[dict], seconds: float) -> pa.Table:
        stats = ShardStats(read_s=self.read_s, parse_s=max(seconds - self.read_s, 0.0), bytes=self.bytes)
        self.read_s, self.bytes = 0.0, 0
        rows[0] = {**rows[0], s.SHARD_STATS: stats.to_json()}
        for row in rows:
            row[s.PLAN_KEY] = plan_key(row)
        return pa.Table.from_pylist(rows, schema=s.READ_SCHEMA)

    def _rows(self, piece: Piece) -> Iterator[dict]:
        shard = piece.shard
        try:
            if shard.format == "parquet":
                with self.fs.open_input_file(shard.path) as f:
                    groups = range(piece.start, piece.end) if piece.end is not None else None
                    yield from parse_parquet(shard, f, self.cfg, groups, piece.first_line if groups else 0)
            elif shard.format == "jsonl":
                yield from parse_jsonl_lines(shard, split_lines(self._blocks(piece), piece.first_line), self.cfg)
            else:
                yield from parse_text(shard, b"".join(self._blocks(piece)), self.cfg)
        except OSError as exc:
            yield shard_reject(shard, s.RejectReason.UNREADABLE, f"cannot read: {exc}")

    def _blocks(self, piece: Piece) -> Iterator[bytes]:
        """The piece's bytes as timed blocks; a compressed shard is decompressed as it streams."""
        t0 = time.perf_counter()
        if piece.shard.compression is not None:
            stream = self.fs.open_input_stream(piece.shard.path, compression=piece.shard.compression)
        else:
            stream = self.fs.open_input_file(piece.shard.path)
            stream.seek(piece.start)
        left = None if piece.end is None else piece.end - piece.start
        with stream:
            while left is None or left > 0:
                block = stream.read(READ_BLOCK_BYTES if left is None else min(READ_BLOCK_BYTES, left))
                self.read_s += time.perf_counter() - t0
                if not block:
                    return
                self.bytes += len(block)
                left = None if left is None else left - len(block)
                yield block
                t0 = time.perf_counter()


def plan_key(row: dict) -> str:
    """What the plan groups a row by: its document id, or for a row without one a key of its own."""
    if row[s.DOC_ID] is not None:
        return row[s.DOC_ID]
    return f"\0{row[s.SOURCE]}\0{row[s.LINE]}\0{row[s.REJECT_REASON]}"


def sample_pieces(pieces: list[Piece], sample: Sample) -> tuple[list[Piece], PieceIndex]:
    """The pieces a seeded sample keeps, and the index that tells which of them a document was read from;
    ConfigError, with the fix, when it keeps none."""
    sampled = [p for p in pieces if sample.keeps(p.key)]
    if not sampled:
        msg = (
            f"--sample {sample.fraction:g} (seed {sample.seed}) kept none of the input's {len(pieces)} pieces; "
            "give a larger fraction, another --seed, or smaller pieces (input.piece_mb)"
        )
        raise ConfigError(msg)
    return sampled, PieceIndex.listing([(p.shard.source, p.first_line) for p in sampled])
