"""python -m jobs.index --config conf/local.toml [--force-ann] [--index.ann-min-rows N] [--maintenance.enabled false]

Build the chunks table's indexes (ANN on the vectors once the table is large enough, full text on the chunk
text, B-trees on the keys), fold new rows into existing ones, compact and remove old versions, all under the
store's lock, as an ingestion run does at its end. Records a row in `runs` with kind 'index'."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from datetime import datetime, timezone

from jobs.common import parse, run
from pipeline.records import RunRecord
from pipeline.schema import RUN_KIND_INDEX, RunStatus
from pipeline.store.built_with import read_built_with
from pipeline.store.lance_store import LanceStore
from pipeline.store.locks import settings_lock
from pipeline.store.maintenance import maintain_store
from pipeline.store.runs import RunLog, new_run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.index", description=__doc__)
    parser.add_argument(
        "--force-ann", action="store_true", help="build the ANN index even below index.ann_min_rows (>= 256 rows)"
    )
    return run(lambda: _index(parser, argv))


def _index(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    args, settings = parse(parser, argv)
    store = LanceStore.from_settings(settings.store)
    run_id, started_at = new_run_id(), datetime.now(timezone.utc)
    with settings_lock(settings.store, run_id, settings.run.lock_ttl_s) as exclusive:
        built = read_built_with(store)
        record = RunRecord(
            run_id=run_id, kind=RUN_KIND_INDEX, started_at=started_at, status=RunStatus.RUNNING, model=built.model_id
        )
        with RunLog(store).recorded(record) as row:
            report = maintain_store(
                store,
                settings.index,
                settings.maintenance,
                built.similarity,
                exclusive,
                args.force_ann,
                settings.store,
            )
            row.status = RunStatus.SUCCEEDED
            row.finishing.append(lambda r: replace(r, maintenance=report.to_json(), maintenance_s=report.seconds))
    print("\n".join(report.lines()))
    print(f"Indexing and maintenance took {report.seconds:.2f} s (run {run_id})")
    if report.refused:
        print(f"error: {report.refused}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
