"""The run's stages as Ray Data tasks and actors, thin around the pure stages, and the one function that wires them
into a dataset. The engines' actors are in engines.py, their feeders in feeder.py."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import ray
import structlog
from ray.data import ActorPoolStrategy, DataContext, Dataset, ExecutionResources

from pipeline import schema as s
from pipeline.log import configure_logging
from pipeline.plan.chunk_plan import ChunkPlan
from pipeline.plan.job import RunPlan
from pipeline.plan.placement import STAGE_CPUS, plan_partitions
from pipeline.run.progress import chunked_counts, planned_counts
from pipeline.run.ray.cluster import cluster_cpus
from pipeline.run.ray.cpu_priority import HelperPriority
from pipeline.run.ray.engines import NO_DEMOTION, Engines
from pipeline.run.ray.feeder import EngineFeeder
from pipeline.run.ray.shuffle import ask_shuffle_cpus
from pipeline.settings import InputSettings, LoggingSettings, RunSettings, Settings
from pipeline.stages.chunk_step import DOCS_PER_BATCH, ChunkStep
from pipeline.stages.chunking import Chunker
from pipeline.stages.documents import Shard
from pipeline.stages.fates import decide_all, stored_id_rows, with_fates
from pipeline.stages.pieces import Piece, PieceReader, split_shard
from pipeline.stages.sources import Inputs
from pipeline.stages.tokenizer import FastTokenizer
from pipeline.store.chunk_writer import ChunkWriter
from pipeline.store.session import StoreSession
from pipeline.store.stored_keys import LOOKUP_IDS, StoredKeys

log = structlog.get_logger(__name__)
RECORD = "record"
MAX_READ_BLOCKS = 4096
NO_PROGRESS_MARGIN_S = 300.0


class ChunkActor:
    """Chunks the planned documents with the model's tokenizer."""

    def __init__(self, logs: LoggingSettings, chunk: ChunkPlan, tokenizer: FastTokenizer, board=None):
        configure_logging(logs.level, logs.json_format)
        # Not demoted: the chunks feed the engines, and a starved chunker leaves them waiting (measured: engines
        # idle 9-40% of the steady window when chunking still ran at niceness 19 beside them).
        self.step = ChunkStep(Chunker(tokenizer, chunk))
        self.board = board

    def __call__(self, docs: pa.Table) -> pa.Table:
        chunks = self.step(docs)
        if self.board is not None:
            self.board.add.remote(chunked_counts(docs, chunks))
        return chunks


@ray.remote(num_cpus=0.25)
def _split(shards: list[Shard], fs: pafs.FileSystem, piece_bytes: int, priority: HelperPriority) -> list[Piece]:
    priority.apply()
    return [piece for shard in shards for piece in split_shard(shard, fs, piece_bytes)]


def split_pieces(
    shards: list[Shard], fs: pafs.FileSystem, piece_bytes: int, priority: HelperPriority = NO_DEMOTION
) -> list[Piece]:
    """Every shard's pieces, found by tasks (parquet footers, line ends of large jsonl files); the driver keeps
    their offsets only, as it keeps the shard list."""
    refs = [_split.remote(shards[i : i + 64], fs, piece_bytes, priority) for i in range(0, len(shards), 64)]
    return [piece for part in ray.get(refs) for piece in part]


def _read(pieces: pa.Table, reader: PieceReader, priority: HelperPriority) -> Iterator[pa.Table]:
    priority.apply()
    for row in pieces.to_pylist():
        yield from reader(Piece.from_row(row))


def _stored_ids(fragments: pa.Table, keys: StoredKeys, priority: HelperPriority) -> pa.Table:
    priority.apply()
    ids = [keys.doc_ids(f) for f in fragments.column("fragment").to_pylist()]
    return stored_id_rows(pa.concat_arrays(ids) if ids else [])


def _decide(docs: pa.Table, priority: HelperPriority) -> pa.Table:
    priority.apply()
    return decide_all(docs)


def _fates(docs: pa.Table, keys: StoredKeys | None, chunking: str, priority: HelperPriority, board=None) -> pa.Table:
    priority.apply()
    planned = with_fates(docs, keys.lookup if keys is not None else None, chunking)
    if board is not None:
        board.add.remote(planned_counts(planned))
    return planned


def _write(batch: pa.Table, writer: ChunkWriter, priority: HelperPriority) -> pa.Table:
    priority.apply()
    record = writer.write(batch, node=ray.get_runtime_context().get_node_id())
    return pa.table({RECORD: [record.to_json()]})


def read_documents(
    source: InputSettings, fs: pafs.FileSystem, pieces: list[Piece], priority: HelperPriority = NO_DEMOTION
) -> Dataset:
    """Documents (READ_SCHEMA) of the pieces (split_pieces), each piece read by its own task, as a stream."""
    rows = [p.to_row() for p in pieces]
    return ray.data.from_items(rows, override_num_blocks=min(len(rows), MAX_READ_BLOCKS)).map_batches(
        _read,
        fn_kwargs={"reader": PieceReader(fs, source), "priority": priority},
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=0.5,
    )


def chunk_documents(
    settings: Settings,
    plan: RunPlan,
    inputs: Inputs,
    tokenizer: FastTokenizer,
    keys: StoredKeys | None,
    board=None,
    priority: HelperPriority = NO_DEMOTION,
    sampled: list[Piece] | None = None,
) -> Dataset:
    """shards -> pieces -> read (tasks) -> plan (shuffle on doc id, key lookups) -> chunk (CPU actors): the
    chunk stage's rows (CHUNK_SCHEMA), of the `sampled` pieces only when given."""
    pieces = (
        sampled
        if sampled is not None
        else split_pieces(inputs.shards, inputs.fs, settings.input.piece_bytes, priority)
    )
    docs = read_documents(settings.input, inputs.fs, pieces, priority)
    # a sample cannot tell a document gone from the inputs from one left out of the sample
    removals = keys is not None and settings.run.delete_missing and sampled is None
    fragment_ids = keys.fragment_ids() if removals else []
    if fragment_ids:
        fragments = ray.data.from_items([{"fragment": f} for f in fragment_ids])
        docs = docs.union(
            fragments.map_batches(_stored_ids, fn_kwargs={"keys": keys, "priority": priority}, batch_format="pyarrow")
        )
    # Every row of a plan key lands in one partition, and a hash shuffle emits each partition as one block:
    # decide_all sees all copies of an id at once. (map_groups would call Python once per document.)
    partitions = plan_partitions(settings.run.plan_partitions, cluster_cpus(), len(pieces) + len(fragment_ids))
    planned = docs.repartition(partitions, keys=[s.PLAN_KEY]).map_batches(
        _decide, fn_kwargs={"priority": priority}, batch_size=None, batch_format="pyarrow", num_cpus=0.25
    )
    planned = planned.map_batches(
        _fates,
        fn_kwargs={"keys": keys, "chunking": plan.chunk.fingerprint, "priority": priority, "board": board},
        batch_size=LOOKUP_IDS,
        batch_format="pyarrow",
        num_cpus=0.25,
    )
    chunks = planned.map_batches(
        ChunkActor,
        fn_constructor_kwargs={"logs": settings.logging, "chunk": plan.chunk, "tokenizer": tokenizer, "board": board},
        batch_size=DOCS_PER_BATCH,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=plan.chunk_actors),
        num_cpus=0.5,
    )
    return chunks


def build_dataset(
    settings: Settings,
    plan: RunPlan,
    inputs: Inputs,
    tokenizer: FastTokenizer,
    store: StoreSession,
    engines: Engines,
    board=None,
    priority: HelperPriority = NO_DEMOTION,
) -> Dataset:
    """shards -> pieces -> read (tasks) -> plan (shuffle on doc id, key lookups) -> chunk (CPU actors) ->
    embed (one engine per actor) -> write fragments (tasks). The driver gets one small record per group."""
    _tell_ray_data(plan, settings.run, ray.cluster_resources())
    chunks = chunk_documents(settings, plan, inputs, tokenizer, store.keys, board, priority)
    # An actor takes a whole block per call: cut the chunk stage's blocks to one engine batch each, so every
    # engine gets work however few documents a run has.
    chunks = chunks.repartition(target_num_rows_per_block=settings.run.batch_rows)
    embedded = chunks.map_batches(
        EngineFeeder,
        fn_constructor_kwargs={
            "engines": engines.actors,
            "dim": store.dim,
            "supervisor": engines.supervisor,
            "run": settings.run,
        },
        batch_size=settings.run.batch_rows,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(
            size=len(engines.actors), max_concurrent_calls_per_actor=2, enable_true_multi_threading=True
        ),
        num_cpus=0,
        ray_remote_args_fn=engines.feeder_args,
    )
    return embedded.map_batches(
        _write,
        fn_kwargs={"writer": store.writer, "priority": priority},
        batch_size=settings.run.commit_rows,
        batch_format="pyarrow",
        num_cpus=0.25,
        ray_remote_args_fn=_spread,
    )


def _tell_ray_data(plan: RunPlan, run: RunSettings, cluster: dict[str, float]) -> None:
    """What Ray Data's scheduler must know of this run: the engines' bundles are not its to hand out (its limits are
    the `cluster`'s resources less what the engines hold, kept in step by the engine reserve as nodes come and go;
    it would otherwise budget the stages with CPUs the engines hold), and how long a run may go without progress
    before it ends (a start may take run.engine_start_timeout_s, a hung engine's call its bound: past both,
    something is stuck)."""
    context = DataContext.get_current()
    bundle = plan.placement.bundle
    held = {"CPU": bundle["CPU"] * plan.actors, "GPU": bundle.get("GPU", 0) * plan.actors}
    context.execution_options.resource_limits = stage_limits(cluster, held)
    context.execution_no_progress_timeout_s = no_progress_timeout_s(run)
    ask_shuffle_cpus(STAGE_CPUS.shuffle)


def stage_limits(cluster: dict[str, float], held: dict[str, float]) -> ExecutionResources:
    """Ray Data's limits: the cluster's CPUs and GPUs less what the engines' bundles hold. (Ray 2.60 deprecates
    ExecutionOptions.exclude_resources, which said the same from the other side.)"""
    return ExecutionResources.for_limits(
        cpu=max(0.0, cluster.get("CPU", 0.0) - held.get("CPU", 0.0)),
        gpu=max(0.0, cluster.get("GPU", 0.0) - held.get("GPU", 0.0)),
    )


def no_progress_timeout_s(run: RunSettings) -> float:
    return run.engine_start_timeout_s + 2 * run.engine_call_timeout_s + NO_PROGRESS_MARGIN_S


def _spread() -> dict:
    return {"scheduling_strategy": "SPREAD"}
