"""Large shards on real Ray: a 200 MB jsonl file and a parquet file of many row groups are each read by more than
one task, with every line or row accounted for, and a .jsonl.gz shard gives the documents of its plain copy."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import schema as s
from pipeline.settings import InputSettings, Settings
from pipeline.stages.sources import list_shards

pytestmark = pytest.mark.ray


def read(ray, folder, piece_mb: float) -> tuple[pa.Table, int]:
    """Every document read, with the id of the task that read it; and the number of distinct read tasks."""
    from pipeline.run.ray.stages import read_documents, split_pieces

    settings = Settings(input=InputSettings(paths=[str(folder)], piece_mb=piece_mb), model={"path": "unused"})
    fs, shards = list_shards(settings.input)

    def tag(batch: pa.Table) -> pa.Table:
        task = ray.get_runtime_context().get_task_id()
        return batch.select([s.DOC_ID, s.LINE, s.REJECT_REASON]).append_column("task", pa.array([task] * len(batch)))

    pieces = split_pieces(shards, fs, settings.input.piece_bytes)
    refs = read_documents(settings.input, fs, pieces).map_batches(tag, batch_format="pyarrow").to_arrow_refs()
    table = pa.concat_tables(ray.get(refs))
    return table, len(set(table.column("task").to_pylist()))


def test_a_200_mb_jsonl_shard_is_read_by_several_tasks(ray_local, tmp_path):
    folder = tmp_path / "big"
    folder.mkdir()
    filler = "lorem ipsum dolor sit amet " * 80  # ~2 KB a document
    n = 0
    with (folder / "big.jsonl").open("w") as out:
        while out.tell() < 200 * 2**20:
            out.write(json.dumps({"id": f"b{n}", "text": f"{n} {filler}"}) + "\n")
            n += 1
    table, tasks = read(ray_local, folder, piece_mb=32)
    assert tasks >= 6
    assert table.num_rows == n and table.column(s.REJECT_REASON).null_count == n
    assert sorted(table.column(s.LINE).to_pylist()) == list(range(1, n + 1))  # exact line numbers across cuts
    assert len(set(table.column(s.DOC_ID).to_pylist())) == n


def test_parquet_with_many_row_groups_is_read_by_several_tasks(ray_local, tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    n = 20_000
    texts = [f"row {i} " + "some words here " * 20 for i in range(n)]
    pq.write_table(
        pa.table({"id": [f"p{i}" for i in range(n)], "text": texts}), folder / "p.parquet", row_group_size=500
    )
    table, tasks = read(ray_local, folder, piece_mb=0.5)
    assert tasks > 1
    assert sorted(table.column(s.LINE).to_pylist()) == list(range(n))


def test_gzipped_jsonl_reads_like_its_plain_copy(ray_local, tmp_path, sample_texts):
    lines = [json.dumps({"id": f"g{i}", "text": t}) for i, t in enumerate(sample_texts)] + ["{broken"]
    data = ("\n".join(lines) + "\n").encode()
    for name, body in (("plain", data), ("packed", gzip.compress(data))):
        (tmp_path / name).mkdir()
        (tmp_path / name / ("a.jsonl" if name == "plain" else "a.jsonl.gz")).write_bytes(body)
    plain, _ = read(ray_local, tmp_path / "plain", piece_mb=64)
    packed, _ = read(ray_local, tmp_path / "packed", piece_mb=64)
    key = [(s.LINE, "ascending")]
    assert packed.drop_columns(["task"]).sort_by(key) == plain.drop_columns(["task"]).sort_by(key)
    assert plain.num_rows == len(lines) and plain.column(s.REJECT_REASON).null_count == len(lines) - 1
