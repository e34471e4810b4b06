"""Exceptions the pipeline raises on purpose. No ray or vllm imports."""


class PipelineError(Exception):
    """Base class for errors the pipeline raises deliberately."""


class Refusal(PipelineError):
    """Nothing was started: settings, input or store refused. Jobs exit 2; the message says what to change."""


class ConfigError(Refusal):
    """Settings, paths or the model cannot work together; raised before any work starts."""


class ModelNotHere(ConfigError):
    """The model directory is not on this node; on a cluster, another node may have it (a RayJob's driver runs on
    the head, which mounts no model volume)."""


class ChunkBudgetError(PipelineError):
    """A chunk would exceed the engine's per-sequence limit."""


class EngineError(PipelineError):
    """The embedding engine failed or returned something unusable."""


class StoreError(PipelineError):
    """The vector store is unreachable or holds tables that do not match this run."""


class InputRejected(PipelineError):
    """The engine refused an input for a reason tied to the data (not to the engine's health)."""


class StoreBusyError(StoreError, Refusal):
    """Another run holds the store's lock; nothing was started."""


class ForeignTable(StoreError, Refusal):
    """The chunks table is not one this pipeline wrote (another writer replaced it or its columns): nothing was
    started, nothing appended."""


class NoIngestionRun(StoreError, Refusal):
    """The store holds no ingestion run for a job that reads one (verify, query): nothing was checked."""


class PlacementError(PipelineError):
    """Ray could not place the engines within the run's bound; nothing was embedded."""


class RunInterrupted(PipelineError):
    """The driver was told to stop (SIGTERM: a spot instance's notice, Kubernetes deleting the pod) and did, keeping
    what it had committed; the next run resumes."""
