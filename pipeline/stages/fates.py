"""Fates: what happens to each input document, decided before anything is embedded. Pure: no ray or vllm.

Rows arrive grouped by plan key (the document id): every input copy of an id, and, when the run removes
documents gone from the inputs, one row per stored document id. `decide_all` picks the copy that counts and
marks removals; `stored_fates` then compares the kept copies with the stored chunks' keys. The driver never
sees the documents; Ray does the grouping (a hash shuffle on the key) and the lookups run in workers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schema as s
from pipeline.stats import ShardStats

NO_KEYS = pa.schema([s.chunks_table_schema(1).field(c) for c in s.KEY_COLUMNS]).empty_table()


def _order(row: dict) -> tuple:
    return (row[s.SOURCE], -1 if row[s.LINE] is None else row[s.LINE])


def decide_all(rows: pa.Table) -> pa.Table:
    """Rows of any number of plan keys (READ_SCHEMA, every row of each key present) in, decided as `decide`
    decides each key's rows. Vectorized for what most keys hold: one input copy, with or without a stored id
    beside it (the copy passes as it is), or a stored id alone (a removal marker); only keys with several input
    copies go through `decide` one by one."""
    if not len(rows):
        return rows
    rows = rows.combine_chunks()
    rows = rows.take(pc.sort_indices(rows, [(s.PLAN_KEY, "ascending")]))
    keys = rows.column(s.PLAN_KEY)
    starts_here = np.ones(len(rows), dtype=bool)
    if len(rows) > 1:
        starts_here[1:] = pc.not_equal(keys.slice(1), keys.slice(0, len(rows) - 1)).to_numpy(zero_copy_only=False)
    group = np.cumsum(starts_here) - 1
    stored = pc.fill_null(rows.column(s.IN_STORE), False).to_numpy(zero_copy_only=False)
    inputs = np.bincount(group, weights=~stored).astype(np.int64)[group]
    starts = np.flatnonzero(starts_here)
    out = [rows.filter(pa.array(~stored & (inputs == 1)))]
    gone = starts[inputs[starts] == 0]
    if len(gone):
        out.append(removal_rows(rows.column(s.DOC_ID).take(pa.array(gone))))
    ends = np.append(starts[1:], len(rows))
    for start, end in zip(starts, ends, strict=True):
        if inputs[start] > 1:
            out.append(decide(rows.slice(start, end - start)))
    return pa.concat_tables(out).combine_chunks()


def decide(group: pa.Table) -> pa.Table:
    """One plan key's rows (READ_SCHEMA) in, the same rows decided: the input copy with the smallest source and
    line is the one the run takes (whatever reached which worker first); every other copy becomes a
    duplicate_id reject naming it. A stored id no input row holds becomes a Fate.REMOVED marker."""
    rows = group.to_pylist()
    inputs = sorted((r for r in rows if not r[s.IN_STORE]), key=_order)
    stats = [r[s.SHARD_STATS] for r in rows if r[s.SHARD_STATS]]
    if not inputs:
        return removal_rows(pa.array([rows[0][s.DOC_ID]], pa.string()))
    if len(inputs) == 1 or inputs[0][s.DOC_ID] is None:
        out = inputs
    else:
        first = inputs[0]
        line = f" line {first[s.LINE]}" if first[s.LINE] is not None else ""
        detail = f"document id also at {first[s.SOURCE]}{line}, which comes first"
        out = [first] + [
            {
                **r,
                s.TEXT: None,
                s.DOC_HASH: None,
                s.REJECT_REASON: s.RejectReason.DUPLICATE_ID,
                s.REJECT_DETAIL: detail,
            }
            for r in inputs[1:]
        ]
    for r in out:
        r[s.SHARD_STATS] = None
    out[0][s.SHARD_STATS] = merge_stats(stats)
    return pa.Table.from_pylist(out, schema=s.READ_SCHEMA)


def _id_rows(doc_ids: pa.Array, fate: str | None) -> pa.Table:
    n = len(doc_ids)
    given = {
        s.DOC_ID: doc_ids,
        s.PLAN_KEY: doc_ids,
        s.SOURCE: pa.array([""] * n, pa.string()),
        s.IN_STORE: pa.array(np.ones(n, dtype=bool)),
        s.FATE: pa.array([fate] * n, pa.string()),
    }
    return pa.table({f.name: given.get(f.name, pa.nulls(n, f.type)) for f in s.READ_SCHEMA}, schema=s.READ_SCHEMA)


def removal_rows(doc_ids: pa.Array) -> pa.Table:
    """Fate.REMOVED markers: stored documents no input holds."""
    return _id_rows(doc_ids, s.Fate.REMOVED)


def merge_stats(payloads: list[str]) -> str | None:
    """Several ShardStats payloads added up into one; None when there are none."""
    total = ShardStats.total(payloads)
    return total.to_json() if total else None


def complete_documents(stored: pa.Table, chunking: str) -> dict[str, str]:
    """doc_id -> doc_hash of the documents whose stored chunks (KEY_COLUMNS rows) are one whole version made
    with this chunking: every chunk index of it present, no chunk of another text or chunking beside it."""
    if not len(stored):
        return {}
    groups = stored.group_by(s.KEY_COLUMNS[:4]).aggregate([(s.CHUNK_INDEX, "count_distinct")])
    versions = groups.group_by([s.DOC_ID]).aggregate([(s.DOC_HASH, "count")])
    single = set(versions.filter(pc.equal(versions.column(f"{s.DOC_HASH}_count"), 1)).column(s.DOC_ID).to_pylist())
    whole = groups.filter(
        pc.and_(
            pc.equal(groups.column(s.CHUNKING), chunking),
            pc.equal(groups.column(f"{s.CHUNK_INDEX}_count_distinct"), groups.column(s.DOC_CHUNKS)),
        )
    )
    hashes = zip(whole.column(s.DOC_ID).to_pylist(), whole.column(s.DOC_HASH).to_pylist(), strict=True)
    return {doc_id: doc_hash for doc_id, doc_hash in hashes if doc_id in single}


def stored_fates(docs: pa.Table, stored: pa.Table, chunking: str) -> pa.Table:
    """Decided documents in, with FATE set on each kept copy: unchanged (stored whole with the same text and
    chunking), changed (some chunk stored, but not exactly that) or new. `stored` holds the KEY_COLUMNS rows of
    those documents' stored chunks. Unchanged documents and rejects leave their text behind."""
    complete = complete_documents(stored, chunking)
    present = set(stored.column(s.DOC_ID).to_pylist()) if len(stored) else set()
    fates, texts = docs.column(s.FATE).to_pylist(), docs.column(s.TEXT).to_pylist()
    reasons = docs.column(s.REJECT_REASON).to_pylist()
    for i, (doc_id, doc_hash) in enumerate(
        zip(docs.column(s.DOC_ID).to_pylist(), docs.column(s.DOC_HASH).to_pylist(), strict=True)
    ):
        if reasons[i] is not None:
            texts[i] = None
        elif fates[i] is None:
            if complete.get(doc_id) == doc_hash:
                fates[i], texts[i] = s.Fate.UNCHANGED, None
            else:
                fates[i] = s.Fate.CHANGED if doc_id in present else s.Fate.NEW
    docs = docs.set_column(docs.schema.get_field_index(s.FATE), s.FATE, pa.array(fates, pa.string()))
    return docs.set_column(docs.schema.get_field_index(s.TEXT), s.TEXT, pa.array(texts, pa.large_string()))


def with_fates(docs: pa.Table, lookup: Callable[[list[str]], pa.Table] | None, chunking: str) -> pa.Table:
    """stored_fates with the stored keys of the batch's pending documents fetched by `lookup` (None: no table)."""
    docs = docs.combine_chunks()  # a block of many small groups arrives in as many chunks
    ids = pending_ids(docs)
    stored = lookup(ids) if lookup is not None and ids else NO_KEYS
    return stored_fates(docs, stored, chunking)


def stored_id_rows(doc_ids: list[str] | pa.Array) -> pa.Table:
    """Plan rows saying the store holds these documents (read only when the run removes what the inputs lost)."""
    return _id_rows(pa.array(doc_ids, pa.string()), None)


def pending_ids(docs: pa.Table) -> list[str]:
    """Document ids whose fate still depends on what the store holds."""
    mask = pc.and_(pc.is_null(docs.column(s.FATE)), pc.is_null(docs.column(s.REJECT_REASON)))
    return pc.unique(docs.filter(mask).column(s.DOC_ID)).to_pylist()
