"""The one place structlog is configured. Called by jobs and by every Ray actor (each is its own process)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

import structlog


def json_lines(json_format: bool | None = None) -> bool:
    """Whether logs are JSON lines: when asked, or when stderr is not a terminal."""
    return not sys.stderr.isatty() if json_format is None else json_format


def configure_logging(level: str = "INFO", json_format: bool | None = None) -> None:
    """Set up structlog: JSON lines when not on a terminal (or when asked), readable lines on a terminal."""
    json_format = json_lines(json_format)
    renderer = structlog.processors.JSONRenderer() if json_format else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks if json_format else structlog.processors.StackInfoRenderer(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=_StderrLoggerFactory(),
        cache_logger_on_first_use=False,
    )


_live_line: Callable[[], str] | None = None


def set_live_line(line: Callable[[], str] | None) -> None:
    """While a live display owns the terminal's last line, log lines are printed above it and it is redrawn."""
    global _live_line
    _live_line = line


class _StderrLogger(structlog.PrintLogger):
    def msg(self, message: str) -> None:
        line = _live_line
        if line is None:
            super().msg(message)
            return
        self._file.write("\r\x1b[2K" + message + "\n" + line())
        self._file.flush()

    log = debug = info = warn = warning = err = error = critical = exception = fatal = failure = msg


class _StderrLoggerFactory:
    """Loggers that write to whatever sys.stderr is at the time of the call (test runners swap it)."""

    def __call__(self, *args) -> structlog.PrintLogger:
        return _StderrLogger(file=sys.stderr)
