"""A run's answer to SIGTERM (a preemptible instance's notice, Kubernetes deleting the pod): stop taking work,
finish the commit in progress, and end the run as interrupted, so the next scheduled run resumes at once instead of
waiting for a dead run's lock to expire. No ray or vllm imports."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.errors import RunInterrupted


class Interrupt:
    """Set by SIGTERM. Outside a commit the signal ends the wait for the next group at once; during one, the
    commit finishes first and `check` ends the run after it."""

    def __init__(self):
        self.reason: str | None = None
        self._committing = False

    def handle(self, signum: int, _frame=None) -> None:
        self.reason = f"{signal.Signals(signum).name} (the driver was asked to stop)"
        if not self._committing:
            raise RunInterrupted(self.reason)

    @contextmanager
    def committing(self) -> Iterator[None]:
        self._committing = True
        try:
            yield
        finally:
            self._committing = False
        self.check()

    def check(self) -> None:
        if self.reason is not None:
            raise RunInterrupted(self.reason)


@contextmanager
def on_sigterm() -> Iterator[Interrupt]:
    """SIGTERM handled by an Interrupt while the block runs (only the main thread can take signals)."""
    interrupt = Interrupt()
    if threading.current_thread() is not threading.main_thread():
        yield interrupt
        return
    previous = signal.signal(signal.SIGTERM, interrupt.handle)
    try:
        yield interrupt
    finally:
        signal.signal(signal.SIGTERM, previous)
