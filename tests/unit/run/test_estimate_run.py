"""The estimate in this process (the in-process executor, the fake engine): its tokens per fate are exactly what the
next run embeds, it writes nothing, its rate is the store's own earlier run's, and the run records what the estimate
would have projected. The estimate's tally on Ray, with a seeded sample: tests/ray/test_estimate_job.py."""

from __future__ import annotations

import json

import lancedb
import pytest

from pipeline.run.estimate import run_estimate
from pipeline.run.in_process import InProcessExecutor
from pipeline.run.ingest import run_ingest
from pipeline.settings import Settings
from tests.fakes import FakeEmbedder

pytestmark = pytest.mark.unit


def settings_for(corpus, db, minilm_path) -> Settings:
    return Settings(
        input={"paths": [str(corpus)]},
        model={"path": str(minilm_path), "device": "cpu"},
        store={"uri": str(db)},
        run={"device_hour_price": 1.5, "batch_rows": 4},
        index={"after_run": False},
    )


def table(db, name: str) -> list[dict]:
    return lancedb.connect(str(db)).open_table(name).to_arrow().to_pylist()


def test_the_estimate_is_what_the_run_then_embeds_and_writes_nothing(minilm_path, sample_texts, tmp_path):
    first, second, db = tmp_path / "first", tmp_path / "second", tmp_path / "db"
    first.mkdir()
    second.mkdir()
    docs = {f"d{i}": sample_texts[i] for i in range(16)}
    (first / "a.jsonl").write_text(
        "".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in list(docs.items())[:10])
    )
    run_ingest(settings_for(first, db, minilm_path), InProcessExecutor(FakeEmbedder(dim=16)))
    docs["d3"] = "Edited. " + docs["d3"]
    lines = [json.dumps({"id": k, "text": v}) for k, v in docs.items()] + ["{not json"]
    (second / "a.jsonl").write_text("\n".join(lines) + "\n")

    runs_before, chunks_before = table(db, "runs"), len(table(db, "chunks"))
    estimate = run_estimate(settings_for(second, db, minilm_path), executor=InProcessExecutor())
    assert table(db, "runs") == runs_before and len(table(db, "chunks")) == chunks_before
    tally = estimate.counted.tally
    assert dict(tally.docs) == {"new": 6, "changed": 1, "unchanged": 9, "rejected": 1}
    said = "\n".join(estimate.lines())
    assert "rate: median of 1 earlier run of this store" in said and ", cost " in said

    result = run_ingest(settings_for(second, db, minilm_path), InProcessExecutor(FakeEmbedder(dim=16)))
    run = max(table(db, "runs"), key=lambda r: r["started_at"])
    assert (run["added"], run["replaced"], run["skipped"], run["rejected"]) == (6, 1, 9, 1)
    assert (run["tokens"], run["chunks"]) == (estimate.tokens, tally.chunks_to_embed)
    assert run["estimate_s"] > 0 and run["estimate_source"].startswith("median of 1 earlier run")
    assert f"estimated {run['estimate_s']:,.1f} s from earlier runs' rate" in result.summary_line()
