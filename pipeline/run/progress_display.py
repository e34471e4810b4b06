"""The run's live progress for a person: on a terminal one line redrawn every second (documents and chunks done
of the total, tokens/s, a token-based ETA); off a terminal one JSON progress record every `every_s`. It reads
counts through callables, so it needs no Ray."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

import structlog

from pipeline.log import set_live_line
from pipeline.run.progress import Progress, Rate, eta_s, progress_line

log = structlog.get_logger()


class ProgressDisplay:
    def __init__(
        self,
        board: Callable[[], dict[str, int]],
        written: Callable[[], dict[str, int]],
        tty: bool | None = None,
        every_s: float = 15.0,
        stream: TextIO | None = None,
    ):
        self.board = board
        self.written = written
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every_s = 1.0 if self.tty else every_s
        self.rate = Rate()
        self.started = time.perf_counter()
        self.last_line = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress-display", daemon=True)

    def __enter__(self) -> ProgressDisplay:
        if self.tty:
            set_live_line(lambda: self.last_line)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        set_live_line(None)
        if self.tty and self.last_line:
            self.stream.write("\r\x1b[2K" + self.last_line + "\n")
            self.stream.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.tick()

    def snapshot(self) -> Progress:
        progress = Progress()
        try:
            progress.add(self.board())
        except Exception:  # the board is a convenience: a run never fails for its display
            log.debug("progress_board_unreachable", exc_info=True)
        progress.add(self.written())
        return progress

    def tick(self) -> None:
        now = time.perf_counter()
        progress = self.snapshot()
        self.rate.observe(now, progress.tokens_embedded)
        rate = self.rate.tokens_per_s()
        elapsed = now - self.started
        if self.tty:
            self.last_line = progress_line(progress, elapsed, rate)
            self.stream.write("\r\x1b[2K" + self.last_line)
            self.stream.flush()
            return
        eta = eta_s(progress, rate)
        log.info(
            "progress",
            docs=progress.docs_chunked,
            docs_planned=progress.docs_planned,
            chunks=progress.chunks_embedded,
            tokens=progress.tokens_embedded,
            tokens_expected=progress.tokens_expected(),
            chunks_written=progress.chunks_written,
            rejected=progress.rejected,
            unchanged=progress.unchanged,
            elapsed_s=round(elapsed, 1),
            tokens_per_s=round(rate) if rate else None,
            eta_s=round(eta, 1) if eta is not None else None,
        )
