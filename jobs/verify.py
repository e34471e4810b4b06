"""python -m jobs.verify [--config conf/local.toml] [--db lancedb] [--table-prefix P] [--sample N]: check the
latest run's table.

Re-embeds a sample of chunks from their stored text with a plain transformers forward pass, compares with
the stored vectors, checks chunk limits, self-retrieval, and that runs/batches/chunks/rejects add up. The store
(and its storage options, for an object store) comes from --config, --db and --table-prefix as in jobs.ingest.
"""

from __future__ import annotations

import argparse
import sys

from jobs.common import EXIT_FAILED, parse, run
from pipeline.checks.verify import verify_run
from pipeline.store.lance_store import LanceStore

SHORTCUTS = ("--db", "--table-prefix")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.verify", description=__doc__)
    for flag in SHORTCUTS:
        parser.add_argument(flag, help="as in jobs.ingest")
    parser.add_argument("--sample", type=int, default=50, help="chunks to re-embed")
    parser.add_argument("--model-dir", help="model directory, if not the one the run recorded")
    parser.add_argument("--min-cosine", type=float, default=0.999)
    return run(lambda: _verify(parser, argv))


def _verify(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    args, settings = parse(parser, argv, SHORTCUTS)
    report = verify_run(LanceStore.from_settings(settings.store), args.sample, model_dir=args.model_dir)
    print("\n".join(report.lines()))
    ok = report.ok(args.min_cosine)
    print("verify: ok" if ok else "verify: FAILED")
    return 0 if ok else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
