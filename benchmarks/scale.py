"""What one run costs as the store it fills and the corpus it reads grow: real `python -m jobs.ingest` runs (the
CPU engine included), each in its own process, read back from their `runs` rows. No ray or vllm imports here.

- store growth: the same corpus into stores pre-filled with N chunks of other documents;
- corpus growth: 1x .. 8x a corpus into an empty store (driver peak RSS, bytes of records per chunk);
- re-ingest at size: on the largest store, a 1k-document input, its unchanged rerun, then 5 % changed, 5 %
  removed and 5 % new with run.delete_missing (the store's other documents are in that input, unchanged).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa

from pipeline import schema as s
from pipeline.sample_corpus import DEFAULT_MODULES, all_stdlib_modules, documents
from pipeline.stages.documents import text_hash

REPO = Path(__file__).resolve().parents[1]
FILL_CHUNKS_PER_DOC = 10
FILL_TEXT = 1000
"""Characters of text per pre-filled chunk (the vectors are the model's dimension, random unit length)."""


@dataclass
class Point:
    scenario: str
    corpus: str
    store_chunks: int
    corpus_factor: int
    repeat: int = 0
    wall_s: float = 0.0
    startup_s: float = 0.0
    chunks: int = 0
    docs_in: int = 0
    added: int = 0
    replaced: int = 0
    skipped: int = 0
    removed: int = 0
    write_s: float = 0.0
    commit_s: float = 0.0
    groups: int = 0
    record_bytes: int = 0
    driver_peak_mb: float = 0.0
    chunk_versions_added: int = 0
    embedded_tokens: int = 0

    @property
    def write_s_per_chunk(self) -> float:
        return self.write_s / self.chunks if self.chunks else 0.0

    @property
    def bytes_per_chunk(self) -> float:
        return self.record_bytes / self.chunks if self.chunks else 0.0


def corpus_docs(name: str, factor: int = 1, id_suffix: str = "") -> list[dict]:
    """'docs': the sample corpus's modules; 'other': as many other standard-library modules. `factor` copies
    under new ids, each copy's text marked so no two documents are the same; `id_suffix` renames them all."""
    if name == "docs":
        modules = list(DEFAULT_MODULES)
    else:
        modules = [m for m in all_stdlib_modules() if m not in set(DEFAULT_MODULES)][: len(DEFAULT_MODULES)]
    base = list(documents(modules, 6000))
    return [
        {"id": f"{d['id']}#{k}{id_suffix}", "text": d["text"] if k == 0 else f"Copy {k}.\n\n{d['text']}"}
        for k in range(factor)
        for d in base
    ]


def write_jsonl(folder: Path, docs: list[dict], per_shard: int = 200) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.jsonl"):
        old.unlink()
    for i in range(0, len(docs), per_shard):
        part = docs[i : i + per_shard]
        (folder / f"part-{i // per_shard:05d}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in part))
    return folder


def fill_texts(n_docs: int) -> list[str]:
    return [f"Filler document {i}: stored before this benchmark ran." for i in range(n_docs)]


def prefill(db: Path, n_chunks: int, dim: int, metadata: dict, chunking: str, model: str) -> None:
    """A chunks table of n_chunks rows of other documents, as earlier runs would have left it (with the B-tree
    indexes their maintenance builds), written straight through Lance. With 0 rows, an empty table, so that no
    measured run pays for creating one."""
    import lance
    from lancedb.index import BTree

    if n_chunks == 0:
        lancedb.connect(str(db)).create_table("chunks", schema=s.chunks_table_schema(dim, metadata))
        return
    rng = np.random.default_rng(0)
    texts = fill_texts(n_chunks // FILL_CHUNKS_PER_DOC)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    body = " ".join(random.Random(0).choice(words) for _ in range(FILL_TEXT // 6))[:FILL_TEXT]
    schema = s.chunks_table_schema(dim, metadata)
    uri = str(db / "chunks.lance")
    step = 50_000
    for start in range(0, n_chunks, step):
        n = min(step, n_chunks - start)
        idx = np.arange(start, start + n)
        doc = idx // FILL_CHUNKS_PER_DOC
        vectors = rng.standard_normal((n, dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids = [f"fill-{d}" for d in doc]
        table = pa.table(
            {
                s.CHUNK_ID: [hashlib.sha256(f"fill{i}".encode()).hexdigest()[:32] for i in idx],
                s.DOC_ID: ids,
                s.SOURCE: ["prefill.jsonl"] * n,
                s.CHUNK_INDEX: (idx % FILL_CHUNKS_PER_DOC).astype(np.int32),
                s.DOC_CHUNKS: np.full(n, FILL_CHUNKS_PER_DOC, np.int32),
                s.TEXT: [body] * n,
                s.CHAR_START: np.zeros(n, np.int64),
                s.CHAR_END: np.full(n, FILL_TEXT, np.int64),
                s.N_TOKENS: np.full(n, 200, np.int32),
                s.DOC_HASH: [text_hash(texts[d]) for d in doc],
                s.VECTOR: pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
                s.MODEL: [model] * n,
                s.CHUNKING: [chunking] * n,
                s.RUN_ID: ["prefill"] * n,
                s.INGESTED_AT: pa.array([None] * n, s.TIMESTAMP),
            }
        ).cast(schema)
        lance.write_dataset(table, uri, schema=schema, mode="create" if start == 0 else "append")
    table = lancedb.connect(str(db)).open_table("chunks")
    for column in (s.DOC_ID, s.CHUNK_ID, s.SOURCE):
        table.create_index(column, config=BTree())


def run_job(conf: str, db: Path, inputs: Path, log: Path, *extra: str) -> dict:
    """One `python -m jobs.ingest` in its own process; its runs row."""
    args = [
        sys.executable,
        "-m",
        "jobs.ingest",
        "--config",
        conf,
        "--db",
        str(db),
        "--inputs",
        str(inputs),
        "--no-index.after-run",
        "--logging.json-format",
        "true",
        *extra,
    ]
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    env.pop("RAY_ADDRESS", None)
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(args)}\n")
        out.flush()
        proc = subprocess.run(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ingest failed ({proc.returncode}); see {log}")
    runs = lancedb.connect(str(db)).open_table("runs").to_arrow().to_pylist()
    return max(runs, key=lambda r: r["started_at"])


def chunk_version(db: Path) -> int:
    table_dir = db / "chunks.lance" / "_versions"
    return len(list(table_dir.glob("*.manifest"))) if table_dir.exists() else 0


def measure(point: Point, conf: str, db: Path, inputs: Path, log: Path, *extra: str) -> Point:
    before = chunk_version(db)
    row = run_job(conf, db, inputs, log, *extra)
    for key in (
        "wall_s",
        "startup_s",
        "chunks",
        "docs_in",
        "added",
        "replaced",
        "skipped",
        "removed",
        "write_s",
        "commit_s",
        "groups",
        "record_bytes",
        "driver_peak_mb",
    ):
        setattr(point, key, row.get(key) or 0)
    point.embedded_tokens = row.get("tokens") or 0
    point.chunk_versions_added = chunk_version(db) - before
    print(json.dumps(asdict(point)), flush=True)
    return point


def edited(docs: list[dict], seed: int = 1) -> tuple[list[dict], dict[str, int]]:
    """5 % of the documents changed, 5 % removed, 5 % new; the expected counts."""
    n = len(docs) // 20
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    changed, removed = set(order[:n]), set(order[n : 2 * n])
    out = [
        {**d, "text": "Edited. " + d["text"]} if i in changed else d for i, d in enumerate(docs) if i not in removed
    ]
    out += [{"id": f"new-{i}", "text": f"A new document, number {i}.\n\n" + docs[i]["text"]} for i in range(n)]
    return out, {"added": n, "replaced": n, "removed": n, "skipped": len(docs) - 2 * n}


def commit_latency(stores: dict[int, Path], dim: int, model: str, chunking: str, groups: int = 40, rows: int = 64):
    """Seconds to write one group's fragments (worker side) and to commit it (driver side), per store size: the
    same groups of new chunks, alternating between the stores so the machine's drift hits all alike."""
    from pipeline.store.group_commit import GroupCommitter
    from pipeline.store.lance_store import LanceStore

    rng = np.random.default_rng(1)
    sides = {}
    for size, db in stores.items():
        store = LanceStore(str(db))
        store.ensure_side_tables()
        run_id = f"latency-{size}"
        sides[size] = (
            store.chunk_writer(run_id, model, chunking, {"model": model}),
            GroupCommitter(store, run_id, {"model": model}),
        )
    timings: dict[int, dict[str, list[float]]] = {size: {"write": [], "commit": []} for size in stores}
    for g in range(groups):
        batch = _embedded_rows(rng, dim, rows, f"latency-{g}", chunking)
        for size, (writer, committer) in sides.items():
            t0 = time.perf_counter()
            record = writer.write(batch)
            t1 = time.perf_counter()
            committer.add(record)
            timings[size]["write"].append(t1 - t0)
            timings[size]["commit"].append(time.perf_counter() - t1)
    return {size: {k: float(np.median(v)) for k, v in t.items()} for size, t in timings.items()}


def _embedded_rows(rng: np.random.Generator, dim: int, n: int, doc: str, chunking: str) -> pa.Table:
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    rows = {
        s.CHUNK_ID: [hashlib.sha256(f"{doc}-{i}".encode()).hexdigest()[:32] for i in range(n)],
        s.DOC_ID: [doc] * n,
        s.SOURCE: ["latency.jsonl"] * n,
        s.LINE: [1] * n,
        s.CHUNK_INDEX: list(range(n)),
        s.DOC_CHUNKS: [n] * n,
        s.TEXT: ["x" * FILL_TEXT] * n,
        s.CHAR_START: [0] * n,
        s.CHAR_END: [FILL_TEXT] * n,
        s.N_TOKENS: [200] * n,
        s.DOC_HASH: [doc] * n,
        s.FATE: [s.Fate.NEW] * n,
        s.VECTOR: pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
    }
    schema = s.embedded_schema(dim)
    return pa.table({f.name: rows.get(f.name, pa.nulls(n, f.type)) for f in schema}, schema=schema)
