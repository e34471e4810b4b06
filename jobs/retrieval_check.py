"""python -m jobs.retrieval_check --config conf/local.toml [--sample 200] [-k 10] [--seed 0] [--json]

Samples chunks from the table, embeds each chunk's own text as a query with the table's model and engine
settings, and reports recall@1 and recall@k: the fraction whose own chunk (or one with identical text) comes
back first / in the top k, by exact search and, when the table has one, through the ANN index. A broken
embedding, pooling or normalization shows up as a low number. Exits 1 when exact recall@1 is below
--min-recall-at-1."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from jobs.common import EXIT_FAILED, parse, results_only_on_stdout, run
from pipeline.checks.retrieval import check_retrieval
from pipeline.engine.query import QueryEmbedder, query_engine
from pipeline.plan.index import PQ_TRAINING_ROWS
from pipeline.schema import VECTOR
from pipeline.store.built_with import read_built_with
from pipeline.store.lance_store import LanceStore
from pipeline.store.search import SearchOptions, SearchTarget


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.retrieval_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sample", type=int, default=200, help="chunks to query with (default 200)")
    parser.add_argument("-k", type=int, default=10, help="recall@k besides recall@1 (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-recall-at-1", type=float, default=0.95, help="exact recall@1 below this fails")
    parser.add_argument("--json", action="store_true")
    return run(lambda: _check(parser, argv))


def _check(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    with results_only_on_stdout() as emit:
        return _recall(parser, argv, emit)


def _recall(parser: argparse.ArgumentParser, argv: list[str] | None, emit: Callable[[str], None]) -> int:
    args, settings = parse(parser, argv)
    store = LanceStore.from_settings(settings.store)
    built = read_built_with(store)
    target = SearchTarget.open(store, built.similarity)
    index = target.indexes.get(VECTOR)
    if index is not None:
        stats = target.table.index_stats(index.name)
        refine = settings.index.refine_factor
        ann = f"{stats.index_type} nprobes {settings.index.nprobes}" + (f" refine {refine}" if refine else "")
    else:
        ann = (
            f"none on this table of {target.table.count_rows():,} chunks: one is built from index.ann_min_rows="
            f"{settings.index.ann_min_rows:,} chunks, or from {PQ_TRAINING_ROWS} with python -m jobs.index --force-ann"
        )
    engine = QueryEmbedder(query_engine(built, settings.model, settings.logging.engine_level))
    try:
        options = SearchOptions(nprobes=settings.index.nprobes, refine_factor=settings.index.refine_factor)
        report = check_retrieval(
            target.table, target.metric, engine, args.sample, args.k, args.seed, ann, options, index is not None
        )
    finally:
        engine.close()
    emit(json.dumps(report.to_json_dict()) if args.json else "\n".join(report.lines()))
    exact = report.recall("exact")
    return 0 if exact is not None and exact.at_1 >= args.min_recall_at_1 else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
