"""The in-process executor: a run's stages one after another in this process, without Ray, with any Embedder. The
same read, plan, chunk, embed and write steps, batch sizes and worker-to-driver records as the Ray executor's
dataset, in one process: for tests of the run's own logic, the benchmarks' fixed chunks, dry runs and small jobs.
No ray imports; vLLM only when the engine is built from the plan."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict

import pyarrow as pa

from pipeline import schema as s
from pipeline.engine.factory import make_embedder
from pipeline.errors import ConfigError, EngineError, ModelNotHere, PipelineError
from pipeline.plan.engine_spec import EngineSpec
from pipeline.plan.estimate import Sample, SampledTally, Tally
from pipeline.plan.job import RunPlan
from pipeline.plan.model_dir import ModelDir
from pipeline.plan.placement import Cluster
from pipeline.records import GroupRecord
from pipeline.run.executor import FleetReport
from pipeline.run.live_metrics import LiveMetrics, RegisteredSeries
from pipeline.run.progress import Progress, chunked_counts, embedded_counts, planned_counts
from pipeline.runtime.devices import read_node_devices
from pipeline.settings import InputSettings, RunSettings, Settings
from pipeline.stages.chunk_step import DOCS_PER_BATCH, ChunkStep
from pipeline.stages.chunking import Chunker
from pipeline.stages.embed import Embedder, EmbedStep, has_chunks, passed_through
from pipeline.stages.fates import decide_all, stored_id_rows, with_fates
from pipeline.stages.pieces import Piece, PieceReader, sample_pieces, split_shard
from pipeline.stages.sources import Inputs
from pipeline.stages.tokenizer import FastTokenizer
from pipeline.store.session import StoreSession
from pipeline.store.stored_keys import StoredKeys

NODE = "local"
"""What the in-process run's batch rows and group records name as their node and engine."""


def all_pieces(inputs: Inputs, piece_bytes: int) -> list[Piece]:
    return [piece for shard in inputs.shards for piece in split_shard(shard, inputs.fs, piece_bytes)]


def planned_documents(
    cfg: InputSettings,
    chunking: str,
    keys: StoredKeys | None = None,
    delete_missing: bool = False,
    inputs: Inputs | None = None,
    pieces: list[Piece] | None = None,
) -> pa.Table:
    """Every input document (of `pieces` only, when given) with its fate, every reject, and (delete_missing) a
    marker per removed document: the plan stage, in one block."""
    inputs = inputs or Inputs.listed(cfg)
    reader = PieceReader(inputs.fs, cfg)
    pieces = pieces if pieces is not None else all_pieces(inputs, cfg.piece_bytes)
    parts = [t for piece in pieces for t in reader(piece)]
    if keys is not None and delete_missing:
        parts += [stored_id_rows(keys.doc_ids(f)) for f in keys.fragment_ids()]
    planned = decide_all(pa.concat_tables(parts) if parts else s.READ_SCHEMA.empty_table())
    return with_fates(planned, keys.lookup if keys is not None else None, chunking)


def slices(table: pa.Table, rows: int) -> Iterator[pa.Table]:
    for start in range(0, len(table), rows):
        yield table.slice(start, rows)


class Regrouped:
    """Embedded batches in, groups of exactly `rows` rows out (the last one shorter): the write stage's groups."""

    def __init__(self, rows: int):
        self.rows = rows
        self.pending: list[pa.Table] = []
        self.size = 0

    def add(self, batch: pa.Table) -> Iterator[pa.Table]:
        self.pending.append(batch)
        self.size += len(batch)
        while self.size >= self.rows:
            held = pa.concat_tables(self.pending)
            yield held.slice(0, self.rows)
            rest = held.slice(self.rows)
            self.pending, self.size = [rest], len(rest)

    def rest(self) -> Iterator[pa.Table]:
        if self.size:
            yield pa.concat_tables(self.pending)


class InProcessFleet:
    """The in-process run's one engine, and the counts its stages report."""

    def __init__(self, embedder: Embedder):
        self.step = EmbedStep(embedder, actor=NODE)
        self.board = Progress(engines_ready=1)

    def progress(self) -> dict[str, int]:
        return asdict(self.board)

    def count(self, counts: dict[str, int]) -> None:
        self.board.add(counts)

    def embed(self, batch: pa.Table, dim: int | None) -> pa.Table:
        """The embed stage: as the Ray feeders do, a batch with nothing to embed passes without the engine where
        the stored vectors' width is known."""
        if dim is not None and not has_chunks(batch):
            return passed_through(batch, dim)
        out = self.step(batch)
        self.count(embedded_counts(batch))
        return out

    def report(self) -> FleetReport:
        return FleetReport(engines_lost=0, engine_restarts=0, engines_hung=0, lost_nodes=[], engine_failures={})


class InProcessExecutor:
    """Runs the stages in this process on one engine: `embedder` when given (the caller keeps it), else the engine
    the plan names, started for the run and closed after it. Plans on `cluster` when given, else on this machine as
    a local Ray would see it."""

    def __init__(self, embedder: Embedder | None = None, cluster: Cluster | None = None):
        self.embedder = embedder
        self.cluster = cluster
        self.run = RunSettings()
        self.registry = None
        """The live metrics' registry once a run asked for them (prometheus_client)."""

    def start(self, run: RunSettings, pending=None) -> None:
        self.run = run

    def inventory(self) -> Cluster:
        if self.cluster is not None:
            return self.cluster
        devices = read_node_devices()
        return Cluster.one_node(
            devices.gpu_count,
            self.run.num_cpus or os.cpu_count() or 1,
            gpu_name=devices.gpu_name,
            gpu_memory_bytes=devices.gpu_memory_bytes,
            host_memory_bytes=devices.host_memory_bytes,
        )

    def wait_for_gpus(self, cluster: Cluster, bundle: dict[str, float], engines: int, timeout_s: float) -> Cluster:
        msg = (
            "model.device = cuda but this machine has no GPU; run on a machine with GPUs (or give RAY_ADDRESS of a "
            "cluster with GPU nodes), or set model.device = auto (or cpu) for vLLM's CPU backend"
        )
        raise ConfigError(msg)

    def logs_dir(self) -> str | None:
        return None

    def read_model(self, settings: Settings, cluster: Cluster, here: ModelNotHere) -> tuple[ModelDir, FastTokenizer]:
        raise here  # this process is the only node

    @contextmanager
    def engines(self, plan: RunPlan, settings: Settings, cluster: Cluster, run_id: str) -> Iterator[InProcessFleet]:
        embedder = self.embedder or _started(plan.engine)
        try:
            yield InProcessFleet(embedder)
        finally:
            if self.embedder is None and hasattr(embedder, "close"):
                embedder.close()

    def records(
        self,
        settings: Settings,
        plan: RunPlan,
        inputs: Inputs,
        tokenizer: FastTokenizer,
        session: StoreSession,
        fleet: InProcessFleet,
    ) -> Iterator[GroupRecord]:
        chunker = Chunker(tokenizer, plan.chunk)
        return stage_records(settings.input, settings.run, chunker, inputs, session, fleet)

    def tally(
        self,
        settings: Settings,
        plan: RunPlan,
        inputs: Inputs,
        tokenizer: FastTokenizer,
        keys: StoredKeys | None,
        sample: Sample | None,
    ) -> SampledTally:
        pieces = all_pieces(inputs, settings.input.piece_bytes)
        sampled, index = sample_pieces(pieces, sample) if sample is not None else (pieces, None)
        removals = settings.run.delete_missing and sample is None
        planned = planned_documents(settings.input, plan.chunk.fingerprint, keys, removals, inputs, sampled)
        chunk = ChunkStep(Chunker(tokenizer, plan.chunk))
        total = Tally()
        for docs in slices(planned, DOCS_PER_BATCH):
            total = total + Tally.of(chunk(docs), index)
        if sample is None:
            return SampledTally(total)
        return SampledTally(total, len(pieces), len(sampled))

    def live_metrics(self, store: str) -> LiveMetrics:
        import prometheus_client

        self.registry = prometheus_client.CollectorRegistry()
        return LiveMetrics(store, lambda name, spec: RegisteredSeries(self.registry, name, spec))


def stage_records(
    cfg: InputSettings,
    run: RunSettings,
    chunker: Chunker,
    inputs: Inputs,
    session: StoreSession,
    fleet: InProcessFleet,
) -> Iterator[GroupRecord]:
    """Read and plan every input document, then chunk, embed and write them in the batches the Ray stages use:
    one record per group of run.commit_rows rows written."""
    planned = planned_documents(cfg, chunker.plan.fingerprint, session.keys, run.delete_missing, inputs)
    fleet.count(planned_counts(planned))
    chunk = ChunkStep(chunker)
    groups = Regrouped(run.commit_rows)
    for docs in slices(planned, DOCS_PER_BATCH):
        chunks = chunk(docs)
        fleet.count(chunked_counts(docs, chunks))
        for batch in slices(chunks, run.batch_rows):
            for group in groups.add(fleet.embed(batch, session.dim)):
                yield _sent(session.writer.write(group, node=NODE))
    for group in groups.rest():
        yield _sent(session.writer.write(group, node=NODE))


def _started(spec: EngineSpec) -> Embedder:
    try:
        return make_embedder(spec)
    except PipelineError:
        raise
    except Exception as exc:
        raise EngineError(f"an engine could not start: {type(exc).__name__}: {exc}") from exc


def _sent(record: GroupRecord) -> GroupRecord:
    """The record as the driver receives it from a worker: through its strict JSON."""
    return GroupRecord.from_json(record.to_json())
