"""The ingestion job end to end as a user runs it: a real driver process, local Ray, the real vLLM engine
(CPU build) on the packaged MiniLM, and a LanceDB directory."""

from __future__ import annotations

import io
import json
import re
import subprocess

import lancedb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline import schema as s
from pipeline.checks.verify import verify_run
from pipeline.store.lance_store import LanceStore
from tests.job_process import REPO, SMALL_RAY, job_command, job_env

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sample_texts):
    """A few dozen documents in all three formats, plus bad records the job must account for: invalid JSON,
    whitespace-only text, non-UTF-8 bytes, a binary file, a duplicate id, a truncated parquet file and a
    parquet file without the text column."""
    root = tmp_path_factory.mktemp("corpus")
    docs = [(f"doc-{i:03d}", t) for i, t in enumerate(sample_texts[:36])]
    for shard in range(2):
        lines = [json.dumps({"id": i, "text": t}) for i, t in docs[shard * 12 : shard * 12 + 12]]
        if shard == 1:
            lines += ["{this is not json", json.dumps({"id": "empty-doc", "text": "  "})]
        (root / f"part-{shard}.jsonl").write_text("\n".join(lines) + "\n")
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": [i for i, _ in docs[24:32]], "text": [t for _, t in docs[24:32]]}), buf)
    (root / "part.parquet").write_bytes(buf.getvalue())
    (root / "pages").mkdir()
    for i, t in docs[32:]:
        (root / "pages" / f"{i}.md").write_text(t)
    (root / "pages" / "binary.txt").write_bytes(b"\x00\x01\x02binary")
    with (root / "part-1.jsonl").open("ab") as f:
        f.write(b'{"id": "latin1", "text": "caf\xe9"}\n')
    (root / "dup.jsonl").write_text(json.dumps({"id": docs[0][0], "text": "Another text under a taken id."}) + "\n")
    (root / "truncated.parquet").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    no_text = io.BytesIO()
    pq.write_table(pa.table({"id": ["x1"], "body": ["no text column here"]}), no_text)
    (root / "no-text.parquet").write_bytes(no_text.getvalue())
    expected_ids = {i for i, _ in docs[:32]} | {f"pages/{i}.md" for i, _ in docs[32:]}
    return root, expected_ids


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    root, _ = corpus
    db = tmp_path_factory.mktemp("db") / "lancedb"
    args = ("--inputs", str(root), "--db", str(db), "--run.batch-rows", "16", "--run.commit-rows", "100")
    proc = subprocess.run(
        job_command("jobs.ingest", *args),
        cwd=REPO,
        env=job_env(**SMALL_RAY),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return db, proc


def test_summary_line_and_four_tables(run):
    db, proc = run
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(
        r"Ingestion took [\d.]+ s \(first engine ready at [\d.]+ s\): 36 docs, [\d,]+ chunks, [\d,]+ tokens, "
        r"[\d,]+ tokens/s, 7 rejected; "
        r"36 added, 0 replaced, 0 unchanged, 0 removed; busy s: read [\d.]+, parse [\d.]+, chunk [\d.]+, "
        r"engine [\d.]+, engine idle [\d.]+, write [\d.]+; engines 1 x [\d.,]+ s, busy \d+%, [\d.e+-]+ device-hours",
        last,
    ), last
    assert set(lancedb.connect(str(db)).list_tables().tables) == {"chunks", "batches", "runs", "rejects"}


def test_every_document_is_ingested_or_rejected_and_counts_agree(run, corpus):
    db, _ = run
    _, expected_ids = corpus
    conn = lancedb.connect(str(db))
    chunks = conn.open_table("chunks").to_arrow()
    rejects = conn.open_table("rejects").to_arrow().to_pylist()
    [runrow] = conn.open_table("runs").to_arrow().to_pylist()
    batches = conn.open_table("batches").to_arrow()

    assert set(chunks.column(s.DOC_ID).to_pylist()) == expected_ids
    assert sorted(r["reason"] for r in rejects) == [
        "binary",
        "duplicate_id",
        "empty_text",
        "invalid_json",
        "missing_column",
        "not_utf8",
        "unreadable_parquet",
    ]
    assert {r["line"] for r in rejects if r["reason"] == "invalid_json"} == {13}
    assert runrow["status"] == "succeeded"
    assert (runrow["docs"], runrow["rejected"], runrow["docs_in"]) == (36, 7, 43)
    assert runrow["chunks"] == chunks.num_rows
    assert runrow["chunks"] + runrow["chunks_discarded"] == pc.sum(batches.column("n_chunks")).as_py()
    assert runrow["chunks_discarded"] <= 2  # the losing copy of the duplicate id
    assert runrow["tokens"] == pc.sum(chunks.column(s.N_TOKENS)).as_py()
    assert runrow["tokens"] + runrow["tokens_discarded"] == pc.sum(batches.column(s.N_TOKENS)).as_py()
    assert pc.max(chunks.column(s.N_TOKENS)).as_py() <= runrow["chunk_tokens"] == 255
    assert runrow["max_model_len"] == 256  # the model's serving limit, not its 512 positions
    assert runrow["embed_s"] > 0 and runrow["chunk_s"] > 0 and runrow["write_s"] > 0
    assert runrow["embed_s"] == pytest.approx(sum(batches.column("embed_s").to_pylist()))
    assert runrow["engine_tokens"] == runrow["tokens"] + runrow["tokens_discarded"]
    assert batches.column("engine_tokens").to_pylist() == batches.column(s.N_TOKENS).to_pylist()
    assert 0 < runrow["startup_s"] < runrow["wall_s"]
    # started_at is the run's start, which startup_s counts from, not when the row was written
    recorded = (runrow["finished_at"] - runrow["started_at"]).total_seconds()
    assert recorded == pytest.approx(runrow["wall_s"], abs=1.0)
    plan = json.loads(runrow["plan"])
    assert plan["fits"] is True and plan["max_model_len"] == 256 and plan["params_source"] == "safetensors headers"
    engine = json.loads(runrow["engine"])
    assert (engine["engine"], engine["max_model_len"], engine["dim"]) == ("vllm", 256, 384)
    assert runrow["vllm_version"] and runrow["ray_version"] and runrow["lancedb_version"]
    assert len(chunks.column(s.CHUNK_ID).unique()) == chunks.num_rows
    assert batches.num_rows >= 2 and min(batches.column("tokens_per_s").to_pylist()) > 0
    [engine_label] = set(batches.column("actor").to_pylist())
    assert "cores" not in engine_label  # alone on its node: every core, no cores in its name
    # each document's chunks are complete and in order
    per_doc = {}
    for d, i, n in zip(*(chunks.column(c).to_pylist() for c in (s.DOC_ID, s.CHUNK_INDEX, s.DOC_CHUNKS)), strict=False):
        per_doc.setdefault(d, (n, set()))[1].add(i)
    assert all(idx == set(range(n)) for n, idx in per_doc.values())


def test_stored_vectors_match_an_independent_embedding_and_find_their_chunk(run):
    db, _ = run
    report = verify_run(LanceStore(str(db)), sample=12)
    assert report.accounting_ok, report.accounting
    # verify re-tokenizes the stored text: a chunk cut inside a run of hex escapes re-tokenizes to other ids of
    # the same count (cosine 0.9983 for one such chunk here); every other chunk matches to 1e-7
    assert report.min_cosine >= 0.995 and report.mean_cosine >= 0.9995
    assert report.self_found_first == report.checked == 12
    assert report.token_mismatches == 0 and report.over_limit == 0
