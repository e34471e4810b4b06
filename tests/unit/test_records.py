"""The messages from workers to the driver survive JSON whole, and a malformed one fails where it is read,
naming the fields, instead of as a KeyError deep in the commit."""

import json
from datetime import datetime, timezone

import pytest

from pipeline.records import BatchPayload, GroupRecord
from pipeline.schema import Fate
from pipeline.stats import BatchStats

pytestmark = pytest.mark.unit

STATS = BatchStats("a1", 0, 3, 300, 120, 0.5, 0.1, datetime(2026, 12, 3, tzinfo=timezone.utc), 300)


def record(**changes) -> GroupRecord:
    values = {
        "group": "g1",
        "node": "n1",
        "rows": 3,
        "tokens": 300,
        "docs": {Fate.NEW.value: 1, Fate.CHANGED.value: 1, Fate.UNCHANGED.value: 2},
        "replaced_ids": ["d2"],
        "removed_ids": ["d9"],
        "rejects": [{"doc_id": "d3", "reason": "empty_text"}],
        "batches": [BatchPayload(STATS, {"engine": "fake", "ready_at": "2026-12-03T00:00:00+00:00"})],
        "stages": {"read_s": 0.1, "write_s": 0.2},
        "fragments": ['{"id": 0}'],
        "dim": 8,
    }
    return GroupRecord(**{**values, **changes})


def test_a_group_record_round_trips_through_json():
    original = record()
    back = GroupRecord.from_json(original.to_json())
    assert back == original
    assert back.batches[0].batch.started_at == STATS.started_at and back.count(Fate.CHANGED) == 1
    assert back.count(Fate.REMOVED) == 0


def test_a_batch_payload_without_engine_round_trips():
    assert BatchPayload.from_json(BatchPayload(STATS).to_json()) == BatchPayload(STATS)


def test_a_misspelled_or_missing_field_fails_naming_it():
    data = json.loads(record().to_json())
    data["tokenz"] = data.pop("tokens")
    with pytest.raises(ValueError, match=r"unknown fields \['tokenz'\] and lacks \['tokens'\]"):
        GroupRecord.from_json(json.dumps(data))
    with pytest.raises(ValueError, match="BatchPayload"):
        BatchPayload.from_json(json.dumps({"batch": STATS.to_json_dict(), "engines": None}))


def test_optional_fields_may_be_left_out():
    data = json.loads(record().to_json())
    del data["fragments"], data["dim"]
    assert GroupRecord.from_json(json.dumps(data)).fragments == []
