"""The seam between a run and where its stages execute. The run (`run_ingest`, `run_estimate`, the dry run and the
benchmark) composes its start, records itself and commits what the write stage reports; an executor starts the
cluster, holds the engines, runs the stages and tallies for the estimate. Two executors meet this protocol:
`RayExecutor` (pipeline/run/ray/: a Ray cluster, the job's default) and `InProcessExecutor` (pipeline/run/
in_process.py: this process, any Embedder; tests and small jobs). No ray or vllm imports."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from pipeline.errors import ModelNotHere
from pipeline.plan.estimate import Sample, SampledTally
from pipeline.plan.job import RunPlan
from pipeline.plan.model_dir import ModelDir
from pipeline.plan.placement import Cluster
from pipeline.records import GroupRecord
from pipeline.run.live_metrics import LiveMetrics
from pipeline.settings import RunSettings, Settings
from pipeline.stages.sources import Inputs
from pipeline.stages.tokenizer import FastTokenizer
from pipeline.store.session import StoreSession
from pipeline.store.stored_keys import StoredKeys


@dataclass(frozen=True)
class FleetReport:
    """What became of the engines while the run ran; None where the cluster could not say."""

    engines_lost: int | None = None
    engine_restarts: int | None = None
    engines_hung: int | None = None
    lost_nodes: list[str] | None = None
    """Nodes of the plan's cluster no longer alive."""
    engine_failures: dict[str, int] | None = None
    """What the engines' failures said (a CUDA error, a failed start), and how often."""


class EngineFleet(Protocol):
    """The engines a run holds while its stages run."""

    def progress(self) -> dict[str, int]:
        """The counts the plan and chunk stages and the engines have reported so far (Progress's fields)."""
        ...

    def report(self) -> FleetReport: ...


class Executor(Protocol):
    """Where a run's stages execute."""

    def start(self, run: RunSettings, pending: Future | None = None) -> None:
        """Start or join the cluster. `pending`: work running beside the start (the tokenizer loading) that must
        finish first where starting changes the process itself."""
        ...

    def inventory(self) -> Cluster:
        """The cluster's alive nodes, as the plan places engines on them."""
        ...

    def wait_for_gpus(self, cluster: Cluster, bundle: dict[str, float], engines: int, timeout_s: float) -> Cluster:
        """A cluster with no GPU node for a run on GPUs: the cluster once GPU nodes joined, or ConfigError."""
        ...

    def logs_dir(self) -> str | None:
        """Where the engines' and the library's own messages go, on the driver's node."""
        ...

    def read_model(self, settings: Settings, cluster: Cluster, here: ModelNotHere) -> tuple[ModelDir, FastTokenizer]:
        """The model and its tokenizer, read on a node of the cluster that has them when this one (`here` says why)
        does not; ConfigError when none has."""
        ...

    def engines(self, plan: RunPlan, settings: Settings, cluster: Cluster, run_id: str) -> AbstractContextManager:
        """The run's engines, loading from now on; entered, an EngineFleet; released when the block ends."""
        ...

    def records(
        self,
        settings: Settings,
        plan: RunPlan,
        inputs: Inputs,
        tokenizer: FastTokenizer,
        session: StoreSession,
        fleet: EngineFleet,
    ) -> Iterator[GroupRecord]:
        """Read, plan, chunk, embed and write the inputs: one record per group of rows written."""
        ...

    def tally(
        self,
        settings: Settings,
        plan: RunPlan,
        inputs: Inputs,
        tokenizer: FastTokenizer,
        keys: StoredKeys | None,
        sample: Sample | None,
    ) -> SampledTally:
        """Read, plan and chunk (of a seeded sample of the pieces when `sample` says so), counted: what a run of
        these inputs would embed."""
        ...

    def live_metrics(self, store: str) -> LiveMetrics:
        """Where the run's live metrics go while it runs."""
        ...
