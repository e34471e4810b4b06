"""The pipeline's stages run one after another in this process, without Ray: the same read, plan, chunk,
embed, write and commit steps that ray_stages wires into a Dataset. For tests of the logic around them and
for tools (the benchmark's fixed chunks); the job itself runs on Ray."""

from __future__ import annotations

import pyarrow as pa

from pipeline import schema as s
from pipeline.records import GroupRecord
from pipeline.settings import InputSettings
from pipeline.stages.chunk_step import ChunkStep
from pipeline.stages.chunking import Chunker
from pipeline.stages.embed import Embedder, EmbedStep
from pipeline.stages.fates import decide_all, stored_id_rows, with_fates
from pipeline.stages.pieces import PieceReader, split_shard
from pipeline.stages.sources import list_shards
from pipeline.store.lance_store import LanceStore
from pipeline.store.run_commit import RunCommitter, RunOutcome
from pipeline.store.stored_keys import StoredKeys


def planned_documents(
    cfg: InputSettings, chunking: str, keys: StoredKeys | None = None, delete_missing: bool = False
) -> pa.Table:
    """Every input document with its fate, every reject, and (delete_missing) a marker per removed document."""
    fs, shards = list_shards(cfg)
    reader = PieceReader(fs, cfg)
    parts = [t for sh in shards for piece in split_shard(sh, fs, cfg.piece_bytes) for t in reader(piece)]
    if keys is not None and delete_missing:
        parts += [stored_id_rows(keys.doc_ids(f)) for f in keys.fragment_ids()]
    planned = decide_all(pa.concat_tables(parts) if parts else s.READ_SCHEMA.empty_table())
    return with_fates(planned, keys.lookup if keys is not None else None, chunking)


def ingest_in_process(
    store: LanceStore,
    run_id: str,
    cfg: InputSettings,
    chunker: Chunker,
    embedder: Embedder,
    metadata: dict,
    *,
    commit_rows: int,
    embed_rows: int = 64,
    delete_missing: bool = False,
) -> tuple[RunOutcome, EmbedStep]:
    store.ensure_side_tables()
    store.check_chunks_table(metadata["model"])
    chunking = chunker.plan.fingerprint
    planned = planned_documents(cfg, chunking, store.stored_keys(), delete_missing)
    chunks = ChunkStep(chunker)(planned)
    embed = EmbedStep(embedder, actor="local")
    writer = store.chunk_writer(run_id, metadata["model"], chunking, metadata)
    committer = RunCommitter(store, run_id, metadata)
    embedded = [embed(chunks.slice(i, embed_rows)) for i in range(0, len(chunks), embed_rows)]
    if embedded:
        rows = pa.concat_tables(embedded)
        for i in range(0, len(rows), commit_rows):
            committer.add(GroupRecord.from_json(writer.write(rows.slice(i, commit_rows), node="local").to_json()))
    return committer.finish(delete_missing), embed
