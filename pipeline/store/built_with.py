"""What the vectors in a store's chunks table were made with: read from the table's metadata and the last
successful ingestion run, for the jobs that must embed as it did (query, index, the retrieval check). No ray or
vllm imports."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline import schema as s
from pipeline.errors import NoIngestionRun, StoreError
from pipeline.plan.model_dir import similarity_at
from pipeline.store.lance_store import LanceStore
from pipeline.store.runs import RunLog


@dataclass(frozen=True)
class BuiltWith:
    """What the vectors in a chunks table were made with."""

    model_id: str
    fingerprint: str | None
    dim: int
    model: dict
    """The model section of the settings of the last successful ingestion run."""
    model_dir: str
    max_model_len: int
    device: str
    run_id: str
    similarity: str | None = None
    """The similarity the model states, as the run recorded it (or its directory states, for older runs)."""


def read_built_with(store: LanceStore) -> BuiltWith:
    if not store.exists(store.names.chunks):
        msg = f"no table {store.names.chunks!r} in {store.uri}; run python -m jobs.ingest first"
        raise StoreError(msg)
    table = store.open_chunks()
    meta = s.table_meta(table.schema)
    run = RunLog(store).latest()
    if run is None or not run.settings:
        msg = f"{store.uri} has no successful ingestion run to read the model and engine settings from"
        raise NoIngestionRun(msg)
    settings = run.settings_values()
    resolved = settings["resolved"]
    if meta.get("model") and meta["model"] != run.model:
        msg = f"table {store.names.chunks!r} holds model {meta['model']!r} but its last run used {run.model!r}"
        raise StoreError(msg)
    return BuiltWith(
        model_id=run.model,
        fingerprint=meta.get("model_fingerprint") or resolved.get("model_fingerprint"),
        dim=table.schema.field(s.VECTOR).type.list_size,
        model=settings["model"],
        model_dir=resolved["model_dir"],
        max_model_len=resolved["max_model_len"],
        device=resolved["device"],
        run_id=run.run_id,
        similarity=resolved["similarity"] if "similarity" in resolved else similarity_at(resolved["model_dir"]),
    )
