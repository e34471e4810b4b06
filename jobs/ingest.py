"""python -m jobs.ingest --config conf/local.toml [--dry-run] [--<section>.<field> VALUE ...]"""

from __future__ import annotations

import argparse
import os
import sys

import structlog

from jobs.common import parse, run
from pipeline.log import json_lines

log = structlog.get_logger("jobs.ingest")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.ingest",
        description="Embed document shards into LanceDB. Any setting can be overridden as --section.field VALUE "
        "(e.g. --model.max-model-len 2024, --chunk-tokens 2000, --inputs 'data/*.jsonl', --db /tmp/lancedb).",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="resolve the settings, list the shards and plan the engines and their memory on the cluster RAY_ADDRESS "
        "names (else this machine), starting nothing; then exit",
    )
    parser.add_argument(
        "--estimate",
        action="store_true",
        help="run the read, plan and chunk stages without engines and print what the run would embed (exact tokens "
        "per fate), the chunk lengths, and the projected time and cost; writes nothing",
    )
    parser.add_argument(
        "--sample",
        type=float,
        metavar="FRACTION",
        help="with --estimate: read and chunk a seeded sample of the input's pieces (files, or parts of large ones)",
    )
    parser.add_argument("--seed", type=int, default=0, help="with --sample: the sample's seed")
    return run(lambda: _ingest(parser, argv))


def _ingest(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    args, settings = parse(parser, argv)
    # a record for schedulers' logs; a person on a terminal finds the same in the runs row
    record = log.info if json_lines(settings.logging.json_format) else log.debug
    record("settings_resolved", settings=settings.model_dump(mode="json"))
    if args.dry_run:
        return _dry_run(settings)
    if args.estimate:
        return _estimate(settings, args.sample, args.seed)
    from pipeline.run.ingest import run_ingest

    result = run_ingest(settings)
    for line in result.maintenance.lines() if result.maintenance else []:
        print(line)
    print(result.summary_line())
    refused = result.maintenance.refused if result.maintenance else None
    if refused:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    return 0


def _estimate(settings, fraction: float | None, seed: int) -> int:
    from pipeline.errors import ConfigError
    from pipeline.plan.estimate import Sample
    from pipeline.run.estimate import run_estimate

    if fraction is not None and not 0 < fraction <= 1:
        msg = f"--sample {fraction} is not a fraction of the input: give one in (0, 1], e.g. --sample 0.1"
        raise ConfigError(msg)
    estimate = run_estimate(settings, Sample(fraction, seed) if fraction is not None and fraction < 1 else None)
    print("\n".join(estimate.lines()))
    return 0


def _dry_run(settings) -> int:
    from pipeline.run.dry_run import dry_run
    from pipeline.run.executors import planning_executor

    where = "the cluster RAY_ADDRESS names" if os.environ.get("RAY_ADDRESS") else "this machine as a local Ray sees it"
    _, lines = dry_run(settings, planning_executor(), where)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
