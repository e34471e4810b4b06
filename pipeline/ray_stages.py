"""The Ray side: thin actors around the pure stages and the one function that wires the pipeline."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import ray
from ray.data import ActorPoolStrategy, Dataset
from ray.exceptions import RayError

from pipeline.chunk_step import ChunkStep
from pipeline.chunking import Chunker
from pipeline.documents import Shard
from pipeline.embedding import EmbedStep, VllmEmbedder
from pipeline.errors import EngineError, PipelineError
from pipeline.job_plan import JobPlan
from pipeline.log import configure_logging
from pipeline.settings import Settings
from pipeline.tokenizer import load_tokenizer

PATH_COLUMN = "path"


class ChunkActor:
    """Reads shard files, parses them and chunks their documents with the model's tokenizer."""

    def __init__(
        self, settings: Settings, plan: JobPlan, fs: pafs.FileSystem, shards: dict[str, Shard], unchanged: list
    ):
        configure_logging(settings.logging.level, settings.logging.json_format)
        tokenizer = load_tokenizer(plan.engine.model_dir, settings.model.trust_remote_code)
        unchanged_docs = ray.get(unchanged[0])  # a ref inside a list, so Ray hands it over unresolved
        self.step = ChunkStep(Chunker(tokenizer, plan.chunk), settings.input, fs, shards, unchanged_docs)

    def __call__(self, files: pa.Table) -> pa.Table:
        return self.step(files.column(PATH_COLUMN).to_pylist())


class EmbedActor:
    """Hosts one vLLM engine and embeds chunk batches by their token ids."""

    def __init__(self, settings: Settings, plan: JobPlan):
        configure_logging(settings.logging.level, settings.logging.json_format)
        actor = f"{ray.get_runtime_context().get_node_id()[:8]}:{os.getpid()}"
        self.step = EmbedStep(VllmEmbedder(plan.engine), actor)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.step(batch)


def build_dataset(
    settings: Settings, plan: JobPlan, fs: pafs.FileSystem, shards: list[Shard], unchanged: dict[str, str]
) -> Dataset:
    """shard paths -> read + parse + chunk (CPU actors) -> embed (one engine per actor).

    `unchanged` (doc_id -> doc_hash of documents already stored whole) travels as one object-store ref.
    """
    on_gpu = plan.engine.device == "cuda"
    files = ray.data.from_items(
        [{PATH_COLUMN: shard.path} for shard in shards], override_num_blocks=min(len(shards), 256)
    )
    chunks = files.map_batches(
        ChunkActor,
        fn_constructor_kwargs={
            "settings": settings,
            "plan": plan,
            "fs": fs,
            "shards": {sh.path: sh for sh in shards},
            "unchanged": [ray.put(unchanged)],
        },
        batch_size=1,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=settings.run.chunk_actors),
        num_cpus=0.5,
    )
    return chunks.map_batches(
        EmbedActor,
        fn_constructor_kwargs={"settings": settings, "plan": plan},
        batch_size=settings.run.batch_rows,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=plan.actors),
        num_gpus=settings.model.tensor_parallel_size if on_gpu else 0,
        num_cpus=1,
        ray_remote_args_fn=_spread,  # one engine per node before two on one, on a multi-node cluster
    )


def _spread() -> dict:
    return {"scheduling_strategy": "SPREAD"}


def start_ray(settings: Settings) -> None:
    """Join the cluster RAY_ADDRESS names, or start a local Ray sized for this machine."""
    if ray.is_initialized():
        return
    # Ray starts its processes with fork+exec; lancedb's at-fork hook warns about fork alone.
    warnings.filterwarnings("ignore", message="lancedb fork support is experimental")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return
    total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    store_mb = settings.run.object_store_mb or min(2048, max(256, total_mb // 10))
    ray.init(
        num_cpus=settings.run.num_cpus or os.cpu_count(),
        object_store_memory=store_mb * 2**20,
        include_dashboard=False,
        log_to_driver=True,
        _system_config={"worker_niceness": settings.run.worker_niceness},
    )


def cluster_resources() -> tuple[float, int]:
    resources = ray.cluster_resources()
    return float(resources.get("GPU", 0.0)), int(resources.get("CPU", 1))


def iter_embedded(dataset: Dataset) -> Iterator[pa.Table]:
    """The pipeline's output batches; a worker's failure surfaces as the PipelineError it raised."""
    try:
        yield from dataset.iter_batches(batch_size=None, batch_format="pyarrow")
    except RayError as exc:
        raise _pipeline_error(exc) from exc


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
