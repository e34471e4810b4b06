"""What a committed group adds to the live metrics: every count the driver commits, rejects by reason and each
engine's busy seconds, and nothing for what the group did not do."""

import pytest

from pipeline.records import BatchPayload
from pipeline.run.live_metrics import Increment, group_increments, status_values
from pipeline.stats import BatchStats
from tests.unit.test_records import record

pytestmark = pytest.mark.unit


def batch(actor: str, embed_s: float) -> BatchPayload:
    return BatchPayload(BatchStats(actor, 0, 2, 100, 60, embed_s, 0.0))


def test_a_group_adds_its_chunks_tokens_fates_rejects_and_engine_seconds():
    group = record(
        rows=5,
        tokens=700,
        docs={"new": 2, "changed": 0, "unchanged": 3},
        rejects=[{"reason": "empty_text"}, {"reason": "too_long"}, {"reason": "empty_text"}],
        batches=[batch("engine-1", 0.5), batch("engine-0", 1.0), batch("engine-1", 0.25)],
    )
    assert group_increments(group) == [
        Increment("chunks", 5, {}),
        Increment("tokens_embedded", 700, {}),
        Increment("documents", 2, {"fate": "new"}),
        Increment("documents", 3, {"fate": "unchanged"}),
        Increment("rejects", 2, {"reason": "empty_text"}),
        Increment("rejects", 1, {"reason": "too_long"}),
        Increment("engine_busy_seconds", 1.0, {"engine": "engine-0"}),
        Increment("engine_busy_seconds", 0.75, {"engine": "engine-1"}),
    ]


def test_a_group_of_only_rejects_adds_only_rejects():
    group = record(rows=0, tokens=0, docs={}, rejects=[{"reason": "invalid_json"}], batches=[], fragments=[])
    assert group_increments(group) == [Increment("rejects", 1, {"reason": "invalid_json"})]


def test_the_status_is_a_state_set():
    assert status_values("failed") == {"running": 0.0, "succeeded": 0.0, "failed": 1.0, "interrupted": 0.0}
    with pytest.raises(ValueError, match="unknown run status 'done'"):
        status_values("done")
