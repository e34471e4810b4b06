"""Parse shard pieces into documents, one reject row per document that cannot be read. Pure: no ray or vllm.

Every line of a jsonl shard, row of a parquet shard or text file becomes either a document or a reject
with a reason; nothing is dropped without a trace. Shards are read as streams: a jsonl piece line by line
(plain or compressed), a parquet piece row group by row group, so no worker holds a whole large shard.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import schema as s
from pipeline.settings import InputSettings

COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2"}
"""Compressed jsonl extensions and the pyarrow codec that streams them."""
JSONL_EXTENSIONS = tuple(e + c for e in (".jsonl", ".ndjson") for c in ("", *COMPRESSIONS))
PARQUET_EXTENSIONS = (".parquet",)
READ_BLOCK_BYTES = 4 << 20


@dataclass(frozen=True)
class Shard:
    path: str
    """Path on the shard's filesystem, as Ray reports it."""
    source: str
    """What the user named: a local path or a URI; stored with every chunk."""
    format: str
    text_doc_id: str
    """Document id when the shard is a single text document: its path relative to the input root."""

    @property
    def compression(self) -> str | None:
        """pyarrow codec of a compressed jsonl shard, None for plain files."""
        for ext, codec in COMPRESSIONS.items():
            if self.path.lower().endswith(ext):
                return codec
        return None


def shard_format(path: str, cfg: InputSettings) -> str | None:
    if cfg.format != "auto":
        return cfg.format
    lower = path.lower()
    if lower.endswith(JSONL_EXTENSIONS):
        return "jsonl"
    if lower.endswith(PARQUET_EXTENSIONS):
        return "parquet"
    if lower.endswith(tuple(ext.lower() for ext in cfg.text_extensions)):
        return "text"
    return None


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _document(shard: Shard, doc_id: object, text: object, line: int | None, cfg: InputSettings) -> dict:
    row = {s.DOC_ID: None if doc_id is None else str(doc_id), s.SOURCE: shard.source, s.LINE: line}
    if doc_id is None or (isinstance(doc_id, str) and not doc_id.strip()):
        return _reject(row, s.RejectReason.MISSING_ID, f"no {cfg.id_field!r} value (set input.id_field to the id key)")
    if isinstance(doc_id, (dict, list)):
        return _reject(
            row, s.RejectReason.BAD_ID, f"{cfg.id_field!r} is a {type(doc_id).__name__}, not a string or number"
        )
    if text is None:
        return _reject(
            row, s.RejectReason.MISSING_TEXT, f"no {cfg.text_field!r} value (set input.text_field to the text key)"
        )
    if not isinstance(text, str):
        return _reject(row, s.RejectReason.BAD_TEXT, f"{cfg.text_field!r} is a {type(text).__name__}, not a string")
    if not text.strip():
        return _reject(row, s.RejectReason.EMPTY_TEXT, "the text is empty or only whitespace")
    return {**row, s.TEXT: text, s.DOC_HASH: text_hash(text)}


def _reject(row: dict, reason: str, detail: str) -> dict:
    return {**row, s.REJECT_REASON: reason, s.REJECT_DETAIL: detail}


def shard_reject(shard: Shard, reason: str, detail: str) -> dict:
    """A reject for a whole shard or the rest of one: no document id, so it also blocks run.delete_missing."""
    return _reject({s.DOC_ID: None, s.SOURCE: shard.source, s.LINE: None}, reason, detail)


def split_lines(blocks: Iterable[bytes], first_line: int) -> Iterator[tuple[int, bytes]]:
    """(line number, line) for the lines of a byte stream given as blocks; a last line without a newline counts."""
    number, rest = first_line, b""
    for block in blocks:
        if not block:
            continue
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        for raw in lines:
            yield number, raw
            number += 1
    if rest:
        yield number, rest


def parse_jsonl_lines(shard: Shard, lines: Iterable[tuple[int, bytes]], cfg: InputSettings) -> Iterator[dict]:
    for number, raw in lines:
        if not raw.strip():
            continue
        row = {s.DOC_ID: None, s.SOURCE: shard.source, s.LINE: number}
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            yield _reject(row, s.RejectReason.NOT_UTF8, f"line is not valid UTF-8: {exc}")
            continue
        except ValueError as exc:
            yield _reject(row, s.RejectReason.INVALID_JSON, f"line is not valid JSON: {exc}")
            continue
        if not isinstance(record, dict):
            yield _reject(
                row, s.RejectReason.INVALID_JSON, f"line holds a JSON {type(record).__name__}, not an object"
            )
            continue
        yield _document(shard, record.get(cfg.id_field), record.get(cfg.text_field), number, cfg)


def parse_parquet(
    shard: Shard, source: object, cfg: InputSettings, row_groups: range | None = None, first_row: int = 0
) -> Iterator[dict]:
    """Rows of a parquet file (a path-like, a file object); row_groups limits it to one piece of the file."""
    try:
        pf = pq.ParquetFile(source)
    except (pa.ArrowException, OSError) as exc:
        yield shard_reject(shard, s.RejectReason.UNREADABLE_PARQUET, f"cannot read the parquet file: {exc}")
        return
    missing = [c for c in (cfg.id_field, cfg.text_field) if c not in pf.schema_arrow.names]
    if missing:
        if not row_groups or row_groups.start == 0:  # one reject per file, not one per piece
            detail = f"no column {missing} (has {pf.schema_arrow.names}); set input.id_field / input.text_field"
            yield shard_reject(shard, s.RejectReason.MISSING_COLUMN, detail)
        return
    number = first_row
    groups = list(row_groups) if row_groups is not None else None
    try:
        for batch in pf.iter_batches(columns=[cfg.id_field, cfg.text_field], batch_size=4096, row_groups=groups):
            for doc_id, text in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True):
                yield _document(shard, doc_id, text, number, cfg)
                number += 1
    except (pa.ArrowException, OSError) as exc:
        yield shard_reject(
            shard, s.RejectReason.UNREADABLE_PARQUET, f"parquet file is corrupt after row {number}: {exc}"
        )


def parse_text(shard: Shard, data: bytes, cfg: InputSettings) -> Iterator[dict]:
    row = {s.DOC_ID: shard.text_doc_id, s.SOURCE: shard.source, s.LINE: None}
    if b"\x00" in data:
        yield _reject(row, s.RejectReason.BINARY, "the file holds NUL bytes: it is binary, not text")
        return
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        yield _reject(row, s.RejectReason.NOT_UTF8, f"the file is not valid UTF-8: {exc}")
        return
    yield _document(shard, shard.text_doc_id, text, None, cfg)
