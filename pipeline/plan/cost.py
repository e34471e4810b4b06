"""What a run cost: the engines' time, how busy they were, the device-hours they held and, with a price you set,
the money. Plain arithmetic on the run's own figures. No ray or vllm imports."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pipeline.plan.compute import flops_per_token
from pipeline.plan.model_params import ModelShape


@dataclass(frozen=True)
class RunCost:
    engines: int
    engine_s: float
    """Seconds the engines were held: engines x the run's wall time (what a cluster pays for)."""
    engine_busy: float | None
    """Share of engine_s the engines spent computing (their busy seconds over engine_s)."""
    tokens_per_engine_s: float | None
    """Tokens embedded per engine-second held."""
    device_hours: float
    """GPU-hours on GPUs (each engine's share of its GPUs); node-hours on CPU nodes."""
    mfu: float | None
    """Model FLOPs utilization of the devices held: tokens x FLOPs per token over device-seconds x peak (GPUs whose
    16-bit peak is known; None on CPUs)."""
    cost: float | None
    """device_hours x run.device_hour_price (None without a price)."""
    cost_per_million_tokens: float | None

    def columns(self) -> dict:
        values = asdict(self)
        values.pop("engines")
        return values

    def summary(self) -> str:
        busy = f", busy {self.engine_busy:.0%}" if self.engine_busy is not None else ""
        mfu = f", MFU {self.mfu:.1%}" if self.mfu is not None else ""
        money = (
            f"; cost {self.cost:,.4g} ({self.cost_per_million_tokens:,.4g} per million tokens)"
            if self.cost is not None and self.cost_per_million_tokens is not None
            else ""
        )
        held = f"engines {self.engines} x {self.engine_s / max(self.engines, 1):,.1f} s"
        return f"{held}{busy}{mfu}, {self.device_hours:.4g} device-hours{money}"


def run_cost(  # noqa: PLR0913 - the run's figures, each from its own record
    *,
    engines: int,
    wall_s: float,
    busy_s: float,
    tokens: int,
    chunks: int,
    devices_per_engine: float,
    shape: ModelShape | None = None,
    peak_tflops: float | None = None,
    price: float | None = None,
) -> RunCost:
    """The run's cost from its wall time, the engines' busy seconds, what it embedded and what each engine held
    (`devices_per_engine`: GPUs, or the share of a node on CPUs). FLOPs per token are the planner's, at the run's
    mean chunk length."""
    engine_s = engines * wall_s
    device_s = engine_s * devices_per_engine
    mfu = None
    if peak_tflops and shape is not None and device_s > 0 and chunks:
        mfu = tokens * flops_per_token(shape, [max(1, round(tokens / chunks))]) / (device_s * peak_tflops * 1e12)
    device_hours = device_s / 3600
    cost = device_hours * price if price is not None else None
    return RunCost(
        engines=engines,
        engine_s=engine_s,
        engine_busy=busy_s / engine_s if engine_s > 0 else None,
        tokens_per_engine_s=tokens / engine_s if engine_s > 0 else None,
        device_hours=device_hours,
        mfu=mfu,
        cost=cost,
        cost_per_million_tokens=cost / tokens * 1e6 if cost is not None and tokens else None,
    )
