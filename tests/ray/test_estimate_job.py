"""`jobs.ingest --estimate --sample` on Ray: the read, plan and chunk stages tally in Ray's workers, with no engine and
no write, exactly the seeded sample's pieces, scaled up. The estimate against the run that follows it, in this
process: tests/unit/run/test_estimate_run.py."""

import json
import re
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.plan.estimate import in_sample
from pipeline.plan.job import plan_lengths
from pipeline.run.in_process import planned_documents
from pipeline.settings import InputSettings, Settings
from pipeline.stages.chunk_step import ChunkStep
from pipeline.stages.chunking import Chunker
from pipeline.stages.pieces import split_shard
from pipeline.stages.sources import Inputs
from pipeline.stages.tokenizer import load_tokenizer
from tests.job_process import stand_in_ingest

pytestmark = pytest.mark.ray


def estimated(stdout: str) -> dict:
    docs = re.search(
        r"documents: ([\d,]+) new, ([\d,]+) changed, ([\d,]+) unchanged, [\d,]+ removed, ([\d,]+) rej", stdout
    )
    embed = re.search(r"to embed: ([\d,]+) chunks, ([\d,]+)( \+- ([\d,]+) \(95%\))? tokens", stdout)
    n = [int(g.replace(",", "")) for g in docs.groups()]
    return {
        "new": n[0],
        "changed": n[1],
        "unchanged": n[2],
        "rejected": n[3],
        "chunks": int(embed.group(1).replace(",", "")),
        "tokens": int(embed.group(2).replace(",", "")),
    }


@pytest.fixture
def corpus(sample_texts, tmp_path) -> Path:
    """d0 ... d15, one a line, and a line that is not JSON."""
    root = tmp_path / "corpus"
    root.mkdir()
    lines = [json.dumps({"id": f"d{i}", "text": sample_texts[i]}) for i in range(16)] + ["{not json"]
    (root / "a.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_a_sample_reads_exactly_its_pieces_and_scales_them_up(tiny_model_path, corpus, tmp_path):
    model = tiny_model_path
    db = tmp_path / "empty"  # every document new
    piece_mb = "0.002"  # pieces of about 2 KB: the corpus's one file is read in several
    sample = ("--estimate", "--sample", "0.5", "--seed", "3", "--input.piece-mb", piece_mb)
    out = stand_in_ingest(model, corpus, db, *sample)
    said = re.search(r"a seeded sample of 50% of the input's pieces \(seed 3: (\d+) of (\d+) files", out.stdout)
    assert said, out.stdout
    assert not db.exists() or not any(db.iterdir())  # no table made
    settings = InputSettings(paths=[str(corpus)], piece_mb=float(piece_mb))
    inputs = Inputs.listed(settings)
    [shard] = inputs.shards
    pieces = split_shard(shard, inputs.fs, settings.piece_bytes)
    firsts = [p.first_line for p in pieces] + [10**9]
    kept = [range(firsts[i], firsts[i + 1]) for i, p in enumerate(pieces) if in_sample(p.key, 0.5, 3)]
    assert (int(said.group(1)), int(said.group(2))) == (len(kept), len(pieces)) and 1 < len(pieces)
    lengths = plan_lengths(Settings(model={"path": str(model), "name": "tiny"}))  # the job's own chunking, here
    chunks = ChunkStep(Chunker(load_tokenizer(model), lengths.chunk))(
        planned_documents(settings, lengths.chunk.fingerprint)
    )
    line = {f"d{i}": i + 1 for i in range(16)}  # the fixture's file: d0 ... d15, one a line
    made = chunks.filter(pa.compute.is_valid(chunks.column("chunk_id"))).to_pylist()
    sampled = sum(c["n_tokens"] for c in made if any(line[c["doc_id"]] in r for r in kept))
    guess = estimated(out.stdout)
    assert guess["tokens"] == round(sampled / 0.5)
    half = int(re.search(r"\+- ([\d,]+) \(95%\)", out.stdout).group(1).replace(",", ""))
    assert half > 0
