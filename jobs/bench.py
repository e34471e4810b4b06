"""python -m jobs.bench --config conf/bench.toml [--budgets '[8192,16192]'] [--<section>.<field> VALUE ...]"""

from __future__ import annotations

import argparse
import sys

import structlog

from pipeline.errors import ConfigError, PipelineError, StoreBusyError
from pipeline.log import configure_logging
from pipeline.settings import load_settings

log = structlog.get_logger("jobs.bench")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.bench",
        description="Run the pipeline at every point of a max_num_batched_tokens sweep and the baselines (bare "
        "LLM.embed, vLLM server + HTTP client, Ray Data LLM) on the same chunks; write a report and a `bench` "
        "table. Settings as for jobs.ingest, plus the [bench] section (e.g. --budgets '[8192,16192]').",
    )
    parser.add_argument("--config", help="TOML settings file, e.g. conf/bench.toml")
    args, overrides = parser.parse_known_args(argv)
    try:
        settings = load_settings(args.config, overrides)
        configure_logging(settings.logging.level, settings.logging.json_format)
        from pipeline.bench.report import diagnoses, write_outputs
        from pipeline.bench.runner import run_bench

        result = run_bench(settings)
        report = write_outputs(result)
    except (ConfigError, StoreBusyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for text in diagnoses(result).values():
        print(f"diagnosis: {text}")
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
