"""The plan: what happens to each input document, decided before anything is embedded. Pure: no ray or vllm.

Rows arrive grouped by plan key (the document id): every input copy of an id, and, when the run removes
documents gone from the inputs, one row per stored document id. `decide` picks the copy that counts and
marks removals; `stored_fates` then compares the kept copies with the stored chunks' keys. The driver never
sees the documents; Ray does the grouping (a hash shuffle on the key) and the lookups run in workers.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schema as s

KEY_COLUMNS = [s.DOC_ID, s.DOC_HASH, s.DOC_CHUNKS, s.CHUNKING, s.CHUNK_INDEX]
"""What the plan reads of the stored chunks: keys only, never text or vectors."""
NO_KEYS = pa.schema([s.chunks_table_schema(1).field(c) for c in KEY_COLUMNS]).empty_table()


def _order(row: dict) -> tuple:
    return (row[s.SOURCE], -1 if row[s.LINE] is None else row[s.LINE])


def decide(group: pa.Table) -> pa.Table:
    """One plan key's rows (READ_SCHEMA) in, the same rows decided: the input copy with the smallest source and
    line is the one the run takes (whatever reached which worker first); every other copy becomes a
    duplicate_id reject naming it. A stored id no input row holds becomes a FATE_REMOVED marker."""
    if group.num_rows == 1 and not group.column(s.IN_STORE)[0].as_py():
        return group  # one copy, nothing stored to compare in this group: most documents
    rows = group.to_pylist()
    inputs = sorted((r for r in rows if not r[s.IN_STORE]), key=_order)
    stats = [r[s.SHARD_STATS] for r in rows if r[s.SHARD_STATS]]
    if not inputs:
        doc_id = rows[0][s.DOC_ID]
        out = [{s.DOC_ID: doc_id, s.SOURCE: "", s.PLAN_KEY: doc_id, s.FATE: s.FATE_REMOVED, s.IN_STORE: True}]
    elif len(inputs) == 1 or inputs[0][s.DOC_ID] is None:
        out = inputs
    else:
        first = inputs[0]
        line = f" line {first[s.LINE]}" if first[s.LINE] is not None else ""
        detail = f"document id also at {first[s.SOURCE]}{line}, which comes first"
        out = [first] + [
            {**r, s.TEXT: None, s.DOC_HASH: None, s.REJECT_REASON: "duplicate_id", s.REJECT_DETAIL: detail}
            for r in inputs[1:]
        ]
    for r in out:
        r[s.SHARD_STATS] = None
    out[0][s.SHARD_STATS] = merge_stats(stats)
    return pa.Table.from_pylist(out, schema=s.READ_SCHEMA)


def merge_stats(payloads: list[str]) -> str | None:
    """Stage seconds (and bytes) of several stats payloads added up into one."""
    if not payloads:
        return None
    total: dict[str, float] = {}
    for payload in payloads:
        for key, value in json.loads(payload).items():
            total[key] = total.get(key, 0) + value
    return json.dumps(total)


def complete_documents(stored: pa.Table, chunking: str) -> dict[str, str]:
    """doc_id -> doc_hash of the documents whose stored chunks (KEY_COLUMNS rows) are one whole version made
    with this chunking: every chunk index of it present, no chunk of another text or chunking beside it."""
    if not len(stored):
        return {}
    groups = stored.group_by(KEY_COLUMNS[:4]).aggregate([(s.CHUNK_INDEX, "count_distinct")])
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
                fates[i], texts[i] = s.FATE_UNCHANGED, None
            else:
                fates[i] = s.FATE_CHANGED if doc_id in present else s.FATE_NEW
    docs = docs.set_column(docs.schema.get_field_index(s.FATE), s.FATE, pa.array(fates, pa.string()))
    return docs.set_column(docs.schema.get_field_index(s.TEXT), s.TEXT, pa.array(texts, pa.large_string()))


def with_fates(docs: pa.Table, lookup: Callable[[list[str]], pa.Table] | None, chunking: str) -> pa.Table:
    """stored_fates with the stored keys of the batch's pending documents fetched by `lookup` (None: no table)."""
    docs = docs.combine_chunks()  # a block of many small groups arrives in as many chunks
    ids = pending_ids(docs)
    stored = lookup(ids) if lookup is not None and ids else NO_KEYS
    return stored_fates(docs, stored, chunking)


def stored_id_rows(doc_ids: list[str]) -> pa.Table:
    """Plan rows saying the store holds these documents (read only when the run removes what the inputs lost)."""
    rows = [{s.DOC_ID: d, s.SOURCE: "", s.PLAN_KEY: d, s.IN_STORE: True} for d in doc_ids]
    return pa.Table.from_pylist(rows, schema=s.READ_SCHEMA)


def pending_ids(docs: pa.Table) -> list[str]:
    """Document ids whose fate still depends on what the store holds."""
    mask = pc.and_(pc.is_null(docs.column(s.FATE)), pc.is_null(docs.column(s.REJECT_REASON)))
    return pc.unique(docs.filter(mask).column(s.DOC_ID)).to_pylist()
