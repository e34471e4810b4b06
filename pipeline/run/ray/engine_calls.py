"""What a feeder knows of the engines, so that no engine can hold a batch forever: which engine it tries first and
which next, which are down for a while (restarting, their node lost) or gone, how fast each has answered, and how
long a call may take before the engine counts as hung. Pure: no ray, vllm or torch imports."""

from __future__ import annotations

from dataclasses import dataclass, field

CALL_SLACK = 10.0
"""A call may take this many times what its tokens take at the engine's rate so far before it counts as hung."""
DOWN_FOR_S = 10.0
"""How long a feeder leaves an engine that could not take a call (restarting, unreachable) before trying it again."""
RATE_WEIGHT = 0.3
"""Weight of the newest call in an engine's running rate."""


@dataclass
class EngineRoster:
    """One feeder's view of the run's engines (by index)."""

    engines: int
    first: int
    floor_s: float
    """Least time a call may take before it counts as hung (run.engine_call_timeout_s)."""
    start_allowance_s: float
    """More time for a call to an engine that has not answered since it (re)started (run.engine_start_timeout_s)."""
    rate: dict[int, float] = field(default_factory=dict)
    """Tokens per second each engine embedded, as this feeder saw them."""
    answering: set[int] = field(default_factory=set)
    """Engines that have answered since they last (re)started, as far as this feeder knows; of any other, the
    feeder asks the supervisor first whether it is starting, ready, unavailable or lost."""
    down_until: dict[int, float] = field(default_factory=dict)
    gone: set[int] = field(default_factory=set)

    def order(self, now: float) -> list[int]:
        """The engines to try for the next batch: this feeder's own first, then the others in turn; none that is gone
        or down for a while yet."""
        ring = [(self.first + k) % self.engines for k in range(self.engines)]
        return [i for i in ring if i not in self.gone and self.down_until.get(i, 0.0) <= now]

    def bound_s(self, index: int, tokens: int, starting: bool = False) -> float:
        """How long a call of `tokens` tokens to engine `index` may take before it counts as hung; a `starting`
        engine (loading its model) gets the start allowance on top."""
        rate = self.rate.get(index)
        work = CALL_SLACK * tokens / rate if rate else 0.0
        return self.floor_s + work + (self.start_allowance_s if starting else 0.0)

    def answered(self, index: int, tokens: int, seconds: float) -> None:
        self.answering.add(index)
        self.down_until.pop(index, None)
        if tokens and seconds > 0:
            seen = tokens / seconds
            old = self.rate.get(index)
            self.rate[index] = seen if old is None else (1 - RATE_WEIGHT) * old + RATE_WEIGHT * seen

    def unavailable(self, index: int, now: float) -> None:
        """The engine could not take a call (restarting, its node lost): others take the batch; it is tried again
        later."""
        self.answering.discard(index)
        self.down_until[index] = now + DOWN_FOR_S

    def restarting(self, index: int) -> None:
        """The engine is (re)starting: the supervisor is asked about it before its next call."""
        self.answering.discard(index)

    def lost(self, index: int) -> None:
        """The engine died for good (Ray will not restart it again)."""
        self.gone.add(index)
        self.answering.discard(index)

    @property
    def all_gone(self) -> bool:
        return len(self.gone) == self.engines

    def next_try_s(self, now: float) -> float:
        """Seconds until an engine that is down may be tried again."""
        waits = [t - now for i, t in self.down_until.items() if i not in self.gone]
        return max(0.0, min(waits, default=0.0))
