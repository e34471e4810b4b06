"""The scale-out path (pieces -> plan -> chunk -> embed -> fragments -> commits) gives what the driver-side path
it replaced gave on the same inputs: tests/data/equivalence/expected.json was written by that old path (chunk
ids, spans, token counts, hashes of text and fake vectors, run counts) before it was removed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lancedb
import pyarrow as pa
import pytest

from pipeline import schema as s
from pipeline.plan.chunk_plan import ChunkPlan
from pipeline.settings import InputSettings
from pipeline.stages.chunking import Chunker
from pipeline.stages.tokenizer import load_tokenizer
from pipeline.store.lance_store import LanceStore
from tests.fakes import FakeEmbedder
from tests.support.in_process import ingest_in_process

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[1] / "data" / "equivalence"
EXPECTED = json.loads((DATA / "expected.json").read_text())


def _hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _vector_hash(vector: list[float]) -> str:
    return _hash(pa.array(vector, pa.float32()).buffers()[1].to_pybytes())


def observed(db: Path, outcome, run_id: str) -> dict:
    chunks = lancedb.connect(str(db)).open_table("chunks").to_arrow().sort_by(s.CHUNK_ID)
    rejects = lancedb.connect(str(db)).open_table("rejects").to_arrow()
    rejects = rejects.filter(pa.compute.equal(rejects.column("run_id"), run_id))
    t = outcome.totals
    counts = {"docs_in": t.docs_in, "docs": t.docs, "chunks": t.chunks, "tokens": t.tokens, "rejected": t.rejected}
    counts |= {k: getattr(outcome, k) for k in ("added", "replaced", "skipped", "removed")}
    spans = (s.CHUNK_ID, s.DOC_ID, s.CHUNK_INDEX, s.DOC_CHUNKS, s.CHAR_START, s.CHAR_END, s.N_TOKENS)
    return {
        "counts": counts,
        "rejects": sorted(
            [r["doc_id"] or "", Path(r["source"]).name, r["line"] or 0, r["reason"]] for r in rejects.to_pylist()
        ),
        "chunks": [
            [*(r[c] for c in spans), _hash(r[s.TEXT].encode()), _vector_hash(r[s.VECTOR])] for r in chunks.to_pylist()
        ],
    }


@pytest.mark.parametrize("commit_rows", [10, 10_000])
def test_new_path_equals_the_old_one_on_two_runs(minilm_path, tmp_path, commit_rows):
    plan = ChunkPlan(*EXPECTED["plan"])
    chunker = Chunker(load_tokenizer(minilm_path), plan)
    store = LanceStore(str(tmp_path / "db"))
    for run_id, folder, delete_missing in (("r1", "run1", False), ("r2", "run2", True)):
        outcome, _ = ingest_in_process(
            store,
            run_id,
            InputSettings(paths=[str(DATA / folder)]),
            chunker,
            FakeEmbedder(dim=8),
            {"model": "fake"},
            commit_rows=commit_rows,
            embed_rows=7,
            delete_missing=delete_missing,
        )
        got, want = observed(tmp_path / "db", outcome, run_id), EXPECTED[folder]
        assert got["counts"] == want["counts"]
        assert got["rejects"] == want["rejects"]
        assert got["chunks"] == [list(c) for c in want["chunks"]]
