"""`jobs.ingest --dry-run`: the run's start, resolved and checked on the executor's cluster (the settings, the inputs,
the model, the tokenizer, the placement and the memory), without reading a document or starting an engine. No ray
or vllm imports."""

from __future__ import annotations

from pipeline.plan.memory import GIB, MemoryPlan
from pipeline.run.executor import Executor
from pipeline.run.start import RunStart, start_run
from pipeline.settings import Settings
from pipeline.stages.sources import Inputs
from pipeline.store.lance_store import LanceStore


def dry_run(settings: Settings, executor: Executor, where: str) -> tuple[RunStart, list[str]]:
    """The start a run of `settings` would make on the executor's cluster (`where` says which), and the lines that
    say it; ConfigError for whatever the run would refuse."""
    inputs = Inputs.listed(settings.input)
    start = start_run(settings, executor, LanceStore.from_settings(settings.store))
    start.tokenizer()
    plan = start.plan
    engines = f"{plan.actors} engine{'s' if plan.actors > 1 else ''}"
    return start, [
        *(f"note: {note}" for note in plan.notes),
        f"{len(inputs.shards)} shards; model {plan.model_id} ({plan.engine.model_dir}); max_model_len "
        f"{plan.engine.max_model_len}; chunk tokens {plan.chunk.max_tokens}, overlap {plan.chunk.overlap_tokens}",
        f"planned on {where} ({start.cluster.describe()}): {engines} on {plan.engine.device}, "
        f"{plan.engine.engines_per_device} per device, each a bundle of {plan.placement.bundle}; "
        + _memory_text(plan.memory),
    ]


def _memory_text(memory: MemoryPlan) -> str:
    needed, budget = memory.per_rank.get("needed"), memory.per_rank.get("budget")
    text = f"each engine needs {needed / GIB:.2f} GiB"
    return text + (f" of its {budget / GIB:.2f} GiB" if budget else " (its device's memory is unknown)")
