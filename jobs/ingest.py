"""python -m jobs.ingest --config conf/local.toml [--dry-run] [--<section>.<field> VALUE ...]"""

from __future__ import annotations

import argparse
import sys

import structlog

from pipeline.errors import ConfigError, PipelineError, StoreBusyError
from pipeline.log import configure_logging
from pipeline.settings import load_settings

log = structlog.get_logger("jobs.ingest")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.ingest",
        description="Embed document shards into LanceDB. Any setting can be overridden as --section.field VALUE "
        "(e.g. --model.max-model-len 2024, --chunk-tokens 2000, --inputs 'data/*.jsonl', --db /tmp/lancedb).",
    )
    parser.add_argument("--config", help="TOML settings file, e.g. conf/local.toml")
    parser.add_argument("--dry-run", action="store_true", help="resolve settings and list shards, then exit")
    args, overrides = parser.parse_known_args(argv)
    try:
        settings = load_settings(args.config, overrides)
        configure_logging(settings.logging.level, settings.logging.json_format)
        log.info("settings_resolved", settings=settings.model_dump(mode="json"))
        if args.dry_run:
            return _dry_run(settings)
        from pipeline.ingest import run_ingest

        result = run_ingest(settings)
    except (ConfigError, StoreBusyError) as exc:  # refused before any work started
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for line in result.maintenance.lines() if result.maintenance else []:
        print(line)
    print(result.summary_line())
    return 0


def _dry_run(settings) -> int:
    from pipeline.ingest import preflight

    lengths, _, shards = preflight(settings)
    for note in lengths.notes:
        print(f"note: {note}")
    print(
        f"{len(shards)} shards; model {lengths.model_id} ({lengths.model_dir}); max_model_len "
        f"{lengths.max_model_len}; chunk tokens {lengths.chunk.max_tokens}, overlap {lengths.chunk.overlap_tokens}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
