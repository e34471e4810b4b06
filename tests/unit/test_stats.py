"""Timing records that add up: per-shard stage seconds and per-batch engine figures."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from pipeline.stats import STAGES, BatchStats, RunTotals, ShardStats

pytestmark = pytest.mark.unit


def test_shard_stats_add_up_across_payloads_and_name_the_runs_columns():
    read = ShardStats(read_s=0.5, parse_s=0.25, bytes=1000).to_json()
    chunk = ShardStats(chunk_s=1.5).to_json()
    total = ShardStats.total([read, None, chunk, read])
    assert total == ShardStats(read_s=1.0, parse_s=0.5, chunk_s=1.5, bytes=2000)
    assert ShardStats.total([None, ""]) is None and ShardStats.total([]) is None
    assert set(total.stages()) <= set(STAGES) and total.stages()["chunk_s"] == 1.5
    assert ShardStats.from_json(total.to_json()) == total


def test_shard_stats_refuse_keys_they_do_not_know():
    with pytest.raises(TypeError):
        ShardStats.from_json('{"read_s": 1.0, "embed_s": 2.0}')  # a typo or a stage from elsewhere is not summed


def test_batch_stats_round_trip_and_run_totals_add():
    batch = BatchStats("a", 0, 3, 300, 120, embed_s=0.5, wait_s=0.1, started_at=datetime.now(timezone.utc))
    assert BatchStats.from_json_dict(batch.to_json_dict()) == batch and batch.tokens_per_s == 600
    assert RunTotals(1, 1, 2, 30, 0) + RunTotals(2, 1, 3, 40, 1) == RunTotals(3, 2, 5, 70, 1)
