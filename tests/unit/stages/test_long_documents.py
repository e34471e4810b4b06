"""Long documents: tokenized in pieces with the same result as whole, chunked, never truncated."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.stages.tokenizer import load_tokenizer

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def long_text(sample_texts) -> str:
    return "\n\n".join(sample_texts) * 2


@pytest.mark.parametrize("piece_chars", [777, 5000, 20000])
def test_pieces_tokenize_like_the_whole_text(minilm_path, bpe_tokenizer_path, long_text, piece_chars):
    for path in (minilm_path, bpe_tokenizer_path):
        tok = load_tokenizer(path)
        whole_ids, whole_offsets = tok.encode(long_text)
        tok.segment_chars = piece_chars
        ids, offsets = tok.encode(long_text)
        assert ids == whole_ids
        # spans agree up to whitespace that byte-level BPE keeps at a piece's first token
        assert [long_text[a:b].strip() for a, b in offsets] == [long_text[a:b].strip() for a, b in whole_offsets]
        if path == minilm_path:
            assert offsets == whole_offsets


HUGE_DOC_SCRIPT = """
import json, resource, sys
from pathlib import Path
from pipeline.stages.chunk_step import ChunkStep
from pipeline.plan.chunk_plan import ChunkPlan
from pipeline.stages.chunking import Chunker
from pipeline.run.in_process import planned_documents
from pipeline.settings import InputSettings
from pipeline.stages.tokenizer import load_tokenizer
from benchmarks.model_builders import minilm_dir

inputs = Path(sys.argv[1])
tokenizer = load_tokenizer(minilm_dir())
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cfg = InputSettings(paths=[str(inputs)])
plan = ChunkPlan(511, 0, 0.15, "m")
rows = ChunkStep(Chunker(tokenizer, plan))(planned_documents(cfg, plan.fingerprint)).to_pylist()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_mb": (after - before) / 1024, "rows": [
    {k: r[k] for k in ("chunk_index", "doc_chunks", "char_start", "char_end", "n_tokens", "reject_reason")}
    for r in rows]}))
"""


def test_a_document_of_four_million_characters_is_chunked_in_bounded_memory(tmp_path, long_text):
    text = (long_text * (4_000_000 // len(long_text) + 1))[:4_000_000]
    (tmp_path / "huge.jsonl").write_text(json.dumps({"id": "huge", "text": text}) + "\n")
    proc = subprocess.run(
        [sys.executable, "-c", HUGE_DOC_SCRIPT, str(tmp_path)], cwd=REPO, capture_output=True, text=True, check=True
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = report["rows"]
    assert all(r["reject_reason"] is None and r["n_tokens"] <= 511 for r in rows)
    assert len(rows) == rows[0]["doc_chunks"] > 1500
    assert rows[0]["char_start"] == 0 and rows[-1]["char_end"] == len(text.rstrip())
    assert all(a["char_end"] <= b["char_start"] for a, b in itertools.pairwise(rows))
    assert report["growth_mb"] < 1024, f"chunking a 4 MB document grew the process by {report['growth_mb']:.0f} MB"
