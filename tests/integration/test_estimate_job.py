"""`jobs.ingest --estimate` runs the read, plan and chunk stages on Ray with no engine and writes nothing; its
tokens per fate are exactly what the next run embeds; the rate comes from the store's own earlier run; `--sample`
reads exactly the seeded sample's pieces and scales them up; and the run records what the estimate would
have projected next to what it took."""

import json
import re
from pathlib import Path

import lancedb
import pytest

from pipeline.plan.estimate import in_sample
from pipeline.settings import InputSettings
from pipeline.stages.pieces import split_shard
from pipeline.stages.sources import Inputs
from tests.job_process import stand_in_ingest

pytestmark = pytest.mark.ray


def table(db: Path, name: str) -> list[dict]:
    return lancedb.connect(str(db)).open_table(name).to_arrow().to_pylist()


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


@pytest.fixture(scope="module")
def store(tiny_model_path, sample_texts, tmp_path_factory):
    root = tmp_path_factory.mktemp("estimate")
    first, second, records, db = root / "first", root / "second", root / "records", root / "db"
    for d in (first, second, records):
        d.mkdir()
    docs = {f"d{i}": sample_texts[i] for i in range(16)}
    (first / "a.jsonl").write_text(
        "".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in list(docs.items())[:10])
    )
    stand_in_ingest(tiny_model_path, first, db, records)
    docs["d3"] = "Edited. " + docs["d3"]
    lines = [json.dumps({"id": k, "text": v}) for k, v in docs.items()] + ["{not json"]
    (second / "a.jsonl").write_text("\n".join(lines) + "\n")
    return tiny_model_path, second, db, records


def test_the_estimate_is_what_the_run_then_embeds_and_writes_nothing(store):
    model, corpus, db, records = store
    runs_before, chunks_before = table(db, "runs"), table(db, "chunks")
    out = stand_in_ingest(model, corpus, db, records, "--estimate", "--run.device-hour-price", "1.5").stdout
    assert table(db, "runs") == runs_before and len(table(db, "chunks")) == len(chunks_before)
    guess = estimated(out)
    assert (guess["new"], guess["changed"], guess["unchanged"], guess["rejected"]) == (6, 1, 9, 1)
    assert "rate: median of 1 earlier run of this store" in out and ", cost " in out
    assert re.search(r"chunk tokens: p10 [\d,]+, p50 [\d,]+, p90 [\d,]+, p99 [\d,]+, max [\d,]+", out)

    ran = stand_in_ingest(model, corpus, db, records, "--run.device-hour-price", "1.5")
    run = max(table(db, "runs"), key=lambda r: r["started_at"])
    assert (run["added"], run["replaced"], run["skipped"], run["rejected"]) == (6, 1, 9, 1)
    assert (run["tokens"], run["chunks"]) == (guess["tokens"], guess["chunks"])
    assert run["estimate_s"] > 0 and run["estimate_source"].startswith("median of 1 earlier run")
    assert re.search(r"; estimated [\d.,]+ s from earlier runs' rate, took [\d.,]+ s \([+-]\d+%\)", ran.stdout)


def test_a_sample_reads_exactly_its_pieces_and_scales_them_up(store, tmp_path):
    model, corpus, _, records = store
    db = tmp_path / "empty"  # every document new
    piece_mb = "0.002"  # pieces of about 2 KB: the corpus's one file is read in several
    sample = ("--estimate", "--sample", "0.5", "--seed", "3", "--input.piece-mb", piece_mb)
    out = stand_in_ingest(model, corpus, db, records, *sample)
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
    stand_in_ingest(model, corpus, db, records)  # the documents' own tokens, from the stored chunks
    line = {f"d{i}": i + 1 for i in range(16)}  # the fixture's file: d0 ... d15, one a line
    sampled = sum(c["n_tokens"] for c in table(db, "chunks") if any(line[c["doc_id"]] in r for r in kept))
    guess = estimated(out.stdout)
    assert guess["tokens"] == round(sampled / 0.5)
    half = int(re.search(r"\+- ([\d,]+) \(95%\)", out.stdout).group(1).replace(",", ""))
    assert half > 0
