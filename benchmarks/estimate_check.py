"""python -m benchmarks.estimate_check CORPUS [CORPUS ...] [--repeats 3]: how close `jobs.ingest --estimate` comes
to the run that follows it, on a store's second run. For each corpus and repeat, into a fresh store: a first run
ingests half of the corpus's files; the estimate then reads the whole corpus; a second run ingests it (the other
half is new). Prints the estimate's tokens against the second run's and its projected seconds against the run's
wall time, then the spread over the repeats. Each job is its own process with its own local Ray, as a scheduled job
is."""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.store.lance_store import LanceStore
from pipeline.store.runs import RunLog

TOKENS = re.compile(r"to embed: [\d,]+ chunks, ([\d,]+) tokens")
PROJECTED = re.compile(r"= ([\d,]+) s, ")


def job(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "jobs.ingest", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"jobs.ingest {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def one(corpus: Path, config: str, work: Path) -> dict:
    files = sorted(p for p in corpus.rglob("*") if p.is_file())
    half, whole, db = work / "half", work / "whole", work / "db"
    half.mkdir()
    whole.mkdir()
    for i, path in enumerate(files):
        name = "__".join(path.relative_to(corpus).parts)  # one folder: the same document ids in both
        (whole / name).symlink_to(path.resolve())
        if i % 2 == 0:
            (half / name).symlink_to(path.resolve())
    common = ("--config", config, "--db", str(db), "--no-index.after-run")
    job(*common, "--inputs", str(half))
    said = job(*common, "--inputs", str(whole), "--estimate")
    tokens, projected = TOKENS.search(said), PROJECTED.search(said)
    if tokens is None or projected is None:
        raise SystemExit(f"the estimate printed no tokens or projection:\n{said[-3000:]}")
    job(*common, "--inputs", str(whole))
    [second] = RunLog(LanceStore(str(db))).recent(1)
    return {
        "estimate_tokens": int(tokens.group(1).replace(",", "")),
        "run_tokens": second.tokens,
        "projected_s": float(projected.group(1).replace(",", "")),
        "recorded_estimate_s": second.estimate_s,
        "wall_s": second.wall_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.estimate_check", description=__doc__)
    parser.add_argument("corpora", nargs="+", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", default="conf/local.toml")
    args = parser.parse_args(argv)
    for corpus in args.corpora:
        errors = []
        for repeat in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix="estimate-check-") as tmp:
                r = one(corpus, args.config, Path(tmp))
            error = r["projected_s"] / r["wall_s"] - 1
            errors.append(error)
            print(
                f"{corpus} #{repeat + 1}: tokens estimated {r['estimate_tokens']:,} vs embedded {r['run_tokens']:,}"
                f" ({'equal' if r['estimate_tokens'] == r['run_tokens'] else 'DIFFERENT'}); time projected"
                f" {r['projected_s']:,.0f} s (recorded {r['recorded_estimate_s']:,.1f} s) vs {r['wall_s']:,.1f} s:"
                f" {error:+.0%}",
                flush=True,
            )
        spread = f"{min(errors):+.0%} to {max(errors):+.0%}, median {statistics.median(errors):+.0%}"
        print(f"{corpus}: projection error over {len(errors)} repeats {spread}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
