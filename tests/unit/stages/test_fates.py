"""The plan's decisions: which copy of an id counts (the same whatever order the copies arrive in), what is
removed, and when stored chunks make a document unchanged."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline import schema as s
from pipeline.schema import KEY_COLUMNS
from pipeline.stages.fates import complete_documents, decide, decide_all, stored_fates, stored_id_rows
from pipeline.stats import ShardStats

pytestmark = pytest.mark.unit


def copy(source: str, line: int | None, text: str = "t", doc_id: str = "x") -> dict:
    return {s.DOC_ID: doc_id, s.SOURCE: source, s.LINE: line, s.TEXT: text, s.DOC_HASH: text, s.PLAN_KEY: doc_id}


@given(st.permutations(range(5)))
def test_the_smallest_source_and_line_wins_in_any_arrival_order(order):
    copies = [copy("b.jsonl", 9), copy("a.jsonl", 30), copy("a.jsonl", 4), copy("c.md", None), copy("b.jsonl", 1)]
    rows = decide(pa.Table.from_pylist([copies[i] for i in order], schema=s.READ_SCHEMA)).to_pylist()
    kept = [r for r in rows if r[s.REJECT_REASON] is None]
    assert [(r[s.SOURCE], r[s.LINE]) for r in kept] == [("a.jsonl", 4)]
    dups = [r for r in rows if r[s.REJECT_REASON] == "duplicate_id"]
    assert len(dups) == 4 and all("a.jsonl line 4" in r[s.REJECT_DETAIL] for r in dups)
    assert all(r[s.TEXT] is None for r in dups)


def test_stored_id_without_an_input_copy_is_removed_and_with_one_is_not():
    [gone] = decide(stored_id_rows(["x"])).to_pylist()
    assert (gone[s.DOC_ID], gone[s.FATE]) == ("x", s.Fate.REMOVED)
    both = pa.concat_tables([stored_id_rows(["x"]), pa.Table.from_pylist([copy("a", 1)], schema=s.READ_SCHEMA)])
    [kept] = decide(both).to_pylist()
    assert kept[s.FATE] is None and kept[s.REJECT_REASON] is None and kept[s.SOURCE] == "a"


def keys(rows: list[tuple]) -> pa.Table:
    names = KEY_COLUMNS
    return pa.Table.from_pylist([dict(zip(names, r, strict=True)) for r in rows])


def test_only_a_whole_single_version_with_this_chunking_is_complete():
    whole = [("whole", "h1", 2, "c", 0), ("whole", "h1", 2, "c", 1)]
    partial = [("partial", "h1", 3, "c", 0), ("partial", "h1", 3, "c", 2)]
    two_texts = [("two", "h1", 1, "c", 0), ("two", "h2", 1, "c", 0)]
    stored = keys([*whole, *partial, *two_texts, ("other", "h1", 1, "c2", 0)])
    rows = list(stored.to_pylist())
    random.Random(0).shuffle(rows)
    assert complete_documents(pa.Table.from_pylist(rows), "c") == {"whole": "h1"}


def test_fates_compare_the_kept_copy_with_what_is_stored():
    docs = pa.Table.from_pylist(
        [copy("a", 1, "h1", "whole"), copy("a", 2, "new-text", "whole2"), copy("a", 3, "h9", "fresh")],
        schema=s.READ_SCHEMA,
    )
    stored = keys([("whole", "h1", 1, "c", 0), ("whole2", "old-text", 1, "c", 0)])
    out = stored_fates(docs, stored, "c").to_pylist()
    assert [r[s.FATE] for r in out] == [s.Fate.UNCHANGED, s.Fate.CHANGED, s.Fate.NEW]
    assert out[0][s.TEXT] is None and out[1][s.TEXT] == "new-text"  # unchanged documents leave their text behind


def _decided_per_key(rows: pa.Table) -> list[dict]:
    by_key: dict[str, list[dict]] = {}
    for row in rows.to_pylist():
        by_key.setdefault(row[s.PLAN_KEY], []).append(row)
    out = []
    for group in by_key.values():
        out += decide(pa.Table.from_pylist(group, schema=s.READ_SCHEMA)).to_pylist()
    return out


def _canonical(rows: list[dict]) -> list[tuple]:
    """Rows as comparable tuples, their stats payloads compared by value (a merged payload names every field)."""

    def value(key, v):
        return ShardStats.from_json(v) if key == s.SHARD_STATS and v else v

    return sorted(tuple((k, str(value(k, v))) for k, v in sorted(r.items())) for r in rows)


@given(
    st.lists(st.tuples(st.sampled_from("abcdef"), st.sampled_from(["a.jsonl", "b.jsonl"]), st.integers(1, 5))),
    st.sets(st.sampled_from("abcdefgh")),
)
def test_decide_all_decides_each_key_as_decide_does(copies, stored):
    inputs = [copy(src, line, doc_id=d) | {s.SHARD_STATS: f'{{"read_s": {line}}}'} for d, src, line in copies]
    parts = [pa.Table.from_pylist(inputs, schema=s.READ_SCHEMA), stored_id_rows(sorted(stored))]
    rows = pa.concat_tables(parts)
    rows = rows.take(pa.array(random.Random(len(copies)).sample(range(len(rows)), len(rows)), pa.int64()))
    got = decide_all(rows).to_pylist()
    assert _canonical(got) == _canonical(_decided_per_key(rows))
    removed = {r[s.DOC_ID] for r in got if r[s.FATE] == s.Fate.REMOVED}
    assert removed == stored - {d for d, _, _ in copies}
