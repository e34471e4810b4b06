"""Stores as tests set them up."""

import lancedb

from pipeline import schema as s
from pipeline.store.lance_store import LanceStore


def empty_chunks_table(store: LanceStore, dim: int, metadata: dict):
    """The chunks table, made empty with the metadata a run would give it (a run makes it at its first commit)."""
    db = lancedb.connect(store.uri)
    return db.create_table(store.names.chunks, schema=s.chunks_table_schema(dim, metadata), exist_ok=True)
