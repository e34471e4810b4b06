"""python -m jobs.verify [--db lancedb] [--table-prefix P] [--sample N]: check the latest run's table.

Re-embeds a sample of chunks from their stored text with a plain transformers forward pass, compares with
the stored vectors, checks chunk limits, self-retrieval, and that runs/batches/chunks/rejects add up.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.io.lance_store import LanceStore
from pipeline.verify import verify_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.verify", description=__doc__)
    parser.add_argument("--db", default="lancedb", help="LanceDB URI")
    parser.add_argument("--table-prefix", default="")
    parser.add_argument("--sample", type=int, default=50, help="chunks to re-embed")
    parser.add_argument("--model-dir", help="model directory, if not the one the run recorded")
    parser.add_argument("--min-cosine", type=float, default=0.999)
    args = parser.parse_args(argv)
    report = verify_run(LanceStore(args.db, args.table_prefix), args.sample, model_dir=args.model_dir)
    print("\n".join(report.lines()))
    ok = (
        report.min_cosine >= args.min_cosine
        and report.over_limit == 0
        and report.accounting_ok
        and report.self_found_first == report.checked
    )
    print("verify: ok" if ok else "verify: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
