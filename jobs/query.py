"""python -m jobs.query --config conf/local.toml "how do I parse command-line options" ["another query" ...]
    [-k 5] [--hybrid | --text-search] [--doc-id ID ...] [--source GLOB] [--exact] [--json]

Embeds each query with the model and engine settings the table was built with (read from the chunks table and
its last ingestion run; the model of --config or --model-path must be that model) and prints the top k chunks
with document id, chunk index, score and a snippet. --json prints one JSON object per query. Settings flags
take the form --section.field=VALUE (e.g. --index.nprobes=40)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

from jobs.common import parse, results_only_on_stdout, run
from pipeline.engine.query import EMBEDDERS, QueryEmbedder, query_engine, stored_chunk
from pipeline.schema import TEXT, VECTOR
from pipeline.store.built_with import read_built_with
from pipeline.store.lance_store import LanceStore
from pipeline.store.search import SCORE_KINDS, Hit, SearchOptions, SearchTarget, search

SHORTCUTS = ("--db", "--table-prefix", "--model-path")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.query", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("queries", nargs="+", metavar="QUERY", help="text to search for")
    parser.add_argument("-k", type=int, default=5, help="chunks to return per query (default 5)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--hybrid", action="store_true", help="vector and full-text search fused by rank")
    mode.add_argument("--text-search", action="store_true", help="full-text (BM25) search only, no engine")
    parser.add_argument("--doc-id", action="append", default=[], help="only chunks of this document (repeatable)")
    parser.add_argument("--source", help="only chunks whose source matches this glob, e.g. '*/modules/*.md'")
    parser.add_argument("--exact", action="store_true", help="compare every vector, bypassing the ANN index")
    parser.add_argument("--json", action="store_true", help="one JSON object per query on stdout")
    parser.add_argument(
        "--embedder",
        choices=EMBEDDERS,
        default="auto",
        help="what embeds the queries: the vLLM engine, or a transformers forward pass of the same model (starts in "
        "seconds; auto uses it where it reproduces a stored chunk's vector, cosine >= 0.9999; default auto)",
    )
    for flag in SHORTCUTS:
        parser.add_argument(flag, help="as in jobs.ingest")
    return run(lambda: _query(parser, argv))


def _query(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    with results_only_on_stdout() as emit:
        return _search(parser, argv, emit)


def _search(parser: argparse.ArgumentParser, argv: list[str] | None, emit: Callable[[str], None]) -> int:
    args, settings = parse(parser, _checked(parser, argv), SHORTCUTS)
    if args.k < 1:
        parser.error("-k must be at least 1")
    store = LanceStore.from_settings(settings.store)
    built = read_built_with(store)
    target = SearchTarget.open(store, built.similarity)
    table, indexes, metric = target.table, target.indexes, target.metric
    mode = "hybrid" if args.hybrid else "text" if args.text_search else "vector"
    options = SearchOptions(
        k=args.k,
        mode=mode,
        doc_ids=tuple(args.doc_id),
        source=args.source,
        exact=args.exact,
        nprobes=settings.index.nprobes,
        refine_factor=settings.index.refine_factor,
    )
    embedder, start_s, notes = None, 0.0, []
    if mode != "text":
        engine = query_engine(built, settings.model, settings.logging.engine_level)
        embedder = QueryEmbedder(engine, args.embedder, stored_chunk(table))
        notes, start_s = engine.notes + embedder.notes, embedder.start_s
    try:
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        for text in args.queries:
            t0 = time.perf_counter()
            vector = embedder.embed([text])[0] if embedder else None
            t1 = time.perf_counter()
            hits = search(table, metric, vector, text, options, has_fts=TEXT in indexes)
            t2 = time.perf_counter()
            result = {
                "query": text,
                "mode": mode,
                "score": SCORE_KINDS[mode] + (f" ({metric})" if mode == "vector" else ""),
                "model": built.model_id,
                "ann_index": VECTOR in indexes and not args.exact and mode != "text",
                "rows": table.count_rows(),
                "embed_ms": round(1000 * (t1 - t0), 1),
                "search_ms": round(1000 * (t2 - t1), 1),
                "embedder": embedder.kind if embedder else None,
                "engine_start_s": round(start_s, 2),
                "hits": [h.to_json_dict() for h in hits],
            }
            emit(json.dumps(result) if args.json else _render(result, hits))
    finally:
        if embedder:
            embedder.close()
    return 0


def _checked(parser: argparse.ArgumentParser, argv: list[str] | None) -> list[str]:
    """Settings flags must be written --section.field=VALUE: a separate value would be taken for a query."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for token in argv:
        if token.startswith("--") and "." in token.split("=")[0] and "=" not in token:
            parser.error(f"write settings flags as {token}=VALUE (a value after a space would be read as a query)")
    return argv


def _render(result: dict, hits: list[Hit]) -> str:
    embedded = (
        f"embedded in {result['embed_ms']:.0f} ms ({result['embedder']}, start {result['engine_start_s']:.1f} s), "
        if result["mode"] != "text"
        else ""
    )
    head = (
        f'query "{result["query"]}": {result["mode"]} search over {result["rows"]:,} chunks, score = '
        f"{result['score']}; {embedded}searched in {result['search_ms']:.0f} ms"
    )
    lines = [head] if hits else [head, "  no chunks match"]
    for h in hits:
        lines.append(f"{h.rank:>3}. {h.score:.4f}  {h.doc_id}  chunk {h.chunk_index + 1}/{h.doc_chunks}  {h.source}")
        lines.append(f"     {h.snippet}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
