"""The embed stage's feeders: each hands its batches to an engine actor, at most a bound per call, and to another
engine when one cannot take it."""

from __future__ import annotations

import os
import time

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError, RayError

from pipeline import schema as s
from pipeline.errors import EngineError
from pipeline.run.ray.engine_calls import EngineRoster
from pipeline.run.ray.supervisor import CONTROL_TIMEOUT_S, HUNG_PREFIX
from pipeline.settings import RunSettings
from pipeline.stages.embed import has_chunks, passed_through

ENGINE_ENV = "EMBEDPIPE_ENGINE_INDEX"
"""Environment variable naming the engine actor an embed-stage feeder sends its batches to first."""
RETRY_WAIT_S = 2.0


class EngineFeeder:
    """Ray Data's embed stage: hands each batch to an engine actor and waits for the vectors, at most a bound from
    its tokens and the engine's rate (run.engine_call_timeout_s, plus run.engine_start_timeout_s while the engine
    starts). Its own engine (the one its ENGINE_ENV names) first; an engine that cannot take the call (restarting,
    its node lost) or hung (the supervisor restarts it) leaves the batch to the others. Two calls at a time, so the
    engine finds its next batch queued when it finishes one. A batch with nothing to embed (unchanged documents,
    rejects) passes without an engine where the table's vector dimension is known, so a run that embeds nothing
    does not wait for one."""

    def __init__(self, engines: list, dim: int | None = None, supervisor=None, run: RunSettings | None = None):
        run = run or RunSettings()
        self.engines = engines
        self.dim = dim
        self.supervisor = supervisor
        self.min_engines = run.min_engines
        first = int(os.environ.get(ENGINE_ENV, "0")) % len(engines)
        self.roster = EngineRoster(len(engines), first, run.engine_call_timeout_s, run.engine_start_timeout_s)
        self.hope = time.monotonic()
        """When an engine last answered or was seen starting: the feeder gives up only long after that."""

    @property
    def engine(self):
        return self.engines[self.roster.first]

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.dim is not None and not has_chunks(batch):
            return passed_through(batch, self.dim)
        tokens = int(pc.sum(batch.column(s.N_TOKENS)).as_py() or 0)
        patience = self.roster.start_allowance_s + self.roster.floor_s
        while True:
            for index in self.roster.order(time.monotonic()):
                out = self._try(index, batch, tokens)
                if out is not None:
                    return out
            if len(self.roster.gone) > self.roster.engines - self.min_engines:
                raise EngineError(self._why_too_few())
            if time.monotonic() - self.hope > patience:
                msg = (
                    f"no engine answered or started for {patience:g} s (run.engine_start_timeout_s + "
                    f"run.engine_call_timeout_s): engines lost {sorted(self.roster.gone)}, the others unreachable "
                    f"(see `ray status`)"
                )
                raise EngineError(msg)
            time.sleep(max(RETRY_WAIT_S, self.roster.next_try_s(time.monotonic())))

    def _try(self, index: int, batch: pa.Table, tokens: int) -> pa.Table | None:
        """The vectors from engine `index`, or None when it could not give them (the roster says why)."""
        starting = False
        if index not in self.roster.answering:
            state = self._ask("state", index, default="starting")
            if state in ("lost", "unavailable"):
                self._leave(index, state)
                return None
            starting = state == "starting"
        submitted_at, started = time.time(), time.monotonic()
        # No retries by Ray on the same engine: a batch an engine cannot take goes to another one instead.
        ref = self.engines[index].embed.options(max_task_retries=0).remote(batch)
        wait_s = self.roster.bound_s(index, tokens, starting)
        while True:
            try:
                out = ray.get(ref, timeout=wait_s)
                break
            except GetTimeoutError:
                verdict = self._verdict(index, submitted_at, self.roster.bound_s(index, tokens))
                if verdict != "starting":
                    self._leave(index, verdict)
                    return None
                self.hope, wait_s = time.monotonic(), self.roster.bound_s(index, tokens)
            except RayActorError as exc:  # its process died (a failed engine exits), restarting, or its node lost
                gone = self._ask("lost", index, default=isinstance(exc, ActorDiedError))
                self._leave(index, "lost" if gone else "unavailable")
                return None
        self.roster.answered(index, tokens, time.monotonic() - started)
        self.hope = time.monotonic()
        return out

    def _verdict(self, index: int, submitted_at: float, bound_s: float) -> str:
        if self.supervisor is None:
            return "unavailable"
        verdict = ray.get(self.supervisor.hung.remote(index, submitted_at, bound_s), timeout=CONTROL_TIMEOUT_S * 3)
        if verdict.startswith(HUNG_PREFIX):
            raise EngineError(verdict.removeprefix(HUNG_PREFIX))
        return verdict

    def _leave(self, index: int, why: str) -> None:
        if why == "lost":
            self.roster.lost(index)
        elif why == "restarted":
            self.roster.restarting(index)
            self.hope = time.monotonic()
        else:
            self.roster.unavailable(index, time.monotonic())

    def _why_too_few(self) -> str:
        """The supervisor's verdict (the first failure's message and what was lost), or what this feeder saw."""
        told = None
        if self.supervisor is not None:
            try:
                told = ray.get(self.supervisor.verdict.remote(self.min_engines), timeout=CONTROL_TIMEOUT_S * 6)
            except RayError:
                told = None
        return told or (
            f"{len(self.roster.gone)} of {self.roster.engines} engines lost (their nodes died or Ray gave up "
            f"restarting them; run.min_engines={self.min_engines}): {sorted(self.roster.gone)}"
        )

    def _ask(self, question: str, index: int, default):
        """The supervisor's answer about engine `index` (`default` when there is none or it cannot say)."""
        if self.supervisor is None:
            return default
        try:
            return ray.get(getattr(self.supervisor, question).remote(index), timeout=CONTROL_TIMEOUT_S * 2)
        except RayError:
            return default
