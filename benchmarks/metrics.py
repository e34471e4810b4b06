"""Throughput arithmetic and the diagnosis: pure functions over measured points. No ray, vllm or torch. FLOPs per
token and device peaks come from the planner (pipeline/plan/compute.py), which places engines by them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pipeline.stats import STAGE_LABELS, STAGES

SAMPLE_VECTORS = 32
"""Vectors each runner returns for the cross-check against the bare engine's (first chunks of the corpus)."""

BREAKDOWN = ("startup_s", *STAGES)
"""A pipeline point's time: start-up, then busy seconds per stage."""
BREAKDOWN_LABELS = {"startup_s": "start-up", **STAGE_LABELS}
ENGINE_BUSY_FLOOR = 0.85
"""Below this share of the steady window spent in the engine, the run is bound outside it."""
FLAT_SPREAD = 0.05
"""Tokens/s that varies less than this across a sweep is "the same" (the machine's noise is about this size)."""


@dataclass(frozen=True)
class Point:
    """One measured configuration: a pipeline run or a baseline pass over the same chunks."""

    kind: str
    """'pipeline', 'bare', 'serve' or 'ray_data_llm'."""
    label: str
    params: dict
    wall_s: float
    """End to end, start-up included."""
    startup_s: float
    """Until the first engine could take work."""
    chunks: int
    tokens: int
    """Tokens of the chunks written (the chunker's count)."""
    engine_tokens: int
    """Tokens the engine reports having processed."""
    stages: dict = field(default_factory=dict)
    """Busy seconds per pipeline stage, summed over workers."""
    engines: int = 1
    tokens_per_call: float | None = None
    """Mean tokens handed to one engine per call: what it can batch at most."""
    run_id: str | None = None
    error: str | None = None
    note: str | None = None
    cpu: dict = field(default_factory=dict)
    """CPU-seconds per process role in the steady window (pipeline and bare points), from benchmarks.cpu_use."""

    @property
    def steady_s(self) -> float:
        return max(self.wall_s - self.startup_s, 1e-9)

    @property
    def tokens_per_s(self) -> float:
        """Steady throughput: tokens over the time after the first engine was ready."""
        return self.tokens / self.steady_s if self.ok else 0.0

    @property
    def e2e_tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.ok and self.wall_s > 0 else 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def engine_busy(self) -> float | None:
        """Share of the steady window the engines spent computing."""
        embed = self.stages.get("embed_s")
        return embed / (self.steady_s * self.engines) if embed is not None else None

    @property
    def tokens_match(self) -> bool:
        return self.tokens == self.engine_tokens


def efficiency(point: Point, bare: Point | None, engine_devices: int = 1) -> float | None:
    """Steady tokens/s over the bare engine's, times the engines that have a device each (on a CPU the
    engines share the cores, so one bare engine is the whole machine's ceiling)."""
    if bare is None or not bare.ok or not point.ok or bare.tokens_per_s == 0:
        return None
    return point.tokens_per_s / (bare.tokens_per_s * max(1, min(point.engines, engine_devices)))


def mfu(point: Point, flops_token: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation of the engines while the run was steady."""
    if not peak or not point.ok:
        return None
    return point.tokens_per_s * flops_token / (peak * 1e12 * point.engines)


def best(points: Sequence[Point]) -> Point | None:
    ok = [p for p in points if p.ok]
    return max(ok, key=lambda p: p.tokens_per_s) if ok else None


def spread(points: Sequence[Point]) -> float:
    rates = [p.tokens_per_s for p in points if p.ok]
    return max(rates) / min(rates) - 1 if len(rates) > 1 and min(rates) > 0 else 0.0


def diagnose(sweep: Sequence[Point], bare_for: Callable[[Point], Point | None], engine_devices: int = 1) -> str:
    """Engine-bound, feed-bound or bound outside the engine, with the numbers that say so."""
    ok = [p for p in sweep if p.ok]
    if not ok:
        return "no pipeline point finished: " + "; ".join(p.error or "" for p in sweep)
    budgets = [p.params["max_num_batched_tokens"] for p in ok]
    rates = ", ".join(f"{p.tokens_per_s:,.0f}" for p in ok)
    flat = spread(ok)
    vary = f"tokens/s {rates} at budgets {', '.join(f'{b:,}' for b in budgets)} (spread {flat:.1%})"
    busy = min(p.engine_busy or 0.0 for p in ok)
    effs = [e for e in (efficiency(p, bare_for(p), engine_devices) for p in ok) if e is not None]
    eff_range = f"{min(effs):.2f}" if effs and f"{min(effs):.2f}" == f"{max(effs):.2f}" else None
    eff_range = eff_range or (f"{min(effs):.2f}-{max(effs):.2f}" if effs else None)
    eff_text = f"; efficiency {eff_range} of the bare engine" if eff_range else ""
    startup = max(p.startup_s / p.wall_s for p in ok)
    tail = f"; start-up is up to {startup:.0%} of the wall time" if startup >= 0.2 else ""
    if busy < ENGINE_BUSY_FLOOR:
        worst = min(ok, key=lambda p: p.engine_busy or 0.0)
        outside = {k: worst.stages.get(k, 0.0) for k in ("wait_s", "read_s", "parse_s", "chunk_s", "write_s")}
        key = max(outside, key=outside.get)
        return (
            f"bound outside the engine: engines busy only {busy:.0%} of the steady window; the largest other time "
            f"is {STAGE_LABELS[key]} ({outside[key]:.1f} s in {worst.label}); {vary}{eff_text}{tail}"
        )
    fed = [p.tokens_per_call or 0.0 for p in ok]
    if max(fed) < min(budgets):
        return (
            f"feed-bound: engines got at most {max(fed):,.0f} tokens per call, below the smallest budget "
            f"{min(budgets):,}, so the budget cannot matter; raise run.batch_rows; {vary}{eff_text}{tail}"
        )
    verdict = (
        "the forward pass is already saturated at the smallest budget (compute-bound); a larger budget only "
        "adds activation memory"
        if flat < FLAT_SPREAD
        else f"the budget matters: best at {best(ok).params['max_num_batched_tokens']:,}"
    )
    return (
        f"engine-bound: engines busy {busy:.0%} of the steady window with {min(fed):,.0f}+ tokens per call; "
        f"{vary}: {verdict}{eff_text}{_engine_speed(ok, bare_for)}{tail}"
    )


def _engine_speed(points: Sequence[Point], bare_for: Callable[[Point], Point | None]) -> str:
    """When the engines were busy all along, what is left is how fast they computed compared with the bare one."""
    ratios = []
    for p in points:
        bare, embed = bare_for(p), p.stages.get("embed_s")
        if bare and bare.ok and embed and p.engines == 1:
            ratios.append((p.engine_tokens / embed) / bare.tokens_per_s)
    if not ratios or min(ratios) >= 1 - FLAT_SPREAD:
        return ""
    return (
        f"; inside the pipeline the engine itself computed at {min(ratios):.2f}-{max(ratios):.2f} of the bare "
        "engine's speed: the remaining gap is CPU the engine shares with the other processes (Ray, the driver)"
    )
