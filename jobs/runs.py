"""python -m jobs.runs [--config conf/local.toml] [--db lancedb] [--table-prefix P] [--limit N] [--json]
[--html OUT]: the recent runs of a store.

A table of the newest runs (status, fates, tokens, tokens/s, engines' busy share, cost, error); `--json` prints
them for scripts; `--html OUT` writes a one-page report to open in a browser: tokens/s over the newest run and per
engine, its stages' busy time and fates, and the history of recent runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jobs.common import parse, run
from pipeline.checks.run_report import as_json, recent_runs, render_html, render_table, run_batches
from pipeline.store.lance_store import LanceStore

SHORTCUTS = ("--db", "--table-prefix")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.runs", description=__doc__)
    for flag in SHORTCUTS:
        parser.add_argument(flag, help="as in jobs.ingest")
    parser.add_argument("--limit", type=int, default=20, help="runs to show, newest first")
    parser.add_argument("--json", action="store_true", help="one JSON array of the runs, for scripts")
    parser.add_argument("--html", metavar="OUT", help="write the one-page report to this file")
    return run(lambda: _runs(parser, argv))


def _runs(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    args, settings = parse(parser, argv, SHORTCUTS)
    store = LanceStore.from_settings(settings.store)
    rows = recent_runs(store, args.limit)
    if args.html:
        batches = run_batches(store, rows[0]["run_id"]) if rows else None
        Path(args.html).write_text(render_html(rows, batches))
        print(f"wrote {args.html} ({len(rows)} runs)", file=sys.stderr)
    print(as_json(rows) if args.json else render_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
