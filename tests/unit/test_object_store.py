"""s3:// inputs and the s3:// store lock against a real S3-compatible server (moto, started by the tests)."""

from __future__ import annotations

import json
import time

import pytest

from pipeline.errors import StoreBusyError
from pipeline.object_store import S3Options
from pipeline.settings import InputSettings
from pipeline.stages.sources import list_shards
from pipeline.store.locks import S3Lease, store_lock
from pipeline.store.runs import RunLog

pytestmark = pytest.mark.unit


@pytest.fixture
def bucket(s3_server, request):
    name = request.node.name.replace("_", "-")[:50].lower()
    s3_server.client().create_bucket(Bucket=name)
    return name


def test_s3_inputs_listed_with_options_from_settings(s3_server, bucket):
    client = s3_server.client()
    for key in ("corpus/a.jsonl", "corpus/sub/b.jsonl", "corpus/.hidden.jsonl", "corpus/notes.md", "other/c.jsonl"):
        client.put_object(Bucket=bucket, Key=key, Body=json.dumps({"id": key, "text": "x"}).encode())
    cfg = InputSettings(
        paths=[f"s3://{bucket}/corpus/**/*.jsonl", f"s3://{bucket}/corpus/notes.md"],
        storage_options=s3_server.options(),
    )
    fs, shards = list_shards(cfg)
    assert [sh.source for sh in shards] == [
        f"s3://{bucket}/corpus/a.jsonl",
        f"s3://{bucket}/corpus/notes.md",
        f"s3://{bucket}/corpus/sub/b.jsonl",
    ]
    with fs.open_input_stream(shards[0].path) as f:
        assert json.loads(f.read())["id"] == "corpus/a.jsonl"


def test_s3_lock_refuses_a_second_run_and_is_removed_after(s3_server, bucket):
    uri, options = f"s3://{bucket}/lancedb", s3_server.options()
    with store_lock(uri, "p_", "run-1", options, ttl_s=60):
        with pytest.raises(StoreBusyError, match=r"run run-1, pid \d+.*holds the store lock s3://.*/lancedb/\.p_"):
            with store_lock(uri, "p_", "run-2", options, ttl_s=60):
                pass
        with store_lock(uri, "other_", "run-3", options, ttl_s=60):  # another table prefix is another lock
            pass
    with store_lock(uri, "p_", "run-4", options, ttl_s=60):
        pass
    assert "Contents" not in s3_server.client().list_objects_v2(Bucket=bucket)


def test_a_dead_runs_lock_is_taken_over_after_its_ttl(s3_server, bucket):
    uri, options = f"s3://{bucket}/db", S3Options.from_options(s3_server.options())
    dead = S3Lease(uri, "", "dead-run", options, ttl_s=60)
    dead.acquire()
    dead._stop.set()  # the run died: nobody renews the lease
    fresh = S3Lease(uri, "", "next-run", options, ttl_s=60)
    with pytest.raises(StoreBusyError, match="dead-run"):
        fresh.acquire()
    time.sleep(2.1)
    late = S3Lease(uri, "", "next-run", options, ttl_s=2)
    late.acquire()
    body = s3_server.client().get_object(Bucket=bucket, Key="db/.embedpipe.lock")["Body"].read()
    assert b"next-run" in body
    late.release()


def test_a_live_run_renews_its_lock(s3_server, bucket):
    uri, options = f"s3://{bucket}/db", S3Options.from_options(s3_server.options())
    lease = S3Lease(uri, "", "live", options, ttl_s=1.5)
    lease.acquire()
    first = lease.etag
    time.sleep(1.2)
    assert lease.etag != first  # rewritten at least once
    other = S3Lease(uri, "", "other", options, ttl_s=1.5)
    with pytest.raises(StoreBusyError):
        other.acquire()
    lease.release()
    assert not lease._renewer.is_alive()


def test_store_on_s3_with_options_from_settings(s3_server, bucket):
    from pipeline import schema as s
    from pipeline.store.lance_store import LanceStore
    from tests.support.stores import run_record

    store = LanceStore(f"s3://{bucket}/lancedb", "t_", s3_server.options())
    RunLog(store).start(run_record("r1"))
    store.ensure_side_tables()
    assert store.table(store.names.runs, s.RUNS_SCHEMA).count_rows() == 1
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(k.startswith("lancedb/t_runs.lance/") for k in keys)


def test_chunks_written_as_fragments_and_committed_on_s3(s3_server, bucket, minilm_path, tmp_path, sample_texts):
    """The write stage against the bucket: fragments land under the store's prefix, commits make them a table
    that LanceDB opens, and a rerun over the same inputs finds every document unchanged by keyed lookups."""
    import json

    import lancedb

    from pipeline.plan.chunk_plan import ChunkPlan
    from pipeline.stages.chunking import Chunker
    from pipeline.stages.tokenizer import load_tokenizer
    from pipeline.store.lance_store import LanceStore
    from tests.fakes import FakeEmbedder
    from tests.support.in_process import ingest_in_process

    (tmp_path / "a.jsonl").write_text(
        "".join(json.dumps({"id": f"d{i}", "text": t[:800]}) + "\n" for i, t in enumerate(sample_texts[:6]))
    )
    store = LanceStore(f"s3://{bucket}/lancedb", "", s3_server.options())
    chunker = Chunker(load_tokenizer(minilm_path), ChunkPlan(64, 0, 0.15, "fake"))
    cfg = InputSettings(paths=[str(tmp_path)])
    first, _ = ingest_in_process(store, "r1", cfg, chunker, FakeEmbedder(8), {"model": "fake"}, commit_rows=20)
    second, _ = ingest_in_process(store, "r2", cfg, chunker, FakeEmbedder(8), {"model": "fake"}, commit_rows=20)
    table = lancedb.connect(f"s3://{bucket}/lancedb", storage_options=s3_server.options()).open_table("chunks")
    assert table.count_rows() == first.totals.chunks > 20 and first.groups > 1
    assert (second.skipped, second.totals.chunks, second.groups) == (6, 0, 0)
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(k.startswith("lancedb/chunks.lance/data/") for k in keys)
