"""python -m benchmarks.bench_scale --config conf/local.toml [--out bench_out/scale]: per-run costs as the store and
the corpus grow (store growth, corpus growth, re-ingest at size), printed as a table with the targets checked."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

from benchmarks.scale import Point, commit_latency, corpus_docs, edited, fill_texts, measure, prefill, write_jsonl
from jobs.common import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_scale", description=__doc__)
    parser.add_argument("--config", default="conf/local.toml")
    parser.add_argument("--out", default="bench_out/scale")
    parser.add_argument("--store-sizes", default="0,200000,1000000", help="chunks pre-filled, comma-separated")
    parser.add_argument("--corpus-factors", default="1,2,4,8")
    parser.add_argument("--corpora", default="docs,other", help="docs: the sample corpus; other: other modules")
    parser.add_argument("--reingest-docs", type=int, default=1000)
    parser.add_argument("--parts", default="store,commit,corpus,reingest", help="which scenarios to run")
    parser.add_argument("--store-repeats", type=int, default=3, help="rounds of the store-growth runs (medians)")
    parser.add_argument(
        "--store-commit-rows",
        type=int,
        default=8,
        help="run.commit_rows of the store-growth runs: several commits a run, so the per-chunk "
        "write figure is not one commit's noise",
    )
    args = parser.parse_args(argv)
    return run(lambda: _scale(args))


def _scale(args: argparse.Namespace) -> int:
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log = out / "runs.log"
    sizes = [int(x) for x in args.store_sizes.split(",")]
    factors = [int(x) for x in args.corpus_factors.split(",")]
    corpora = args.corpora.split(",")
    model, chunking, dim = _model(args.config)
    points: list[Point] = []

    parts = set(args.parts.split(","))
    commit_rows = ("--run.commit-rows", str(args.store_commit_rows))
    stored_inputs: list[Path] = []
    stores = {size: out / f"store-{size}" for size in sizes}
    for size, db in stores.items() if parts & {"store", "reingest"} else []:
        if size == max(sizes) or "store" in parts:
            prefill(db, size, dim, {"model": model}, chunking, model)
    # Rounds over every store size in turn, so the machine's drift falls on all sizes alike; each round's
    # documents have new ids (the same texts), so every run writes the same number of new chunks.
    for rnd in range(args.store_repeats) if "store" in parts else []:
        for c in corpora:
            folder = write_jsonl(out / f"in-{c}-r{rnd}", corpus_docs(c, id_suffix=f"r{rnd}"))
            stored_inputs.append(folder)
            for size, db in stores.items():
                point = Point("store", c, size, 1, repeat=rnd)
                points.append(measure(point, args.config, db, folder, log, *commit_rows))
    for size, db in stores.items():
        if size != max(sizes) and db.exists():
            shutil.rmtree(db)
    latency = _commit_latency(out, sizes, dim, model, chunking) if "commit" in parts else {}
    for factor in factors if "corpus" in parts else []:
        folder = write_jsonl(out / f"in-x{factor}", corpus_docs(corpora[0], factor))
        db = out / f"corpus-{factor}"
        points.append(measure(Point("corpus", corpora[0], 0, factor), args.config, db, folder, log))
        shutil.rmtree(db)
    expected: dict = {}
    if "reingest" in parts:
        reingest, expected = _reingest(args, out, log, max(sizes), corpora, stored_inputs)
        points += reingest
    (out / "scale.json").write_text(json.dumps({"points": [asdict(p) for p in points], "commit": latency}, indent=1))
    report = render(points, expected, latency)
    (out / "report.md").write_text(report)
    print(report)
    return 0


def _commit_latency(out: Path, sizes: list[int], dim: int, model: str, chunking: str) -> dict:
    commit_stores = {size: out / f"commit-{size}" for size in sizes}
    for size, db in commit_stores.items():
        prefill(db, size, dim, {"model": model}, chunking, model)
    latency = commit_latency(commit_stores, dim, model, chunking)
    for db in commit_stores.values():
        shutil.rmtree(db)
    return latency


def _model(conf: str) -> tuple[str, str, int]:
    from pipeline.plan.job import plan_lengths
    from pipeline.settings import load_settings

    lengths = plan_lengths(load_settings(config_file=Path(conf)))
    return lengths.model.model_id, lengths.chunk.fingerprint, int(lengths.model.text_config["hidden_size"])


def _reingest(
    args, out: Path, log: Path, size: int, corpora: list[str], stored_inputs: list[Path]
) -> tuple[list[Point], dict]:
    db = out / f"store-{size}"
    base = corpus_docs(corpora[-1], -(-args.reingest_docs // len(corpus_docs(corpora[-1]))))
    docs = [{"id": f"re-{i}", "text": d["text"]} for i, d in enumerate(base[: args.reingest_docs])]
    first = write_jsonl(out / "in-reingest", docs)
    points = [
        measure(Point("reingest: first", "reingest", size, 1), args.config, db, first, log),
        measure(Point("reingest: unchanged", "reingest", size, 1), args.config, db, first, log),
    ]
    changed, expected = edited(docs)
    folder = write_jsonl(out / "in-reingest-2", changed)
    fill = [{"id": f"fill-{i}", "text": t} for i, t in enumerate(fill_texts(size // 10))]
    write_jsonl(folder / "fill", fill, per_shard=20_000)
    for stored in stored_inputs:  # the store-growth runs' documents stay too
        shutil.copytree(stored, folder / stored.name)
    expected["skipped"] += len(fill) + sum(_lines(p) for p in stored_inputs)
    last = Point("reingest: 5/5/5 %", "reingest", size, 1)
    points.append(measure(last, args.config, db, folder, log, "--run.delete-missing"))
    return points, expected


def _lines(folder: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in folder.glob("*.jsonl"))


def render(points: list[Point], expected: dict, latency: dict) -> str:
    lines = [
        "| scenario | corpus | store chunks | corpus x | round | chunks | wall s | start-up s | write s | commit s | "
        "write ms/chunk | groups | record B/chunk | driver peak MiB | chunk versions added |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        lines.append(
            f"| {p.scenario} | {p.corpus} | {p.store_chunks:,} | {p.corpus_factor} | {p.repeat} | {p.chunks:,} | "
            f"{p.wall_s:.1f} | "
            f"{p.startup_s:.1f} | {p.write_s:.3f} | {p.commit_s:.3f} | {p.write_s_per_chunk * 1e3:.3f} | {p.groups} | "
            f"{p.bytes_per_chunk:.1f} | {p.driver_peak_mb:,.0f} | {p.chunk_versions_added} |"
        )
    if latency:
        base = latency[min(latency)]
        header = "| store chunks | write ms / group (worker) | commit ms / group (driver) | both vs empty store |"
        lines += ["", header, "|---|---|---|---|"]
        for size, t in sorted(latency.items()):
            ratio = (t["write"] + t["commit"]) / (base["write"] + base["commit"])
            lines.append(f"| {size:,} | {t['write'] * 1e3:.1f} | {t['commit'] * 1e3:.1f} | {ratio:.2f} |")
    lines += ["", *checks(points, expected, latency)]
    return "\n".join(lines) + "\n"


def checks(points: list[Point], expected: dict, latency: dict) -> list[str]:
    out = []
    if latency:
        small, big = latency[min(latency)], latency[max(latency)]
        ratio = (big["write"] + big["commit"]) / (small["write"] + small["commit"])
        out.append(_check(f"write + commit s per group at {max(latency):,} / at {min(latency):,} chunks", ratio, 1.2))
    store = [p for p in points if p.scenario == "store"]
    for corpus in sorted({p.corpus for p in store}):
        by_size: dict[int, list[Point]] = {}
        for p in store:
            if p.corpus == corpus:
                by_size.setdefault(p.store_chunks, []).append(p)
        small, big = min(by_size), max(by_size)
        per_chunk = {n: statistics.median(p.write_s_per_chunk for p in ps) for n, ps in by_size.items()}
        ratio = per_chunk[big] / per_chunk[small] if per_chunk[small] else float("nan")
        label = f"{corpus}: write s per chunk at {big:,} / at {small:,} (medians of {len(by_size[big])} runs)"
        out.append(_check(label, ratio, 1.2))
        walls = {n: sorted(p.wall_s for p in ps) for n, ps in sorted(by_size.items())}
        spread = ", ".join(f"{n:,}: {statistics.median(w):.1f} ({w[0]:.1f}-{w[-1]:.1f})" for n, w in walls.items())
        # The machine's noise: how far apart runs at one store size land (the wider of the two sizes compared).
        noise = max(walls[big][-1] - walls[big][0], walls[small][-1] - walls[small][0])
        gap = statistics.median(walls[big]) - statistics.median(walls[small])
        out.append(
            f"- {'PASS' if abs(gap) <= noise else 'FAIL'} {corpus}: median wall s at {big:,} is {gap:+.1f} s "
            f"from the empty store's; runs at one size spread over {noise:.1f} s; wall s median (min-max) by "
            f"store size: {spread}"
        )
    growth = sorted((p for p in points if p.scenario == "corpus"), key=lambda p: p.corpus_factor)
    if growth:
        ratio = growth[-1].driver_peak_mb / growth[0].driver_peak_mb
        out.append(_check(f"driver peak RSS at {growth[-1].corpus_factor}x / 1x", ratio, 1.25))
        total = sum(p.record_bytes for p in growth) / max(1, sum(p.chunks for p in growth))
        out.append(_check("record bytes reaching the driver per chunk (corpus growth, all points)", total, 100))
    reingest = {p.scenario: p for p in points if p.corpus == "reingest"}
    if "reingest: unchanged" in reingest:
        p = reingest["reingest: unchanged"]
        ok = p.embedded_tokens == 0 and p.chunk_versions_added == 0 and p.skipped == reingest["reingest: first"].added
        out.append(
            f"- {'PASS' if ok else 'FAIL'} unchanged rerun: {p.embedded_tokens} tokens embedded, "
            f"{p.chunk_versions_added} chunk-table versions added, {p.skipped} unchanged"
        )
    if "reingest: 5/5/5 %" in reingest:
        p = reingest["reingest: 5/5/5 %"]
        got = {k: getattr(p, k) for k in expected}
        out.append(f"- {'PASS' if got == expected else 'FAIL'} 5/5/5 %: counts {got}, expected {expected}")
    return out


def _check(label: str, value: float, limit: float) -> str:
    return f"- {'PASS' if value <= limit else 'FAIL'} {label}: {value:.3f} (target <= {limit})"


if __name__ == "__main__":
    sys.exit(main())
