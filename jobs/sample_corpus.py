"""python -m jobs.sample_corpus [--out data/sample] [--all]: write a corpus made from Python's own docs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.sample_corpus import DEFAULT_MODULES, all_stdlib_modules, write_corpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.sample_corpus", description=__doc__)
    parser.add_argument("--out", default="data/sample", help="output directory")
    parser.add_argument("--all", action="store_true", help="every standard-library module, jsonl shards only")
    parser.add_argument("--max-chars", type=int, default=6000, help="longest document, in characters")
    args = parser.parse_args(argv)
    modules = all_stdlib_modules() if args.all else list(DEFAULT_MODULES)
    counts = write_corpus(Path(args.out), modules, args.max_chars, jsonl_only=args.all)
    print(f"wrote {counts} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
