"""The Ray Data side: thin tasks and actors around the pure stages, and the one function that wires the pipeline.
The engines' actors are in ray_engines, the cluster's start and inventory in ray_cluster."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict

import pyarrow as pa
import pyarrow.fs as pafs
import ray
import structlog
from ray.data import ActorPoolStrategy, DataContext, Dataset, ExecutionResources
from ray.data._internal.execution.operators.hash_shuffle import HashShufflingOperatorBase
from ray.exceptions import RayError

from pipeline import errors
from pipeline import schema as s
from pipeline.errors import ConfigError, EngineError, PipelineError
from pipeline.log import configure_logging
from pipeline.plan.chunk_plan import ChunkPlan
from pipeline.plan.estimate import PieceIndex, Sample, SampledTally, Tally
from pipeline.plan.job import RunPlan
from pipeline.plan.placement import STAGE_CPUS, held_by_engines
from pipeline.ray_cluster import cluster_cpus, on_driver_node
from pipeline.ray_engines import NO_DEMOTION, Engines
from pipeline.ray_supervision import EngineFeeder
from pipeline.records import GroupRecord
from pipeline.runtime.cpu_priority import HelperPriority
from pipeline.runtime.progress import Progress, chunked_counts, planned_counts
from pipeline.settings import InputSettings, LoggingSettings, RunSettings, Settings
from pipeline.stages.chunk_step import ChunkStep
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
RESERVE_CHECK_S = 5.0
"""How often the engines' reserve in Ray Data's budget is checked against the nodes still alive."""


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Counts the plan and chunk stages send as they go (fire and forget), for the driver's progress display."""

    def __init__(self):
        self.progress = Progress()

    def add(self, counts: dict[str, int]) -> None:
        self.progress.add(counts)

    def snapshot(self) -> dict[str, int]:
        return asdict(self.progress)


@contextmanager
def progress_board() -> Iterator:
    """The run's progress board, killed when the run ends: an actor outlives the run that made it, so every later run
    in the same Ray session (the benchmark's points are) kept one more idle actor process (0.3-0.9 CPU-seconds per
    steady window on 2 cores, with five left over)."""
    board = ProgressBoard.options(**on_driver_node()).remote()
    try:
        yield board
    finally:
        ray.kill(board)


def board_reader(board) -> Callable[[], dict[str, int]]:
    return lambda: ray.get(board.snapshot.remote(), timeout=2.0)


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
    source: InputSettings,
    fs: pafs.FileSystem,
    shards: list[Shard],
    priority: HelperPriority = NO_DEMOTION,
    sampled: list[Piece] | None = None,
) -> Dataset:
    """Documents (READ_SCHEMA) of every shard, or of the `sampled` pieces only, each piece read by its own task,
    as a stream."""
    pieces = sampled if sampled is not None else split_pieces(shards, fs, source.piece_bytes, priority)
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
    cpus = cluster_cpus()
    docs = read_documents(settings.input, inputs.fs, inputs.shards, priority, sampled)
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
    partitions = settings.run.plan_partitions or min(cpus, 64)
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
        batch_size=64,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=settings.run.chunk_actors),
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
    _tell_ray_data(plan, settings.run)
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


def _tell_ray_data(plan: RunPlan, run: RunSettings) -> None:
    """What Ray Data's scheduler must know of this run: the engines' bundles are not its to hand out (it would
    otherwise budget the stages with CPUs the engines hold), and how long a run may go without progress before it
    ends (a start may take run.engine_start_timeout_s, a hung engine's call its bound: past both, something is
    stuck)."""
    context = DataContext.get_current()
    bundle = plan.placement.bundle
    context.execution_options.exclude_resources = ExecutionResources(
        cpu=bundle["CPU"] * plan.actors, gpu=bundle.get("GPU", 0) * plan.actors
    )
    context.execution_no_progress_timeout_s = no_progress_timeout_s(run)
    # Ray Data 2.60 fixes its hash shuffle's tasks at a whole CPU (a class constant, no setting). Seen on a
    # two-node cluster with an engine on each: the shuffle stuck at its first map task, no demand pending, while
    # read tasks held the fractions of CPU it needed waiting for it to take their blocks. A shuffle task hashes a
    # block: it needs no whole CPU.
    HashShufflingOperatorBase._DEFAULT_SHUFFLE_BLOCK_NUM_CPUS = STAGE_CPUS.shuffle  # noqa: SLF001


def no_progress_timeout_s(run: RunSettings) -> float:
    return run.engine_start_timeout_s + 2 * run.engine_call_timeout_s + NO_PROGRESS_MARGIN_S


def _spread() -> dict:
    return {"scheduling_strategy": "SPREAD"}


def iter_records(dataset: Dataset, engines: Engines | None = None) -> Iterator[GroupRecord]:
    """The write stage's group records; a worker's failure surfaces as the PipelineError it raised, an engine's
    failure to start as what the engine said."""
    reserve = EngineReserve(dataset.context.execution_options, engines) if engines is not None else None
    try:
        if reserve is not None:
            reserve.start()
        for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            for payload in batch.column(RECORD).to_pylist():
                yield GroupRecord.from_json(payload)
    except RayError as exc:
        raise (engines and engines.start_failure()) or _pipeline_error(exc) from exc
    finally:
        if reserve is not None:
            reserve.stop.set()


class EngineReserve(threading.Thread):
    """Keeps what Ray Data leaves to the engines in step with the bundles they still hold. Ray Data re-reads the
    cluster's size every few seconds but not what it was told to leave out: after a node is lost, the head's CPUs
    less every engine's bundle could leave it nothing to schedule on, and the run would wait for ever."""

    def __init__(self, options, engines: Engines):
        super().__init__(daemon=True, name="engine-reserve")
        self.options, self.engines, self.stop = options, engines, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(RESERVE_CHECK_S):
            try:
                alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
            except RayError:
                continue
            held = held_by_engines(self.engines.bundle, self.engines.nodes, alive)
            if held["CPU"] != self.options.exclude_resources.cpu:
                log.warning("engine_reserve", cpus=held["CPU"], gpus=held["GPU"], reason="a node with engines is lost")
            self.options.exclude_resources = ExecutionResources(cpu=held["CPU"], gpu=held["GPU"])


def _pipeline_error(exc: BaseException) -> PipelineError:
    """The PipelineError a worker raised, through Ray's wrapping: as the exception's cause where Ray keeps it, else
    read back from the remote traceback Ray prints (Ray Data 2.60 re-raises a UDF's error `from None` inside a
    UserCodeException, keeping only its text). Any other failure becomes an EngineError quoting its last line."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, PipelineError):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    raised = _raised_in_worker(str(exc))
    if raised is not None:
        return raised
    first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return EngineError(f"a pipeline worker failed after Ray's retries: {first_line}")


_WORKER_ERROR = re.compile(r"^pipeline\.errors\.(\w+): (.+)$", re.MULTILINE)


def _raised_in_worker(traceback_text: str) -> PipelineError | None:
    """The last of our own errors a remote traceback names, rebuilt from its class name and message."""
    for name, message in reversed(_WORKER_ERROR.findall(traceback_text)):
        cls = getattr(errors, name, None)
        if isinstance(cls, type) and issubclass(cls, PipelineError):
            return cls(message.strip())
    return None


def tally_chunks(
    settings: Settings,
    plan: RunPlan,
    inputs: Inputs,
    tokenizer: FastTokenizer,
    keys: StoredKeys | None,
    sample: Sample | None = None,
) -> SampledTally:
    """The chunk stage's rows (of a seeded sample of the pieces, when `sample` says so), tallied in the workers
    block by block: the driver sums small records."""
    pieces = sampled = index = None
    if sample is not None:
        pieces = split_pieces(inputs.shards, inputs.fs, settings.input.piece_bytes)
        sampled = [p for p in pieces if sample.keeps(p.key)]
        if not sampled:
            msg = (
                f"--sample {sample.fraction:g} (seed {sample.seed}) kept none of the input's {len(pieces)} pieces; "
                "give a larger fraction, another --seed, or smaller pieces (input.piece_mb)"
            )
            raise ConfigError(msg)
        index = PieceIndex.listing([(p.shard.source, p.first_line) for p in sampled])
    chunks = chunk_documents(settings, plan, inputs, tokenizer, keys, sampled=sampled)
    tallies = chunks.map_batches(
        _tally, fn_kwargs={"pieces": index}, batch_size=None, batch_format="pyarrow", num_cpus=0.25
    )
    total = Tally()
    try:
        for batch in tallies.iter_batches(batch_size=None, batch_format="pyarrow"):
            for payload in batch.column(RECORD).to_pylist():
                total = total + Tally.from_json(payload)
    except RayError as exc:
        raise _pipeline_error(exc) from exc
    return SampledTally(total, len(pieces) if pieces else None, len(sampled) if sampled else None)


def _tally(rows: pa.Table, pieces: PieceIndex | None) -> pa.Table:
    return pa.table({RECORD: [Tally.of(rows, pieces).to_json()]})
