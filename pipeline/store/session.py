"""What a run's workers need of the store, opened once the run is recorded: the stored keys the fates are decided
from (None for a new table), the chunk writer, and the stored vectors' width. No ray or vllm imports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from pipeline import schema as s
from pipeline.store.chunk_writer import ChunkWriter
from pipeline.store.stored_keys import StoredKeys

if TYPE_CHECKING:  # the store is opened on the driver; the workers that import this module never load lancedb
    from pipeline.store.lance_store import LanceStore

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class StoreSession:
    keys: StoredKeys | None
    writer: ChunkWriter
    dim: int | None
    """Width of the stored vectors (None: no chunks table yet)."""


def open_session(store: LanceStore, run_id: str, chunking: str, metadata: dict, dim: int | None) -> StoreSession:
    store.ensure_side_tables()
    if store.add_reader_columns():
        log.info("store_upgraded", added=s.READER_COLUMNS, reason="the frameworks' LanceDB stores read them")
    keys = store.stored_keys()
    if keys is not None and not keys.has_key_index():
        log.warning(
            "store_unindexed",
            reason="no B-tree on doc_id: each plan lookup scans the chunks "
            "table; keep doc_id in index.scalar_columns with index.after_run",
        )
    log.info("store_read", version=keys.version if keys else None, lookups="doc_id" if keys else "none")
    writer = store.chunk_writer(run_id, metadata["model"], chunking, metadata)
    return StoreSession(keys, writer, dim)
