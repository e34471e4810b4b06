"""The one place structlog is configured. Called by jobs and by every Ray actor (each is its own process)."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(level: str = "INFO", json_format: bool | None = None) -> None:
    """Set up structlog: JSON lines when not on a terminal (or when asked), readable lines on a terminal."""
    if json_format is None:
        json_format = not sys.stderr.isatty()
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


class _StderrLoggerFactory:
    """Loggers that write to whatever sys.stderr is at the time of the call (test runners swap it)."""

    def __call__(self, *args) -> structlog.PrintLogger:
        return structlog.PrintLogger(file=sys.stderr)
