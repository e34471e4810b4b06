"""The LanceDB side: the four tables, where the chunks table lives, and what it holds. No ray or vllm imports."""

from __future__ import annotations

import os
from dataclasses import dataclass

import lancedb
import pyarrow as pa
import structlog

from pipeline import schema as s
from pipeline.errors import ForeignTable, StoreError
from pipeline.settings import StoreSettings, revealed
from pipeline.store.chunk_writer import ChunkWriter
from pipeline.store.stored_keys import StoredKeys

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TableNames:
    chunks: str
    batches: str
    runs: str
    rejects: str
    bench: str
    """The benchmark's table, when `python -m benchmarks.bench` ran against this store."""

    @classmethod
    def with_prefix(cls, prefix: str) -> TableNames:
        return cls(*(f"{prefix}{name}" for name in ("chunks", "batches", "runs", "rejects", "bench")))


class LanceStore:
    def __init__(self, uri: str, prefix: str = "", storage_options: dict[str, str] | None = None):
        self.uri = uri
        self.storage_options = storage_options or None
        self._chunks_seen = False
        self.names = TableNames.with_prefix(prefix)
        try:
            self._db = lancedb.connect(uri, storage_options=storage_options or None)
        except (OSError, ValueError) as exc:
            msg = f"cannot open LanceDB at store.uri={uri!r}: {exc}"
            raise StoreError(msg) from None

    @classmethod
    def from_settings(cls, store: StoreSettings, prefix: str | None = None) -> LanceStore:
        return cls(store.uri, store.table_prefix if prefix is None else prefix, revealed(store.storage_options))

    def table(self, name: str, schema: pa.Schema):
        """Open or create a side table; columns added to its schema since the table was made are added empty."""
        try:  # also completes a table whose creation a killed run left half done
            table = self._db.create_table(name, schema=schema, exist_ok=True)
        except ValueError:  # exists with an older schema
            table = self._db.open_table(name)
        missing = [f for f in schema if f.name not in table.schema.names]
        if any(not f.nullable for f in missing):
            msg = f"table {name!r} in {self.uri} lacks columns {[f.name for f in missing]}; use another table prefix"
            raise StoreError(msg)
        if missing:
            table.add_columns(missing)
            log.info("table_columns_added", table=name, columns=[f.name for f in missing])
        return table

    def ensure_side_tables(self) -> None:
        self.table(self.names.batches, s.BATCHES_SCHEMA)
        self.table(self.names.rejects, s.REJECTS_SCHEMA)

    def exists(self, name: str) -> bool:
        """A table that opens; a run killed while creating one leaves a directory that lists but does not open."""
        return self.opened(name) is not None

    def opened(self, name: str):
        """The table, or None when there is none that opens (absent, or a directory a killed run left)."""
        if name not in self._db.list_tables().tables:
            return None
        try:
            return self._db.open_table(name)
        except ValueError:
            return None

    def read(self, name: str, where: str | None = None, columns: list[str] | None = None) -> pa.Table:
        """Rows of one of the store's tables: those `where` selects (SQL), or all; the given columns, or all."""
        query = self._db.open_table(name).search()
        if where is not None:
            query = query.where(where)
        if columns is not None:
            query = query.select(columns)
        return query.limit(None).to_arrow()

    def read_present(self, name: str, where: str, columns: list[str]) -> list[dict]:
        """Rows of a table that may be absent, or older than some of `columns`: none, or the columns it has."""
        table = self.opened(name)
        if table is None:
            return []
        present = [c for c in columns if c in table.schema.names]
        return table.search().where(where).select(present).limit(None).to_list()

    def open(self, name: str):
        """An existing table, for the store's own modules (maintenance, search, the runs log)."""
        return self._db.open_table(name)

    def open_chunks(self):
        """The chunks table, for search."""
        return self._db.open_table(self.names.chunks)

    def append(self, name: str, rows: pa.Table) -> None:
        """Rows added to a table, which the first rows create."""
        if self.exists(name):
            self._db.open_table(name).add(rows)
        else:
            self._db.create_table(name, rows)

    @property
    def chunks_uri(self) -> str:
        """The chunks table's Lance dataset, where write tasks put their fragments."""
        root = self.uri.removeprefix("file://").rstrip("/")
        if "://" not in root:
            root = os.path.abspath(root)
        return f"{root}/{self.names.chunks}.lance"

    def chunks_dataset(self):
        """The chunks table's latest version as a Lance dataset, or None while the table does not exist."""
        if not self._chunks_seen:
            if not self.exists(self.names.chunks):
                return None
            self._chunks_seen = True  # once a table, always one: no more listing per commit
        import lance  # pylance: the transaction API the writer commits with

        return lance.dataset(self.chunks_uri, storage_options=self.storage_options)

    def check_chunks_table(self, model: str, dim: int | None = None, schema: pa.Schema | None = None) -> int | None:
        """Refuse a chunks table made for another model or vector dimension (dim None: model only); the table's
        vector dimension, None while there is no table."""
        if schema is None:
            if not self.exists(self.names.chunks):
                return None
            schema = self._db.open_table(self.names.chunks).schema
        changes = s.foreign_changes(schema)
        if changes:
            msg = (
                f"table {self.names.chunks!r} in {self.uri} is not one this pipeline wrote: {'; '.join(changes)}. "
                f"Another writer replaced it (LangChain's LanceDB store overwrites a table of the same name unless "
                f"told mode='append'); this run appends nothing to it. Restore the table's last version written by "
                f"embedpipe (LanceDB: table.list_versions(), then table.restore(version)), or use another "
                f"store.table_prefix or store.uri"
            )
            raise ForeignTable(msg)
        field = schema.field(s.VECTOR)
        existing = s.table_meta(schema)
        if existing.get("model") != model or (dim is not None and field.type.list_size != dim):
            shown = f" (dimension {dim})" if dim is not None else ""
            msg = (
                f"table {self.names.chunks!r} holds vectors of model {existing.get('model')!r} ({field.type}); this "
                f"run embeds with {model!r}{shown}; use another store.table_prefix or store.uri"
            )
            raise StoreError(msg)
        return field.type.list_size

    def add_reader_columns(self) -> bool:
        """Give a chunks table written before the frameworks' columns existed its `id` and `metadata` columns, from
        its own columns (new column files; vectors and text are not rewritten). True when it did."""
        if not self.exists(self.names.chunks):
            return False
        table = self._db.open_table(self.names.chunks)
        if any(name in table.schema.names for name in s.READER_COLUMNS) or s.foreign_changes(table.schema):
            return False
        table.add_columns(s.reader_column_sql())
        return True

    def stored_keys(self) -> StoredKeys | None:
        """The chunks table as the run found it, for the plan's lookups; None when there is no table yet."""
        dataset = self.chunks_dataset()
        if dataset is None:
            return None
        return StoredKeys(self.chunks_uri, dataset.version, self.storage_options)

    def chunk_writer(self, run_id: str, model_id: str, chunking: str, metadata: dict) -> ChunkWriter:
        """Rows go in as the table stores its vectors: float32 in a new table (store.vector_dtype applies once the
        recall gate has the table's own vectors to check, at the run's end)."""
        dtype = "float32"
        if self.exists(self.names.chunks):
            dtype = s.vector_dtype(self._db.open_table(self.names.chunks).schema.field(s.VECTOR).type) or dtype
        return ChunkWriter(self.chunks_uri, run_id, model_id, chunking, metadata, self.storage_options, dtype)
