"""Column names and Arrow schemas: the only place either is spelled out. No ray or vllm imports."""

from __future__ import annotations

import json
from enum import Enum

import pyarrow as pa

# documents, as parsed from shards
DOC_ID = "doc_id"
SOURCE = "source"
LINE = "line"
TEXT = "text"
DOC_HASH = "doc_hash"
REJECT_REASON = "reject_reason"
REJECT_DETAIL = "reject_detail"
SHARD_STATS = "shard_stats"
PLAN_KEY = "plan_key"
FATE = "fate"
IN_STORE = "in_store"


class StrEnum(str, Enum):
    """enum.StrEnum, which Python 3.10 lacks: members are their values as strings, in Arrow, JSON and f-strings."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Fate(StrEnum):
    """What the run does with an input document, decided before anything is embedded (rejects carry a
    RejectReason instead); REMOVED marks a stored document that no input holds. Each is counted in the `runs`
    column RUN_COLUMN names."""

    NEW = "new"
    CHANGED = "changed"
    """Some chunks stored, but not exactly this text's with this chunking: replaced."""
    UNCHANGED = "unchanged"
    REMOVED = "removed"

    @property
    def run_column(self) -> str:
        return {"new": "added", "changed": "replaced", "unchanged": "skipped", "removed": "removed"}[self.value]


FATES_TO_CHUNK = (Fate.NEW, Fate.CHANGED)


class RejectReason(StrEnum):
    """Why a document (or a whole shard, with no doc_id) is in the `rejects` table instead of the store."""

    INVALID_JSON = "invalid_json"
    NOT_UTF8 = "not_utf8"
    EMPTY_TEXT = "empty_text"
    MISSING_ID = "missing_id"
    BAD_ID = "bad_id"
    MISSING_TEXT = "missing_text"
    BAD_TEXT = "bad_text"
    MISSING_COLUMN = "missing_column"
    UNREADABLE_PARQUET = "unreadable_parquet"
    UNREADABLE = "unreadable"
    BINARY = "binary"
    NO_TOKENS = "no_tokens"
    DUPLICATE_ID = "duplicate_id"
    ENGINE_REJECTED = "engine_rejected"


# chunks
CHUNK_ID = "chunk_id"
CHUNK_INDEX = "chunk_index"
DOC_CHUNKS = "doc_chunks"
CHAR_START = "char_start"
CHAR_END = "char_end"
N_TOKENS = "n_tokens"
TOKEN_IDS = "token_ids"
VECTOR = "vector"
BATCH_STATS = "batch_stats"
MODEL = "model"
RUN_ID = "run_id"
INGESTED_AT = "ingested_at"
CHUNKING = "chunking"

KEY_COLUMNS = [DOC_ID, DOC_HASH, DOC_CHUNKS, CHUNKING, CHUNK_INDEX]
"""What the run reads of the stored chunks to decide fates: keys only, never text or vectors."""

TIMESTAMP = pa.timestamp("us", tz="UTC")

DOC_SCHEMA = pa.schema(
    [
        pa.field(DOC_ID, pa.string()),
        pa.field(SOURCE, pa.string(), nullable=False),
        pa.field(LINE, pa.int64()),
        pa.field(TEXT, pa.large_string()),
        pa.field(DOC_HASH, pa.string()),
        pa.field(REJECT_REASON, pa.string()),
        pa.field(REJECT_DETAIL, pa.string()),
    ]
)

# Rows leaving the read stage; IN_STORE rows are stored documents' ids, read to find what the inputs lost.
READ_SCHEMA = pa.schema(
    [
        *DOC_SCHEMA,
        pa.field(PLAN_KEY, pa.string()),
        pa.field(SHARD_STATS, pa.string()),
        pa.field(IN_STORE, pa.bool_()),
        pa.field(FATE, pa.string()),
    ]
)

# Rows between the chunk stage and the writer, one of three kinds: a chunk (CHUNK_ID set, FATE new or changed),
# a rejected document (REJECT_REASON set) or a marker for a document the run leaves alone (FATE unchanged) or
# removes (FATE removed).
# TOKEN_IDS include the model's special tokens: they are exactly what the engine receives.
_CHUNK_FIELDS = [
    pa.field(CHUNK_ID, pa.string()),
    pa.field(DOC_ID, pa.string()),
    pa.field(SOURCE, pa.string()),
    pa.field(LINE, pa.int64()),
    pa.field(CHUNK_INDEX, pa.int32()),
    pa.field(DOC_CHUNKS, pa.int32()),
    pa.field(TEXT, pa.large_string()),
    pa.field(CHAR_START, pa.int64()),
    pa.field(CHAR_END, pa.int64()),
    pa.field(N_TOKENS, pa.int32()),
    pa.field(DOC_HASH, pa.string()),
    pa.field(REJECT_REASON, pa.string()),
    pa.field(REJECT_DETAIL, pa.string()),
    pa.field(FATE, pa.string()),
    pa.field(SHARD_STATS, pa.string()),
]
CHUNK_SCHEMA = pa.schema([*_CHUNK_FIELDS, pa.field(TOKEN_IDS, pa.list_(pa.int32()))])


def embedded_schema(dim: int) -> pa.Schema:
    """Rows leaving the embed stage: chunk fields, the vector, and one batch's stats on its first row."""
    return pa.schema([*_CHUNK_FIELDS, pa.field(VECTOR, vector_type(dim)), pa.field(BATCH_STATS, pa.string())])


VECTOR_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}
"""What the chunks table may store vectors as (store.vector_dtype); engines return float32, the writer casts."""


def vector_type(dim: int, dtype: str = "float32") -> pa.DataType:
    return pa.list_(VECTOR_DTYPES[dtype], dim)


def vector_dtype(field_type: pa.DataType) -> str | None:
    """The store.vector_dtype a stored vector column is of, None for a type this pipeline does not write."""
    if not pa.types.is_fixed_size_list(field_type):
        return None
    return next((name for name, t in VECTOR_DTYPES.items() if field_type.value_type == t), None)


STORED_CHUNK_COLUMNS = [
    CHUNK_ID,
    DOC_ID,
    SOURCE,
    CHUNK_INDEX,
    DOC_CHUNKS,
    TEXT,
    CHAR_START,
    CHAR_END,
    N_TOKENS,
    DOC_HASH,
    VECTOR,
]

SCALAR_INDEXABLE = [c for c in STORED_CHUNK_COLUMNS if c not in (TEXT, VECTOR)] + [MODEL, RUN_ID]

# What the frameworks' LanceDB stores read as is: LlamaIndex's an `id` column and both a `metadata` column (its
# filters query `metadata.<key>`), LangChain's the `metadata` column. Copies of columns above, kept by the writer.
ID = "id"
METADATA = "metadata"
METADATA_FIELDS = [DOC_ID, SOURCE, CHUNK_INDEX, DOC_CHUNKS, CHAR_START, CHAR_END, N_TOKENS]
READER_COLUMNS = [ID, METADATA]


def chunks_table_schema(dim: int, metadata: dict[str, object] | None = None, dtype: str = "float32") -> pa.Schema:
    """The `chunks` table; metadata records the model and limits the vectors were made with."""
    chunk_fields = {f.name: f for f in _CHUNK_FIELDS}
    stored = [
        pa.field(VECTOR, vector_type(dim, dtype)) if name == VECTOR else chunk_fields[name]
        for name in STORED_CHUNK_COLUMNS
    ]
    stored = [f.with_nullable(False) if f.name in (CHUNK_ID, DOC_ID) else f for f in stored]
    fields = [
        *stored,
        pa.field(MODEL, pa.string()),
        pa.field(CHUNKING, pa.string()),
        pa.field(RUN_ID, pa.string()),
        pa.field(INGESTED_AT, TIMESTAMP),
        pa.field(ID, pa.string()),
        pa.field(METADATA, metadata_type()),
    ]
    meta = {META_KEY: json.dumps(metadata, sort_keys=True)} if metadata else None
    return pa.schema(fields, metadata=meta)


def metadata_type() -> pa.StructType:
    chunk_fields = {f.name: f for f in _CHUNK_FIELDS}
    return pa.struct([chunk_fields[name] for name in METADATA_FIELDS])


def reader_columns(table: pa.Table) -> list[pa.Array]:
    """The `id` and `metadata` columns of stored chunk rows, from the columns they copy."""
    fields = metadata_type()
    parts = [table.column(f.name).combine_chunks().cast(f.type) for f in fields]
    return [table.column(CHUNK_ID).combine_chunks(), pa.StructArray.from_arrays(parts, fields=list(fields))]


def reader_column_sql() -> dict[str, str]:
    """The same two columns as SQL over a table's own columns: how a table written before they existed gets them."""
    members = ", ".join(f"'{name}', {name}" for name in METADATA_FIELDS)
    return {ID: CHUNK_ID, METADATA: f"named_struct({members})"}


META_KEY = "embedpipe"
"""The key of the chunks table's schema metadata under which a run records how its vectors were made (JSON)."""


def table_meta(schema: pa.Schema) -> dict:
    """What the chunks table's schema metadata records of how its vectors were made ({} when it records nothing)."""
    return json.loads((schema.metadata or {}).get(META_KEY.encode(), b"{}"))


def foreign_changes(schema: pa.Schema) -> list[str]:
    """How a chunks table differs from the tables this pipeline writes: no metadata of ours, columns missing or of
    another type, columns our rows cannot fill. Empty for a table of ours. (Another writer replaced it: LangChain's
    LanceDB store, for one, overwrites a table of the same name by default.)"""
    changes = []
    if META_KEY.encode() not in (schema.metadata or {}):
        changes.append("its schema has no embedpipe metadata (the model and settings its vectors were made with)")
    vector = schema.field(VECTOR).type if VECTOR in schema.names else None
    dim = vector.list_size if vector is not None and pa.types.is_fixed_size_list(vector) else None
    ours = chunks_table_schema(dim or 1)
    ours_before = META_KEY.encode() in (schema.metadata or {}) and all(c not in schema.names for c in READER_COLUMNS)
    missing = [f.name for f in ours if f.name not in schema.names and not (ours_before and f.name in READER_COLUMNS)]
    if missing:
        changes.append(f"columns {missing} are missing")
    changed = [
        f"{f.name} is {schema.field(f.name).type}, not {f.type}"
        for f in ours
        if f.name in schema.names and f.name != VECTOR and schema.field(f.name).type != f.type
    ]
    if vector is not None and (dim is None or vector_dtype(vector) is None):
        changed.insert(0, f"{VECTOR} is {vector}, not a fixed-size list of {' or '.join(VECTOR_DTYPES)}")
    if changed:
        changes.append("; ".join(changed))
    unfillable = [f.name for f in schema if f.name not in ours.names and not f.nullable]
    if unfillable:
        changes.append(f"columns {unfillable} are not ours and may not be null")
    return changes


REJECTS_SCHEMA = pa.schema(
    [
        pa.field(RUN_ID, pa.string()),
        pa.field(DOC_ID, pa.string()),
        pa.field(SOURCE, pa.string()),
        pa.field(LINE, pa.int64()),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("rejected_at", TIMESTAMP),
    ]
)

BATCHES_SCHEMA = pa.schema(
    [
        pa.field(RUN_ID, pa.string()),
        pa.field("actor", pa.string()),
        pa.field("batch_index", pa.int64()),
        pa.field("n_chunks", pa.int64()),
        pa.field(N_TOKENS, pa.int64()),
        pa.field("max_chunk_tokens", pa.int64()),
        pa.field("embed_s", pa.float64()),
        pa.field("wait_s", pa.float64()),
        pa.field("tokens_per_s", pa.float64()),
        pa.field("started_at", TIMESTAMP),
        pa.field("engine_tokens", pa.int64()),
    ]
)

RUNS_SCHEMA = pa.schema(
    [
        pa.field(RUN_ID, pa.string()),
        pa.field("started_at", TIMESTAMP),
        pa.field("finished_at", TIMESTAMP),
        pa.field("wall_s", pa.float64()),
        pa.field("status", pa.string()),
        pa.field("docs_in", pa.int64()),
        pa.field("docs", pa.int64()),
        pa.field("added", pa.int64()),
        pa.field("replaced", pa.int64()),
        pa.field("skipped", pa.int64()),
        pa.field("removed", pa.int64()),
        pa.field("chunks_discarded", pa.int64()),
        pa.field("tokens_discarded", pa.int64()),
        pa.field("chunks", pa.int64()),
        pa.field("tokens", pa.int64()),
        pa.field("rejected", pa.int64()),
        pa.field("tokens_per_s", pa.float64()),
        pa.field("engine_tokens", pa.int64()),
        pa.field("startup_s", pa.float64()),
        pa.field("embed_s", pa.float64()),
        pa.field("read_s", pa.float64()),
        pa.field("parse_s", pa.float64()),
        pa.field("chunk_s", pa.float64()),
        pa.field("wait_s", pa.float64()),
        pa.field("write_s", pa.float64()),
        pa.field("model", pa.string()),
        pa.field("max_model_len", pa.int64()),
        pa.field("max_num_batched_tokens", pa.int64()),
        pa.field("chunk_tokens", pa.int64()),
        pa.field("settings", pa.string()),
        pa.field("plan", pa.string()),
        pa.field("engine", pa.string()),
        pa.field("vllm_version", pa.string()),
        pa.field("ray_version", pa.string()),
        pa.field("torch_version", pa.string()),
        pa.field("lancedb_version", pa.string()),
        pa.field("error", pa.string()),
        pa.field("kind", pa.string()),
        pa.field("maintenance", pa.string()),
        pa.field("maintenance_s", pa.float64()),
        pa.field("groups", pa.int64()),
        pa.field("record_bytes", pa.int64()),
        pa.field("write_nodes", pa.string()),
        pa.field("driver_peak_mb", pa.float64()),
        pa.field("commit_s", pa.float64()),
        pa.field("engines_lost", pa.int64()),
        pa.field("engine_restarts", pa.int64()),
        pa.field("engines_hung", pa.int64()),
        pa.field("lost_nodes", pa.string()),
        pa.field("engine_failures", pa.string()),
        pa.field("engine_s", pa.float64()),
        pa.field("engine_busy", pa.float64()),
        pa.field("tokens_per_engine_s", pa.float64()),
        pa.field("device_hours", pa.float64()),
        pa.field("mfu", pa.float64()),
        pa.field("cost", pa.float64()),
        pa.field("cost_per_million_tokens", pa.float64()),
        pa.field("estimate_s", pa.float64()),
        pa.field("estimate_source", pa.string()),
    ]
)
RUN_KIND_INGEST = "ingest"
RUN_KIND_INDEX = "index"


class RunStatus(StrEnum):
    """A `runs` row's status: running from its start; then how it ended."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    """Stopped by SIGTERM or Ctrl-C, or found still running by the next run (its driver died)."""
