"""No engine can hold the run: the run's supervisor tells the embed stage's feeders (feeder.py) what became of an
engine (starting, ready, unavailable, lost with its node) and restarts one that hung."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict

import ray
import structlog
from ray.exceptions import RayError

from pipeline.run.ray.cluster import actor_restarts, alive_nodes

log = structlog.get_logger(__name__)

ENGINE_ENV = "EMBEDPIPE_ENGINE_INDEX"
"""Environment variable naming the engine actor an embed-stage feeder sends its batches to first."""
CONTROL_TIMEOUT_S = 10.0
"""How long the supervisor waits for an engine's control thread, and a feeder for the supervisor."""
NODE_VERDICT_S = 60.0
"""How long the run's end waits for Ray to say whether an engine that stopped answering lost its node."""
RETRY_WAIT_S = 2.0
LAST_WORDS_SHOWN = 8
HUNG_PREFIX = "end: "


@ray.remote(num_cpus=0)
class EngineSupervisor:
    """Knows when each engine last (re)started and how often, and judges an engine a feeder found slow: a call that
    waited for the engine to start gets its time from the start; an engine whose process still answers on its
    control thread but not the call is hung, and is killed so that Ray restarts it; one that hangs more than
    run.engine_hangs times ends the run with its last log lines. An engine that does not answer at all is
    restarting, or lost with its node (its bundle is pinned there, so it does not come back), and the feeders
    leave it."""

    def __init__(self, hangs: int, start_timeout_s: float):
        self.max_hangs = hangs
        self.start_timeout_s = start_timeout_s
        self.engines: list = []
        self.nodes: list[str] = []
        self.since: dict[int, tuple[str, float]] = {}
        """Per engine: 'starting' (loading its model), 'ready' or 'killed', and since when."""
        self.restarts: Counter = Counter()
        self.hangs: Counter = Counter()
        self.restart_nodes: list[str] = []
        self.judging: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.ended: dict[int, str] = {}
        """Engines that hung past run.engine_hangs, and why the run ends."""
        self.failures: list[tuple[int, str]] = []
        """Each failure an engine reported before exiting (engine index, what its engine raised), in order."""
        self.dead: set[int] = set()
        self.down: set[int] = set()
        """Engines that failed and have not started since (Ray is restarting them)."""

    async def attach(self, engines: list, nodes: list[str]) -> None:
        self.engines, self.nodes = engines, nodes

    async def starting(self, index: int, reconstructed: bool, node: str) -> None:
        self.since[index] = ("starting", time.time())
        if reconstructed:
            self.restarts[index] += 1
            self.restart_nodes.append(node)

    async def started(self, index: int) -> None:
        self.since[index] = ("ready", time.time())
        self.down.discard(index)

    async def failed(self, index: int, reason: str) -> None:
        """Engine `index`'s engine raised `reason` (at its start or on a call); its process exits next and Ray
        restarts it, up to its restarts."""
        self.failures.append((index, reason))
        self.since[index] = ("failed", time.time())
        self.down.add(index)

    async def lost(self, index: int) -> bool:
        """Whether engine `index` is gone for good: its node is gone, or Ray gave up restarting its actor."""
        return self._gone(index, alive_nodes())

    def _gone(self, index: int, alive: set[str]) -> bool:
        if index in self.dead:
            return True
        if self.nodes[index] not in alive:
            return True
        if actor_restarts(self.engines[index]._actor_id.hex()) is None:  # noqa: SLF001
            self.dead.add(index)
            log.warning("engine_lost", engine=index, failures=sum(i == index for i, _ in self.failures))
            return True
        return False

    def _all_lost(self) -> list[int]:
        alive = alive_nodes()
        return [i for i in range(len(self.engines)) if self._gone(i, alive)]

    async def verdict(self, min_engines: int) -> str | None:
        """Why the run must end, when fewer than `min_engines` engines are left: the first failure's message, and
        what was lost. None while enough are left."""
        lost = self._all_lost()
        left = len(self.engines) - len(lost)
        if left >= min_engines:
            return None
        first = self.failures[0][1] if self.failures else "engines lost with their nodes"
        return (
            f"{first} ({len(lost)} of {len(self.engines)} engines lost, {left} left, run.min_engines={min_engines}; "
            f"failures: {_counted(self.failures)})"
        )

    async def state(self, index: int) -> str:
        """'starting' (loading, or not yet begun: a call may wait for it), 'ready' (its process answers),
        'unavailable' (it does not answer: restarting, or its node is going), or 'lost' (its node is gone)."""
        if await self.lost(index):
            return "lost"
        if self.since.get(index, ("starting",))[0] in ("starting", "killed", "failed"):
            return "starting"
        return "ready" if await self._answers(index) is not None else "unavailable"

    async def hung(self, index: int, submitted_at: float, bound_s: float) -> str:
        """A feeder's call to engine `index`, submitted at `submitted_at`, outlived its bound: 'starting' (it waited
        for the engine to start and gets `bound_s` from then on), 'unavailable' or 'lost' (no answer at all),
        'restarted', or the run's end (HUNG_PREFIX and why)."""
        async with self.judging[index]:  # two feeders' calls to one hung engine make one hang
            return await self._judge(index, submitted_at, bound_s)

    async def _judge(self, index: int, submitted_at: float, bound_s: float) -> str:
        if index in self.ended:
            return self.ended[index]
        state, since = self.since.get(index, ("unknown", time.time()))
        now = time.time()
        if state == "unknown" or (state != "ready" and now - since < self.start_timeout_s):
            return "starting"
        if state == "ready" and now - max(since, submitted_at) < bound_s:
            return "starting"
        words = await self._answers(index)
        if words is None:
            return "lost" if await self.lost(index) else "unavailable"
        self.hangs[index] += 1
        if self.hangs[index] > self.max_hangs:
            lines = " | ".join(words[-LAST_WORDS_SHOWN:]) or "(nothing logged)"
            self.ended[index] = (
                f"{HUNG_PREFIX}engine {index} hung {self.hangs[index]} times (a call past its bound, the engine's "
                f"process alive; run.engine_hangs={self.max_hangs}); its last log lines: {lines}"
            )
            return self.ended[index]
        self.since[index] = ("killed", now)
        ray.kill(self.engines[index], no_restart=False)
        return "restarted"

    async def _answers(self, index: int) -> list[str] | None:
        """The engine's last log lines, from its control thread; None if its process does not answer."""
        try:
            return await asyncio.wait_for(self.engines[index].last_words.remote(), timeout=CONTROL_TIMEOUT_S)
        except (asyncio.TimeoutError, RayError):
            return None

    async def _unsettled(self, index: int) -> bool:
        """An engine the run's end waits for: one that does not answer, or whose last word was a failure (Ray is
        restarting it, and it is lost if that never succeeds), unless it is lost already."""
        if await self.lost(index):
            return False
        return index in self.down or await self.state(index) == "unavailable"

    async def report(self) -> dict:
        """Restarts, hangs, failures and lost engines. An engine that does not answer at the end, or is being
        restarted after a failure, is waited for until Ray says whether its node is gone (Ray takes some 30 s to
        declare a node dead) or whether its restarts are spent, at most NODE_VERDICT_S."""
        deadline = time.monotonic() + NODE_VERDICT_S
        for index in range(len(self.engines)):
            while await self._unsettled(index) and time.monotonic() < deadline:
                await asyncio.sleep(2.0)
        lost = self._all_lost()
        return {
            "engines_lost": len(lost),
            "engine_restarts": sum(self.restarts.values()),
            "engines_hung": sum(self.hangs.values()),
            "restarted_on": sorted(set(self.restart_nodes)),
            "engine_failures": dict(Counter(reason for _, reason in self.failures)),
        }


def _counted(failures: list[tuple[int, str]]) -> str:
    return "; ".join(f"{n}x {reason}" for reason, n in Counter(r for _, r in failures).most_common())
