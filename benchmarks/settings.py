"""The benchmark job's settings: the pipeline's, plus a [bench] section that no other job reads or records."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from pipeline.settings import Section, Settings


class BenchSettings(Section):
    """The benchmark job's sweep and baselines."""

    budgets: list[int] = Field(default_factory=lambda: [8192, 16192, 24288], min_length=1)
    """max_num_batched_tokens values to sweep; each is one full pipeline run."""
    max_model_lens: list[int] = Field(default_factory=list)
    """max_model_len values to sweep as well; empty: model.max_model_len only."""
    actors: list[int] = Field(default_factory=list)
    """Engine actor counts to sweep; empty: run.actors only."""
    batch_rows: list[int] = Field(default_factory=list)
    """Chunks per engine call to sweep; empty: run.batch_rows only."""
    engines_per_device: list[int | None] = Field(default_factory=list)
    """Engines per device to sweep (on CPUs each gets the node's cores divided among them; null: the planner's
    choice); empty: run.engines_per_device only."""
    baselines: list[Literal["bare", "serve", "ray_data_llm"]] = Field(
        default_factory=lambda: ["bare", "serve", "ray_data_llm"]
    )
    """Baselines on the same chunks and engine settings: the bare engine at every budget, the others at the first."""
    bare_runs: int = Field(default=2, ge=1)
    """Bare-engine runs at the first budget, one before the sweep and the rest after: their spread is the noise."""
    serve_concurrency: list[int] = Field(default_factory=lambda: [1, 4, 16], min_length=1)
    """Requests in flight for the vLLM server + HTTP client baseline; each is one pass over the corpus."""
    serve_inputs_per_request: int = Field(default=1, ge=1)
    """Chunks per /v1/embeddings request."""
    serve_start_timeout_s: float = Field(default=600.0, gt=0)
    """How long to wait for the vLLM server to answer /health."""
    output_dir: str = "bench_out"
    """Report directory; each invocation writes a subdirectory named by its bench id."""
    peak_tflops: float | None = Field(default=None, gt=0)
    """Device peak in TFLOP/s for MFU; unset: looked up by GPU name (16-bit dense), or none on CPU."""
    measure_device: bool = True
    """Measure the device's dense matmul rate at the model's shape with plain PyTorch (the measured ceiling)."""


class BenchJobSettings(Settings):
    """Settings of python -m benchmarks.bench: every section of a run, and the benchmark's own."""

    shortcuts: ClassVar[dict[str, list[str]]] = {**Settings.shortcuts, "bench.budgets": ["budgets"]}

    bench: BenchSettings = BenchSettings()
