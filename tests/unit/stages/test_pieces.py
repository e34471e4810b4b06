"""Shards read in pieces: a large jsonl cut at line ends, a parquet file between row groups, compressed jsonl
streamed; each gives exactly the documents (ids, line numbers, rejects) of reading the whole file at once."""

from __future__ import annotations

import bz2
import gzip
import json

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import schema as s
from pipeline.settings import InputSettings
from pipeline.stages.documents import Shard
from pipeline.stages.pieces import Piece, PieceReader, split_shard
from pipeline.stages.sources import list_shards
from tests.support.shards import parse_shard

pytestmark = pytest.mark.unit

CFG = InputSettings()
FS = pafs.LocalFileSystem()
KEEP = [s.DOC_ID, s.SOURCE, s.LINE, s.DOC_HASH, s.REJECT_REASON]


def lines_of(n: int) -> list[str]:
    out = []
    for i in range(n):
        if i % 17 == 5:
            out.append("{not json")
        elif i % 23 == 7:
            out.append("")
        else:
            out.append(json.dumps({"id": f"d{i}", "text": f"Document {i}. " + "word " * (i % 40)}))
    return out


def read_all(shard: Shard, piece_bytes: int) -> tuple[list[Piece], pa.Table]:
    pieces = split_shard(shard, FS, piece_bytes)
    reader = PieceReader(FS, CFG, batch_docs=50)
    tables = [t for p in pieces for t in reader(p)]
    return pieces, pa.concat_tables(tables).select(KEEP)


def whole(shard: Shard, data: bytes) -> pa.Table:
    return parse_shard(shard, data, CFG).select(KEEP)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 300), piece_bytes=st.integers(16, 4000), trailing_newline=st.booleans())
def test_jsonl_pieces_cut_at_line_ends_give_the_whole_files_documents(
    tmp_path_factory, n, piece_bytes, trailing_newline
):
    path = tmp_path_factory.mktemp("j") / "a.jsonl"
    data = ("\n".join(lines_of(n)) + ("\n" if trailing_newline else "")).encode()
    path.write_bytes(data)
    shard = Shard(str(path), str(path), "jsonl", "a.jsonl")
    pieces, got = read_all(shard, piece_bytes)
    assert got == whole(shard, data)
    assert len(pieces) == 1 or all(p.start < (p.end or len(data)) for p in pieces)
    if len(data) > 2 * piece_bytes + 200:
        assert len(pieces) > 1


def test_parquet_is_cut_between_row_groups(tmp_path):
    path = tmp_path / "p.parquet"
    ids = [f"p{i}" for i in range(1000)]
    texts = [f"Text number {i} " * 5 if i % 97 else "" for i in range(1000)]
    pq.write_table(pa.table({"id": ids, "text": texts}), path, row_group_size=50)
    shard = Shard(str(path), str(path), "parquet", "p.parquet")
    pieces, got = read_all(shard, piece_bytes=4000)
    assert len(pieces) > 4 and [p.first_line for p in pieces] == sorted(p.first_line for p in pieces)
    assert got == whole(shard, path.read_bytes())
    assert got.column(s.LINE).to_pylist() == list(range(1000))


@pytest.mark.parametrize(("ext", "compress"), [(".gz", gzip.compress), (".bz2", bz2.compress), (".zst", None)])
def test_compressed_jsonl_reads_like_its_plain_copy(tmp_path, ext, compress):
    data = ("\n".join(lines_of(400)) + "\n").encode()
    (tmp_path / "plain").mkdir()
    (tmp_path / "packed").mkdir()
    (tmp_path / "plain" / "a.jsonl").write_bytes(data)
    packed = tmp_path / "packed" / f"a.jsonl{ext}"
    if compress is None:
        with pa.CompressedOutputStream(str(packed), "zstd") as out:
            out.write(data)
    else:
        packed.write_bytes(compress(data))
    results = []
    for folder in ("plain", "packed"):
        _, [shard] = list_shards(InputSettings(paths=[str(tmp_path / folder)]))
        pieces, table = read_all(shard, piece_bytes=1000)
        results.append((len(pieces), table.drop_columns([s.SOURCE])))
    assert results[1][1] == results[0][1]
    assert results[0][0] > 1 and results[1][0] == 1  # a compressed stream cannot be cut; it streams whole


def test_corrupt_compressed_shard_is_rejected_not_fatal(tmp_path):
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"id": "a", "text": "fine"}\n')[:-12] + b"garbage!")
    _, [shard] = list_shards(InputSettings(paths=[str(tmp_path)]))
    _, table = read_all(shard, piece_bytes=1 << 20)
    assert table.column(s.REJECT_REASON).to_pylist()[-1] == "unreadable"
    assert table.column(s.DOC_ID).to_pylist()[-1] is None  # no id: it also blocks run.delete_missing
