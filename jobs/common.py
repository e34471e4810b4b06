"""What the jobs share: settings from --config and flags, exit codes, a clean stdout, the table to search."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pipeline.errors import PipelineError, Refusal
from pipeline.log import configure_logging
from pipeline.settings import Settings, load_settings

EXIT_FAILED, EXIT_REFUSED = 1, 2
"""A job that started and failed; settings, input or store refused before any work (the message says what to
change). 0 is done."""


def parse(
    parser: argparse.ArgumentParser, argv: list[str] | None, forward: tuple[str, ...] = ()
) -> tuple[argparse.Namespace, Settings]:
    """Job arguments, and the settings from --config plus any --section.field VALUE flags left over; the
    settings shortcuts named in `forward` (e.g. "--db"), which the job's parser declares, are passed on too."""
    parser.add_argument("--config", help="TOML settings file, e.g. conf/local.toml (the one the table was made with)")
    args, overrides = parser.parse_known_args(argv)
    for flag in forward:
        value = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if value is not None:
            overrides.append(f"{flag}={value}")
    settings = load_settings(args.config, overrides)
    configure_logging(settings.logging.level, settings.logging.json_format)
    return args, settings


def run(main: Callable[[], int]) -> int:
    """Run a job body; a refusal exits 2 and a failure 1, each with a one-line message on stderr."""
    try:
        return main()
    except Refusal as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


@contextmanager
def results_only_on_stdout() -> Iterator[Callable[[str], None]]:
    """Send everything written to stdout (vLLM logs there, C extensions print there) to stderr for the
    duration, and yield the one writer that reaches the real stdout, so --json output stays parseable."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with os.fdopen(os.dup(saved), "w") as out:

            def emit(text: str) -> None:
                out.write(text + "\n")
                out.flush()

            yield emit
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
