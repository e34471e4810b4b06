"""python -m benchmarks.bench --config conf/bench.toml [--budgets '[8192,16192]'] [--<section>.<field> VALUE ...]"""

from __future__ import annotations

import argparse
import sys

from jobs.common import parse, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench",
        description="Run the pipeline at every point of a max_num_batched_tokens sweep and the baselines (bare "
        "LLM.embed, vLLM server + HTTP client, Ray Data LLM) on the same chunks; write a report and a `bench` "
        "table. Settings as for jobs.ingest, plus the [bench] section (e.g. --budgets '[8192,16192]').",
    )
    return run(lambda: _bench(parser, argv))


def _bench(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    from benchmarks.settings import BenchJobSettings

    _, settings = parse(parser, argv, settings_cls=BenchJobSettings)
    from benchmarks.report import diagnoses, write_outputs
    from benchmarks.runner import run_bench

    result = run_bench(settings)
    report = write_outputs(result)
    for text in diagnoses(result).values():
        print(f"diagnosis: {text}")
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
