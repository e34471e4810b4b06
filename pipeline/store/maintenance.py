"""Indexes and upkeep of the LanceDB tables: builds what pipeline.plan.index decides, compacts, folds new rows
into the indexes and removes old versions. Runs only under the store's lock. No ray or vllm imports."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from datetime import timedelta

import pyarrow as pa
import structlog
from lancedb.index import FTS, BTree, IvfHnswSq, IvfPq

from pipeline import schema as s
from pipeline.plan.index import ExistingAnn, IndexAction, plan_ann, plan_other_indexes, unit_length, vector_metric
from pipeline.settings import IndexSettings, MaintenanceSettings, StoreSettings
from pipeline.store.lance_store import LanceStore
from pipeline.store.precision import SCAN_ROWS, GateResult, Probe, ann_recall, gate
from pipeline.store.runs import RunLog

log = structlog.get_logger(__name__)
NORM_SAMPLE = 1000


@dataclass
class MaintenanceReport:
    indexes: list[dict] = field(default_factory=list)
    tables: dict[str, dict] = field(default_factory=dict)
    """Per table: [before, after] of fragments, versions, bytes and rows not yet in the indexes."""
    metric: str | None = None
    normalized: bool | None = None
    skipped: str | None = None
    precision: GateResult | None = None
    """The recall gate's verdict when store.vector_dtype asked for fewer bytes than the table stores."""
    seconds: float = 0.0

    @property
    def refused(self) -> str | None:
        """Why the run must exit 2 though its rows are committed: the store refused store.vector_dtype."""
        if self.precision is None or self.precision.passed:
            return None
        p = self.precision
        return (
            f"store.vector_dtype = {p.dtype!r} refused: recall@{p.k} {p.recall_at_k:.4f} < store.min_recall "
            f"{p.min_recall} ({p.queries} of the store's own chunks as queries over {p.rows:,} rows); the store keeps "
            f"float32 vectors and this run's rows are committed. Set store.vector_dtype = 'float32', or lower "
            f"store.min_recall if that recall is enough for its readers"
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "indexes": self.indexes,
                "tables": self.tables,
                "metric": self.metric,
                "normalized": self.normalized,
                "skipped": self.skipped,
                "precision": self.precision.to_json_dict() if self.precision else None,
            },
            sort_keys=True,
        )

    def lines(self) -> list[str]:
        out = []
        if self.skipped:
            out.append(f"maintenance skipped: {self.skipped}")
        for name, t in self.tables.items():
            out.append(
                f"maintenance of {name}: fragments {t['fragments'][0]} -> {t['fragments'][1]}, versions "
                f"{t['versions'][0]} -> {t['versions'][1]}, {t['bytes'][0]:,} -> {t['bytes'][1]:,} bytes, rows "
                f"outside the indexes {t['unindexed_rows'][0]} -> {t['unindexed_rows'][1]}"
            )
        if self.precision:
            out.append(self.precision.line())
        if self.metric:
            shape = {True: "unit length", False: "not unit length", None: "none stored"}[self.normalized]
            out.append(f"vectors {shape}: distance {self.metric}")
        for a in self.indexes:
            took = f" in {a['seconds']:.3f} s" if a.get("seconds") is not None else ""
            out.append(f"index {a['kind']} on {a['column']}: {a['action']}{took} ({a['reason']})")
        return out


def vector_facts(table, similarity: str | None) -> tuple[str, bool | None]:
    """(metric, normalized): normalization measured on stored vectors, and the similarity the model states."""
    normalized = unit_length(table.search().select([s.VECTOR]).limit(NORM_SAMPLE).to_arrow().column(s.VECTOR))
    return vector_metric(bool(normalized), similarity), normalized


def indexes_by_column(table) -> dict[str, object]:
    return {ix.columns[0]: ix for ix in table.list_indices()}


def search_metric(table, similarity: str | None) -> str:
    """The distance queries must use: the vector index's, else the one the table's metadata records, else (a table
    of an older version) the one an index would be built with."""
    index = indexes_by_column(table).get(s.VECTOR)
    if index is not None:
        return table.index_stats(index.name).distance_type
    return s.table_meta(table.schema).get("metric") or vector_facts(table, similarity)[0]


def maintain_store(
    store: LanceStore,
    index: IndexSettings,
    maintenance: MaintenanceSettings,
    similarity: str | None,
    exclusive: bool,
    force_ann: bool = False,
    vectors: StoreSettings | None = None,
) -> MaintenanceReport:
    """Fold new rows in and tidy every table (only when `exclusive`: no other writer can run), then create the
    indexes the chunks table lacks and retrain a stale ANN index."""
    started = time.perf_counter()
    report = MaintenanceReport()
    probe = None
    if not store.exists(store.names.chunks):
        report.skipped = "no chunks table yet"
        return report
    chunks = store.open(store.names.chunks)
    report.metric, report.normalized = vector_facts(chunks, similarity)
    if not maintenance.enabled:
        report.skipped = "maintenance.enabled is false: new rows stay outside the indexes (searched exactly)"
    elif not exclusive:
        report.skipped = f"store {store.uri} has no lock, so another writer may be running"
    else:
        before = {name: _table_state(store, name) for name in _tables(store)}
        if vectors is not None:
            report.precision, probe = reduce_vectors(store, vectors, report.metric)
        for name in before:
            store.open(name).optimize(
                cleanup_older_than=timedelta(hours=maintenance.keep_versions_h),
                delete_unverified=maintenance.delete_unverified,
            )
        chunks = store.open(store.names.chunks)
        report.tables = {name: _before_after(state, _table_state(store, name)) for name, state in before.items()}
    rows = chunks.count_rows()
    dim = chunks.schema.field(s.VECTOR).type.list_size
    existing = indexes_by_column(chunks)
    ann = _existing_ann(chunks, existing.get(s.VECTOR), RunLog(store).last_ann_training())
    actions = [plan_ann(rows, dim, report.metric, index, ann, force_ann), *plan_other_indexes(rows, existing, index)]
    for action in actions:
        seconds = _apply(chunks, action) if action.action in ("create", "retrain") else None
        report.indexes.append({**action.to_json_dict(), "seconds": seconds})
        log.debug("index", column=action.column, kind=action.kind, action=action.action, reason=action.reason)
    if report.precision is not None and report.precision.passed and s.VECTOR in indexes_by_column(chunks):
        measured = ann_recall(chunks, probe, report.metric, index.nprobes, index.refine_factor)
        report.precision = replace(report.precision, ann_recall=measured)
    report.seconds = time.perf_counter() - started
    return report


def reduce_vectors(store: LanceStore, want: StoreSettings, metric: str) -> tuple[GateResult | None, Probe | None]:
    """Store the chunks table's vectors as store.vector_dtype when they are float32 and the recall gate passes on
    them: the table is written again (rewrite_vectors; its indexes are rebuilt by the index step) and its metadata
    records the dtype and the gate's figures. The gate's result and probe; (None, None) when there is nothing to
    reduce."""
    table = store.open(store.names.chunks)
    field = table.schema.field(s.VECTOR)
    have = s.vector_dtype(field.type)
    if want.vector_dtype == have:
        return None, None
    if have != "float32":
        log.warning(
            "vector_dtype_kept",
            stored=have,
            wanted=want.vector_dtype,
            reason="stored vectors are never widened: the precision they lost cannot come back; re-embed into a new "
            "store.uri or store.table_prefix",
        )
        return None, None
    result, probe = gate(store.chunks_dataset(), want.vector_dtype, metric, want.min_recall, want.gate_queries)
    log.info("precision_gate", **result.to_json_dict())
    if not result.passed:
        return result, probe
    rewrite_vectors(
        store, want.vector_dtype, {"vector_dtype": want.vector_dtype, "precision_gate": result.to_json_dict()}
    )
    return result, probe


def rewrite_vectors(store: LanceStore, dtype: str, made: dict) -> None:
    """The chunks table written again, streamed, with its vectors as `dtype` and `made` added to its metadata: a
    new version that readers see whole, or not at all (a column cast in place would leave the old vectors' bytes in
    every data file). Its indexes go with the old version; the index step builds them again."""
    import lance

    dataset = store.chunks_dataset()
    old = dataset.schema
    meta = {**(old.metadata or {}), s.META_KEY.encode(): json.dumps({**s.table_meta(old), **made}, sort_keys=True)}
    vector = old.field(s.VECTOR)
    schema = old.set(old.get_field_index(s.VECTOR), vector.with_type(s.vector_type(vector.type.list_size, dtype)))
    schema = schema.with_metadata(meta)
    batches = (batch.cast(schema) for batch in dataset.to_batches(batch_size=SCAN_ROWS))
    lance.write_dataset(
        pa.RecordBatchReader.from_batches(schema, batches),
        store.chunks_uri,
        schema=schema,
        mode="overwrite",
        data_storage_version=dataset.data_storage_version,
        storage_options=store.storage_options or None,
    )


def _apply(table, action: IndexAction) -> float:
    started = time.perf_counter()
    if action.kind == "ann":
        p = action.params
        if p["index_type"] == "IVF_PQ":
            config = IvfPq(
                distance_type=p["metric"], num_partitions=p["num_partitions"], num_sub_vectors=p["num_sub_vectors"]
            )
        else:
            config = IvfHnswSq(distance_type=p["metric"], num_partitions=p["num_partitions"])
        table.create_index(s.VECTOR, config=config, replace=True)
    elif action.kind == "fts":
        table.create_index(action.column, config=FTS(), replace=True)
    else:
        table.create_index(action.column, config=BTree(), replace=True)
    return round(time.perf_counter() - started, 3)


def _existing_ann(table, index, trained_rows: int | None) -> ExistingAnn | None:
    if index is None:
        return None
    stats = table.index_stats(index.name)
    return ExistingAnn(stats.index_type, stats.distance_type, trained_rows)


def _tables(store: LanceStore) -> list[str]:
    n = store.names
    return [name for name in (n.chunks, n.batches, n.runs, n.rejects) if store.exists(name)]


def _table_state(store: LanceStore, name: str) -> dict:
    table = store.open(name)
    stats = table.stats()
    unindexed = 0
    for ix in table.list_indices():
        unindexed = max(unindexed, table.index_stats(ix.name).num_unindexed_rows)
    return {
        "fragments": stats["fragment_stats"]["num_fragments"],
        "versions": len(table.list_versions()),
        "bytes": stats["total_bytes"],
        "unindexed_rows": unindexed,
    }


def _before_after(before: dict, after: dict) -> dict:
    return {key: [before[key], after[key]] for key in before}
