"""python -m benchmarks.estimate_scale [--sizes 0,1000000] [--rounds 3]: what `jobs.ingest --estimate` costs as the
store grows. The same corpus (the sample corpus's documents, new to every store) is estimated against stores
pre-filled with N chunks as the scale benchmark fills them (`benchmarks/scale.py`), in rounds that visit every size
in turn; each estimate is its own process with its own local Ray. Prints the estimate's own seconds, the job's wall
time and the driver's peak memory per size, and the tokens it counted (the same at every size)."""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.bench_scale import _model
from benchmarks.scale import corpus_docs, prefill, write_jsonl

TOOK = re.compile(r"the estimate took ([\d.,]+) s .*driver peak ([\d,]+) MiB")
TOKENS = re.compile(r"to embed: [\d,]+ chunks, ([\d,]+) tokens")


def estimate(conf: str, db: Path, inputs: Path) -> dict:
    args = [sys.executable, "-m", "jobs.ingest", "--config", conf, "--db", str(db), "--inputs", str(inputs)]
    started = time.perf_counter()
    proc = subprocess.run([*args, "--estimate"], capture_output=True, text=True, check=False)
    wall_s = time.perf_counter() - started
    took, tokens = TOOK.search(proc.stdout), TOKENS.search(proc.stdout)
    if proc.returncode != 0 or took is None or tokens is None:
        raise SystemExit(f"the estimate on {db} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return {
        "estimate_s": float(took.group(1).replace(",", "")),
        "driver_mb": float(took.group(2).replace(",", "")),
        "tokens": int(tokens.group(1).replace(",", "")),
        "wall_s": wall_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.estimate_scale", description=__doc__)
    parser.add_argument("--config", default="conf/local.toml")
    parser.add_argument("--out", default="bench_out/estimate-scale")
    parser.add_argument("--sizes", default="0,1000000", help="chunks pre-filled, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    model, chunking, dim = _model(args.config)
    sizes = [int(x) for x in args.sizes.split(",")]
    stores = {size: out / f"store-{size}" for size in sizes}
    for size, db in stores.items():
        prefill(db, size, dim, {"model": model}, chunking, model)
    inputs = write_jsonl(out / "inputs", corpus_docs("docs"))
    found: dict[int, list[dict]] = {size: [] for size in sizes}
    for rnd in range(args.rounds):
        for size, db in stores.items():
            found[size].append(estimate(args.config, db, inputs))
            print(f"round {rnd + 1}, store of {size:,} chunks: {found[size][-1]}", flush=True)
    print("\n| store chunks | estimate s (median, min-max) | job wall s | driver peak MiB | tokens |")
    print("|---|---|---|---|---|")
    for size, rows in found.items():
        est = [r["estimate_s"] for r in rows]
        tokens = ", ".join(sorted({f"{r['tokens']:,}" for r in rows}))
        print(
            f"| {size:,} | {statistics.median(est):.1f} ({min(est):.1f}-{max(est):.1f}) "
            f"| {statistics.median(r['wall_s'] for r in rows):.1f} | {max(r['driver_mb'] for r in rows):,.0f} "
            f"| {tokens} |"
        )
    shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
