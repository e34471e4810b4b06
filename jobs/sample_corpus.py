"""python -m jobs.sample_corpus [--out data/sample] [--all | --packages]: write a corpus made from Python's own
docs, or (--packages) from the installed packages' READMEs, one markdown file each."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs.common import run
from pipeline.sample_corpus import (
    DEFAULT_MODULES,
    all_stdlib_modules,
    package_documents,
    write_corpus,
    write_text_files,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.sample_corpus", description=__doc__)
    parser.add_argument("--out", default="data/sample", help="output directory")
    parser.add_argument("--all", action="store_true", help="every standard-library module, jsonl shards only")
    parser.add_argument(
        "--packages", action="store_true", help="the installed packages' long descriptions, markdown files only"
    )
    parser.add_argument("--max-chars", type=int, default=6000, help="longest document, in characters")
    args = parser.parse_args(argv)
    return run(lambda: _write(args))


def _write(args: argparse.Namespace) -> int:
    if args.packages:
        written = write_text_files(Path(args.out), list(package_documents(args.max_chars)))
        print(f"wrote {written} markdown files to {args.out}")
        return 0
    modules = all_stdlib_modules() if args.all else list(DEFAULT_MODULES)
    counts = write_corpus(Path(args.out), modules, args.max_chars, jsonl_only=args.all)
    print(f"wrote {counts} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
