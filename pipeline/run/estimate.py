"""`jobs.ingest --estimate`: the run's read, plan and chunk stages on the cluster, with no engine and no write,
tallied into what the run would embed (exact tokens per fate, with the run's own tokenizer and chunker) and
projected into time and cost (pipeline/run/projection.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from pipeline.plan.estimate import Projection, Sample, SampledTally, scaled_tokens
from pipeline.run.executor import Executor
from pipeline.run.executors import default_executor
from pipeline.run.process_memory import driver_peak_mb
from pipeline.run.projection import project_run, run_rate
from pipeline.run.start import start_run
from pipeline.settings import Settings
from pipeline.stages.sources import Inputs
from pipeline.store.lance_store import LanceStore


@dataclass(frozen=True)
class Estimate:
    counted: SampledTally
    """The chunk stage's tally, and with a sample the pieces it read of the input's."""
    sample: Sample | None
    tokens: float
    """Tokens to embed in the whole input (scaled up from a sample)."""
    interval: float
    """Half-width of the 95% interval on `tokens` (0 when every document was chunked)."""
    engines: int
    projection: Projection | None
    seconds: float
    """What the estimate itself took."""
    driver_mb: float
    """The driver's peak resident memory."""

    def lines(self) -> list[str]:
        t, c = self.counted.tally, self.counted
        how = (
            f"a seeded sample of {self.sample.fraction:.0%} of the input's pieces (seed {self.sample.seed}: "
            f"{c.sampled:,} of {c.pieces:,} files or parts of files read), scaled up"
            if self.sample and c.pieces
            else "every document chunked with the run's tokenizer and chunker"
        )
        scale = 1 / self.sample.fraction if self.sample else 1.0
        docs = ", ".join(f"{t.docs[k] * scale:,.0f} {label}" for k, label in _FATE_LABELS)
        tokens = f"{self.tokens:,.0f}" + (f" +- {self.interval:,.0f} (95%)" if self.sample else "")
        p = t.percentiles()
        lines = [
            f"Estimate from {how}:",
            f"  documents: {docs}" + (" (removals are not estimated from a sample)" if self.sample else ""),
            f"  to embed: {t.chunks_to_embed * scale:,.0f} chunks, {tokens} tokens",
        ]
        if p:
            lines.append(
                "  chunk tokens: "
                + ", ".join(f"p{round(q * 100)} {v:,}" for q, v in p.items())
                + f", max {max(t.lengths):,}"
            )
        if self.projection is not None:
            lines.append(
                f"  projected with {self.engines} engine{'s' if self.engines > 1 else ''}: {self.projection.text()}"
            )
        else:
            lines.append(
                "  projected: no rate known (no earlier run of this store with this model, limits and device, and no "
                "known peak for the device): run once, or see python -m benchmarks.bench"
            )
        lines.append(
            f"  the estimate took {self.seconds:,.1f} s (read, plan and chunk; no engine started); driver peak "
            f"{self.driver_mb:,.0f} MiB"
        )
        return lines


_FATE_LABELS = (("new", "new"), ("changed", "changed"), ("unchanged", "unchanged"), ("removed", "removed"))
_FATE_LABELS += (("rejected", "rejected"),)


def run_estimate(settings: Settings, sample: Sample | None = None, executor: Executor | None = None) -> Estimate:
    """What a run of these settings would embed, counted by its own read, plan and chunk stages on the executor's
    cluster (no engine starts, nothing is written), and projected from the store's own rates."""
    executor = executor or default_executor()
    started = time.perf_counter()
    inputs = Inputs.listed(settings.input)
    store = LanceStore.from_settings(settings.store)
    start = start_run(settings, executor, store)
    counted = executor.tally(settings, start.plan, inputs, start.tokenizer(), store.stored_keys(), sample)
    tokens, interval = scaled_tokens(counted.tally, sample.fraction if sample else 1.0)
    rate = run_rate(settings, start.plan, start.cluster, start.history, counted.tally)
    projection = project_run(settings, start.plan, tokens, rate)
    seconds = time.perf_counter() - started
    return Estimate(counted, sample, tokens, interval, start.plan.actors, projection, seconds, driver_peak_mb())
