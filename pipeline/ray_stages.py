"""The Ray side: thin actors around the pure stages and the one function that wires the pipeline."""

from __future__ import annotations

import itertools
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import ray
from ray.data import ActorPoolStrategy, Dataset
from ray.exceptions import RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from pipeline import schema as s
from pipeline.engine.slots import SLOT_ENV, node_slots
from pipeline.engine.vllm import EngineSpec, VllmEmbedder
from pipeline.errors import EngineError, PipelineError
from pipeline.log import configure_logging
from pipeline.plan.job import JobPlan
from pipeline.runtime.cpu_priority import HelperPriority, mark_engines_ready
from pipeline.runtime.progress import Progress, chunked_counts, embedded_counts, planned_counts
from pipeline.settings import InputSettings, LoggingSettings, RunSettings, Settings
from pipeline.stages.chunk_step import ChunkStep
from pipeline.stages.chunking import Chunker, ChunkPlan
from pipeline.stages.doc_plan import decide_all, stored_id_rows, with_fates
from pipeline.stages.documents import Shard
from pipeline.stages.embed import EmbedStep, has_chunks, passed_through
from pipeline.stages.pieces import Piece, PieceReader, split_shard
from pipeline.stages.tokenizer import FastTokenizer
from pipeline.store.chunk_writer import ChunkWriter
from pipeline.store.stored_keys import LOOKUP_IDS, StoredKeys

RECORD = "record"
ENGINE_ENV = "EMBEDPIPE_ENGINE_INDEX"
"""Environment variable naming the engine actor an embed-stage feeder sends its batches to."""
ENGINE_RESTARTS = 4
"""Times Ray restarts an engine actor whose process died, retrying the calls it held."""
MAX_READ_BLOCKS = 4096
LOCAL_RAY_CONFIG = {
    "enable_metrics_collection": False,
    "metrics_report_interval_ms": 600_000,
    "task_events_report_interval_ms": 0,
    "event_stats": False,
}
"""A local Ray's own bookkeeping that nothing reads in an embedded run (no dashboard): metric exports and task
events from every process. Off, a local run's start-up was 2-4.6 s shorter in three paired runs on 2 cores."""
SHUFFLE_CPU_HEADROOM = 1
"""Logical CPUs a local Ray gets beyond the machine's: each task of Ray Data's hash shuffle asks for a whole CPU,
and with the engine and chunk actors holding theirs a 2-core machine would have none left for the plan."""


NO_DEMOTION = HelperPriority(0, "")


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
    board = ProgressBoard.remote()
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


@ray.remote
class EngineActor:
    """Hosts one vLLM engine and embeds chunk batches by their token ids. Started by the driver as soon as the plan
    places it, so the engine loads while Ray Data starts, reads and chunks; its process runs nothing but the
    engine. Once ready, it leaves the flag that lets the helper stages on its node step aside."""

    def __init__(self, logs: LoggingSettings, spec: EngineSpec, board=None, priority: HelperPriority = NO_DEMOTION):
        configure_logging(logs.level, logs.json_format)
        self.board = board
        self.failure: Exception | None = None
        slot = os.environ.get(SLOT_ENV)
        try:
            embedder = VllmEmbedder(spec, int(slot) if slot else None)
        except Exception as exc:  # noqa: BLE001 - raised by each call instead: an actor that fails to start dies
            self.failure = exc  # with a message only, and the run's error would lose what the engine said
            return
        self.step = EmbedStep(embedder, engine_label(ray.get_runtime_context().get_node_id(), embedder.info()))
        if priority.niceness:
            mark_engines_ready(priority.engines_ready_flag)
        if board is not None:
            board.add.remote({"engines_ready": 1})

    def start_failure(self) -> Exception | None:
        return self.failure

    def embed(self, batch: pa.Table) -> pa.Table:
        if self.failure is not None:
            raise self.failure
        out = self.step(batch)
        if self.board is not None:
            self.board.add.remote(embedded_counts(batch))
        return out


class EngineFeeder:
    """Ray Data's embed stage: hands each batch to its engine actor (the one its ENGINE_ENV names) and waits for
    the vectors. Two calls at a time, so the engine finds its next batch queued when it finishes one. A batch with
    nothing to embed (unchanged documents, rejects) passes without the engine where the table's vector dimension
    is known, so a run that embeds nothing does not wait for an engine to start."""

    def __init__(self, engines: list, dim: int | None = None):
        self.engine = engines[int(os.environ.get(ENGINE_ENV, "0")) % len(engines)]
        self.dim = dim

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.dim is not None and not has_chunks(batch):
            return passed_through(batch, self.dim)
        return ray.get(self.engine.embed.remote(batch))


def engine_label(node_id: str, info: dict) -> str:
    """How batch rows name their engine: node and process, and the cores it is bound to when it shares a node."""
    label = f"{node_id[:8]}:{os.getpid()}"
    if info.get("engines_per_device", 1) > 1 and info.get("cpu_bind") not in (None, "nobind"):
        label += f" cores {info['cpu_bind']}"
    return label


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
    return pa.table({RECORD: [json.dumps(record)]})


def read_documents(
    source: InputSettings, fs: pafs.FileSystem, shards: list[Shard], priority: HelperPriority = NO_DEMOTION
) -> Dataset:
    """Documents (READ_SCHEMA) of every shard, each piece read by its own task, as a stream."""
    pieces = split_pieces(shards, fs, source.piece_bytes, priority)
    rows = [p.to_row() for p in pieces]
    return ray.data.from_items(rows, override_num_blocks=min(len(rows), MAX_READ_BLOCKS)).map_batches(
        _read,
        fn_kwargs={"reader": PieceReader(fs, source), "priority": priority},
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=0.5,
    )


@dataclass(frozen=True)
class Engines:
    """The run's engine actors, and the remote args of the feeder for each: its engine's index and node."""

    actors: list
    nodes: list[str]
    feeders: Iterator[int]

    def feeder_args(self) -> dict:
        index = next(self.feeders) % len(self.actors)
        return {
            "scheduling_strategy": NodeAffinitySchedulingStrategy(self.nodes[index], soft=True),
            "runtime_env": {"env_vars": {ENGINE_ENV: str(index)}},
        }

    def start_failure(self) -> PipelineError | None:
        """What stopped an engine from starting, if one did: Ray Data reports a failed call by its own message."""
        for actor in self.actors:
            try:
                failure = ray.get(actor.start_failure.remote(), timeout=30)
            except RayError:
                continue
            if isinstance(failure, PipelineError):
                return failure
            if failure is not None:
                return EngineError(f"an engine could not start: {type(failure).__name__}: {failure}")
        return None


@contextmanager
def engine_actors(
    plan: JobPlan, logs: LoggingSettings, board=None, priority: HelperPriority = NO_DEMOTION
) -> Iterator[Engines]:
    """Start the run's engines now: one bundle per engine, spread over nodes (one per node before two on one) and
    reserved before any task of the run can take the room, and one engine actor in each, with its slot among the
    engines on its node (which cores or which share of the GPU it takes). The engines load while the rest of the
    run starts; they and their bundles are released at the end."""
    bundle = {"CPU": engine_cpus(plan)}
    if plan.engine.device == "cuda":
        bundle["GPU"] = plan.engine.tensor_parallel_size / plan.engine.engines_per_device
    group = ray.util.placement_group([bundle] * plan.actors, strategy="SPREAD")
    ray.get(group.ready())
    nodes = ray.util.placement_group_table(group)["bundles_to_node_id"]
    node_of = [nodes[i] for i in range(plan.actors)]
    slots = node_slots(node_of)
    actors = [
        EngineActor.options(
            num_cpus=bundle["CPU"],
            num_gpus=bundle.get("GPU", 0),
            max_restarts=ENGINE_RESTARTS,
            max_task_retries=ENGINE_RESTARTS,
            scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i),
            runtime_env={"env_vars": {SLOT_ENV: str(slots[i] % plan.engine.engines_per_device)}},
        ).remote(logs, plan.engine, board, priority)
        for i in range(plan.actors)
    ]
    try:
        yield Engines(actors, node_of, itertools.count())
    finally:
        for actor in actors:
            ray.kill(actor)
        ray.util.remove_placement_group(group)


def engine_cpus(plan: JobPlan) -> float:
    """Logical CPUs an engine actor reserves. Engines sharing a CPU node split one CPU's worth, as engines sharing a
    GPU split it: their real cores come from the binding, and the rest stays free for the plan's shuffle tasks
    (which ask for a whole CPU each)."""
    return 1.0 / plan.engine.engines_per_device if plan.engine.device == "cpu" else 1.0


def build_dataset(
    settings: Settings,
    plan: JobPlan,
    tokenizer: FastTokenizer,
    fs: pafs.FileSystem,
    shards: list[Shard],
    keys: StoredKeys | None,
    writer: ChunkWriter,
    engines: Engines,
    board=None,
    priority: HelperPriority = NO_DEMOTION,
    dim: int | None = None,
) -> Dataset:
    """shards -> pieces -> read (tasks) -> plan (shuffle on doc id, key lookups) -> chunk (CPU actors) ->
    embed (one engine per actor) -> write fragments (tasks). The driver gets one small record per group."""
    _, cpus = cluster_resources()
    docs = read_documents(settings.input, fs, shards, priority)
    fragment_ids = keys.fragment_ids() if keys is not None and settings.run.delete_missing else []
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
    # An actor takes a whole block per call: cut the chunk stage's blocks to one engine batch each, so every
    # engine gets work however few documents a run has.
    chunks = chunks.repartition(target_num_rows_per_block=settings.run.batch_rows)
    embedded = chunks.map_batches(
        EngineFeeder,
        fn_constructor_kwargs={"engines": engines.actors, "dim": dim},
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
        fn_kwargs={"writer": writer, "priority": priority},
        batch_size=settings.run.commit_rows,
        batch_format="pyarrow",
        num_cpus=0.25,
        ray_remote_args_fn=_spread,
    )


def _spread() -> dict:
    return {"scheduling_strategy": "SPREAD"}


def joins_cluster() -> bool:
    return bool(os.environ.get("RAY_ADDRESS")) and not ray.is_initialized()


def start_ray(run: RunSettings) -> None:
    """Join the cluster RAY_ADDRESS names, or start a local Ray sized for this machine. A local Ray keeps its
    workers' output (vLLM's messages among it) in its session's log files, not on the screen."""
    if ray.is_initialized():
        return
    # Ray starts its processes with fork+exec; lancedb's at-fork hook warns about fork alone.
    warnings.filterwarnings("ignore", message="lancedb fork support is experimental")
    # Known and tracked (the README's notes): the per-engine placement uses it until Ray 2.64 removes it.
    warnings.filterwarnings("ignore", message=".*ray_remote_args_fn.*deprecated")
    # A local Ray enables token authentication by itself and says so at every start.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        quiet_console()
        return
    total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    store_mb = run.object_store_mb or min(2048, max(256, total_mb // 10))
    ray.init(
        num_cpus=(run.num_cpus or os.cpu_count()) + SHUFFLE_CPU_HEADROOM,
        object_store_memory=store_mb * 2**20,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        _system_config={"worker_niceness": run.worker_niceness, **LOCAL_RAY_CONFIG},
    )
    quiet_console()


def quiet_console() -> None:
    """Ray Data's progress bars and notices go to its log file (ray-data.log), not the screen: the run's own
    progress display replaces them."""
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.ERROR)


def logs_dir() -> str | None:
    """Where this Ray's processes write their logs (the engines' among them), on the driver's node."""
    node = getattr(ray._private.worker, "_global_node", None)
    return node.get_logs_dir_path() if node is not None else None


def cluster_resources() -> tuple[float, int]:
    """GPUs and CPUs to plan engines on (a local Ray's shuffle headroom left out)."""
    resources = ray.cluster_resources()
    cpus = int(resources.get("CPU", 1))
    if not os.environ.get("RAY_ADDRESS"):
        cpus = max(1, cpus - SHUFFLE_CPU_HEADROOM)
    return float(resources.get("GPU", 0.0)), cpus


def iter_records(dataset: Dataset, engines: Engines | None = None) -> Iterator[dict]:
    """The write stage's group records; a worker's failure surfaces as the PipelineError it raised, an engine's
    failure to start as what the engine said."""
    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            for payload in batch.column(RECORD).to_pylist():
                yield json.loads(payload)
    except RayError as exc:
        raise (engines and engines.start_failure()) or _pipeline_error(exc) from exc


def _pipeline_error(exc: BaseException) -> PipelineError:
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, PipelineError):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return EngineError(f"a pipeline worker failed after Ray's retries: {first_line}")
