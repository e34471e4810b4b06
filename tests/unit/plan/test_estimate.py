"""The estimate's arithmetic: tallies of the chunk stage's rows, a seeded sample and its interval, the rate from
the store's own runs, and the projection."""

import json
import math
import random
from collections import Counter
from dataclasses import replace

import pyarrow as pa
import pytest

from benchmarks.model_configs import QWEN3
from pipeline import schema as s
from pipeline.plan.estimate import (
    ASSUMED_MFU,
    PieceIndex,
    Rate,
    Sample,
    Tally,
    in_sample,
    project,
    rate_from_bench,
    rate_from_flops,
    rate_from_runs,
    scaled_tokens,
)
from pipeline.plan.model_params import shape_from_config
from tests.support.stores import run_record

pytestmark = pytest.mark.unit


def chunk_rows(rows: list[dict]) -> pa.Table:
    full = [{f.name: r.get(f.name) for f in s.CHUNK_SCHEMA} for r in rows]
    return pa.Table.from_pylist(full, schema=s.CHUNK_SCHEMA)


ROWS = [
    {s.CHUNK_ID: "a0", s.DOC_ID: "a", s.CHUNK_INDEX: 0, s.N_TOKENS: 100, s.FATE: "new", s.SOURCE: "x"},
    {s.CHUNK_ID: "a1", s.DOC_ID: "a", s.CHUNK_INDEX: 1, s.N_TOKENS: 40, s.FATE: "new", s.SOURCE: "x"},
    {s.CHUNK_ID: "b0", s.DOC_ID: "b", s.CHUNK_INDEX: 0, s.N_TOKENS: 60, s.FATE: "changed", s.SOURCE: "x"},
    {s.DOC_ID: "c", s.FATE: "unchanged", s.SOURCE: "x"},
    {s.DOC_ID: "d", s.FATE: "removed", s.SOURCE: ""},
    {s.DOC_ID: "e", s.REJECT_REASON: "empty_text", s.SOURCE: "x"},
]


def test_a_tally_counts_documents_chunks_and_tokens_per_fate():
    tally = Tally.of(chunk_rows(ROWS))
    assert tally.docs == Counter({"new": 1, "changed": 1, "unchanged": 1, "removed": 1, "rejected": 1})
    assert tally.chunks == Counter({"new": 2, "changed": 1}) and tally.tokens == Counter({"new": 140, "changed": 60})
    assert tally.tokens_to_embed == 200 and tally.chunks_to_embed == 3
    assert tally.lengths == Counter({100: 1, 40: 1, 60: 1})
    assert tally.piece_tokens == Counter()  # no sample, no pieces counted
    assert Tally.from_json(tally.to_json()) == tally
    both = tally + tally
    assert both.tokens_to_embed == 400 and both.docs["removed"] == 2


def test_with_a_sample_each_chunks_tokens_count_to_the_piece_its_line_falls_in():
    rows = [
        {s.CHUNK_ID: "a0", s.CHUNK_INDEX: 0, s.N_TOKENS: 100, s.FATE: "new", s.SOURCE: "x.jsonl", s.LINE: 1},
        {s.CHUNK_ID: "a1", s.CHUNK_INDEX: 1, s.N_TOKENS: 40, s.FATE: "new", s.SOURCE: "x.jsonl", s.LINE: 1},
        {s.CHUNK_ID: "b0", s.CHUNK_INDEX: 0, s.N_TOKENS: 60, s.FATE: "new", s.SOURCE: "x.jsonl", s.LINE: 50},
        {s.CHUNK_ID: "c0", s.CHUNK_INDEX: 0, s.N_TOKENS: 7, s.FATE: "new", s.SOURCE: "x.jsonl", s.LINE: 49},
        {s.CHUNK_ID: "t0", s.CHUNK_INDEX: 0, s.N_TOKENS: 9, s.FATE: "changed", s.SOURCE: "y.md", s.LINE: None},
    ]
    index = PieceIndex.listing([("x.jsonl", 50), ("y.md", 1), ("x.jsonl", 1)])  # ids 0, 1, 2
    tally = Tally.of(chunk_rows(rows), index)
    assert tally.piece_tokens == Counter({2: 147, 0: 60, 1: 9})
    assert Tally.from_json(tally.to_json()) == tally


def test_percentiles_of_the_chunk_lengths():
    tally = Tally(lengths=Counter({10: 10, 100: 80, 255: 10}))
    assert tally.percentiles((0.05, 0.5, 0.95)) == {0.05: 10, 0.5: 100, 0.95: 255}


def test_a_seeded_sample_keeps_the_same_pieces_and_about_its_share():
    keys = [f"s3://b/part-{i}.jsonl:0" for i in range(20000)]
    kept = [k for k in keys if Sample(0.1, seed=7).keeps(k)]
    assert kept == [k for k in keys if in_sample(k, 0.1, seed=7)]
    assert abs(len(kept) / len(keys) - 0.1) < 0.01
    assert kept != [k for k in keys if Sample(0.1, seed=8).keeps(k)]


def test_the_scaled_total_and_its_interval_cover_the_truth_about_95_percent_of_the_time():
    rng = random.Random(1)
    sizes = [rng.randint(1, 5000) for _ in range(3000)]
    truth = sum(sizes)
    covered = 0
    for seed in range(200):
        picked = Counter({i: n for i, n in enumerate(sizes) if in_sample(f"piece-{i}", 0.1, seed)})
        tally = Tally(tokens=Counter({"new": sum(picked.values())}), piece_tokens=picked)
        total, half = scaled_tokens(tally, 0.1)
        covered += abs(total - truth) <= half
    assert 0.9 <= covered / 200 <= 0.99
    assert scaled_tokens(Tally(tokens=Counter({"new": 5})), 1.0) == (5.0, 0.0)


def run(tokens, work_s, startup_s=20.0, status="succeeded", device="cpu", budget=8192, model="m", engines=1):
    settings = json.dumps({"resolved": {"device": device}})
    wall_s = startup_s + work_s + 5.0
    return run_record(
        "r",
        status=status,
        model=model,
        max_model_len=256,
        max_num_batched_tokens=budget,
        tokens=tokens,
        wall_s=wall_s,
        startup_s=startup_s,
        maintenance_s=5.0,
        engine_s=wall_s * engines,
        settings=settings,
    )


def test_the_rate_is_the_median_of_the_stores_runs_alike_over_their_working_time():
    runs = [
        run(1000, 1.0),
        run(6000, 1.0, 30.0, engines=2),
        run(2000, 1.0, 25.0),
        run(9000, 1.0, status="failed"),
        run(9000, 1.0, device="cuda"),
        run(9000, 1.0, budget=16384),
        run(9000, 1.0, model="other"),
        run(0, 1.0),
        replace(run(9000, 1.0), engine_s=None),  # a row from before engine-seconds were recorded
    ]
    rate = rate_from_runs(runs, "m", 256, 8192, "cpu")
    assert rate.tokens_per_engine_s == 2000 and rate.startup_s == 25.0 and "3 earlier runs" in rate.source
    assert rate.after_s == 5.0
    assert rate_from_runs(runs, "m", 512, 8192, "cpu") is None


def bench(tokens_per_s, actors=1, **changes):
    row = {
        "kind": "pipeline",
        "model": "m",
        "device": "cpu",
        "max_model_len": 256,
        "max_num_batched_tokens": 8192,
        "tokens_per_s": tokens_per_s,
        "startup_s": 12.0,
        "params": json.dumps({"actors": actors}),
        "error": None,
    }
    return {**row, **changes}


def test_without_runs_the_benchmark_tables_runs_alike_give_the_rate():
    rows = [
        bench(3000.0),
        bench(8000.0, actors=2),
        bench(9e9, kind="bare"),
        bench(9e9, error="engine died"),
        bench(9e9, model="other"),
        bench(9e9, device="cuda"),
        bench(9e9, max_num_batched_tokens=16384),
    ]
    rate = rate_from_bench(rows, "m", 256, 8192, "cpu")
    assert rate.tokens_per_engine_s == 3500 and rate.startup_s == 12.0 and "2 benchmark runs" in rate.source
    assert rate_from_bench([bench(1.0, model=None)], "m", 256, 8192, "cpu") is None  # a table from before models


def test_a_projection_from_flops_says_what_it_assumed():
    shape = shape_from_config(QWEN3)
    rate = rate_from_flops(shape, Counter({2000: 10}), 989.0)
    assert "assumed" in rate.source and f"{ASSUMED_MFU:.0%}" in rate.source and rate.startup_s is None
    assert rate.tokens_per_engine_s > 0


def test_the_projection_spreads_tokens_over_the_engines_and_prices_the_device_hours():
    p = project(3_600_000, engines=2, rate=Rate(1000.0, 60.0, "runs", 10.0), devices_per_engine=0.5, price=4.0)
    assert p.embed_s == 1800 and p.wall_s == 1870
    assert p.device_hours == pytest.approx(1870 * 2 * 0.5 / 3600) and p.cost == pytest.approx(p.device_hours * 4)
    assert "1,800 s of embedding + 60 s start-up + 10 s maintenance = 1,870 s" in p.text()
    assert project(10, 1, Rate(10.0, None, "x"), 1.0, None).cost is None
    assert math.isclose(project(10, 1, Rate(10.0, None, "x"), 1.0, None).wall_s, 1.0)
