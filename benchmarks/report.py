"""The benchmark's outputs: a `bench` table in LanceDB, a markdown report and two matplotlib plots."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.bench_table import BENCH_SCHEMA
from benchmarks.metrics import BREAKDOWN, BREAKDOWN_LABELS, Point, best, diagnose, efficiency
from benchmarks.runner import BenchResult, bench_rows, open_store

KIND_NAMES = {
    "pipeline": "pipeline",
    "bare": "bare LLM.embed",
    "serve": "vLLM server + HTTP",
    "ray_data_llm": "Ray Data LLM processor",
}


def sweeps(result: BenchResult) -> dict[tuple, list[Point]]:
    """Pipeline points grouped by everything but the budget."""
    groups: dict[tuple, list[Point]] = {}
    for p in result.of("pipeline"):
        key = (
            p.params.get("max_model_len"),
            p.params.get("actors"),
            p.params.get("batch_rows"),
            p.params.get("engines_per_device", 1),
        )
        groups.setdefault(key, []).append(p)
    return groups


def diagnoses(result: BenchResult) -> dict[tuple, str]:
    return {key: diagnose(pts, result.bare_for, result.engine_devices) for key, pts in sweeps(result).items()}


def write_outputs(result: BenchResult) -> Path:
    diag = diagnoses(result)
    table = bench_rows(result, "; ".join(diag.values()))
    store = open_store(result.settings)
    store.table(store.names.bench, BENCH_SCHEMA).add(table)
    plots = _plots(result)
    path = result.out_dir / "report.md"
    path.write_text(render_markdown(result, diag, plots, table.to_pylist()))
    return path


def render_markdown(result: BenchResult, diag: dict[tuple, str], plots: list[str], rows: list[dict]) -> str:
    st = result.settings
    lines = [
        *_header_lines(result, diag),
        "",
        "## Targets",
        "",
        *target_lines(result),
        "",
        "## Results",
        "",
        *_result_lines(result, rows),
        "",
        "## Where the time goes (pipeline, busy seconds summed over workers)",
        "",
        *_breakdown_lines(result),
        "",
        *cpu_lines(result),
        "",
        "## Device and ceilings",
        "",
        *_device_lines(result),
        "",
        "## Baselines",
        "",
        *_baseline_lines(result),
    ]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    lines += ["", "## Settings", "", "```json", json.dumps(st.model_dump(mode="json"), indent=1, sort_keys=True)]
    return "\n".join([*lines, "```", ""])


def _header_lines(result: BenchResult, diag: dict[tuple, str]) -> list[str]:
    st = result.settings
    lines = [
        f"# Benchmark {result.bench_id}",
        "",
        f"Model `{st.model.name or st.model.path}`, {result.chunks:,} chunks, {result.tokens:,} tokens "
        f"(mean {result.tokens / max(result.chunks, 1):,.0f}, longest {max(result.lengths, default=0):,}) from "
        f"{', '.join(st.input.paths)}; device {st.model.device}, dtype {st.model.dtype}.",
        "Every figure below comes from the `bench` table of this run; pipeline figures come from each run's own "
        "`runs` and `batches` rows (run ids listed).",
        "",
        "**tokens/s** is steady throughput: tokens over the time after the first engine was ready (start-up is "
        "shown on its own); **end to end** includes start-up. **efficiency** = pipeline tokens/s / bare-engine "
        "tokens/s at the same budget.",
        "",
        "## Diagnosis",
        "",
    ]
    for key, text in diag.items():
        lines.append(
            f"- max_model_len {key[0]}, actors {key[1]}, batch_rows {key[2]}, engines per device {key[3]}: {text}"
        )
    return lines


def _result_lines(result: BenchResult, rows: list[dict]) -> list[str]:
    lines = [
        "| runner | budget | wall s | start-up s | steady s | tokens/s | end to end | efficiency | vs serve | "
        "vs Ray Data LLM | MFU | engine busy | tokens per call | tokens (chunker / engine) | run |",
        "|" + "---|" * 15,
    ]
    for p, r in zip(result.points, rows, strict=True):
        if not p.ok:
            lines.append(f"| {p.label} | {p.params.get('max_num_batched_tokens')} | failed: {p.error} |" + " |" * 12)
            continue
        check = "=" if p.tokens_match else "≠"
        lines.append(
            f"| {p.label} | {p.params.get('max_num_batched_tokens'):,} | {p.wall_s:.1f} | {p.startup_s:.1f} | "
            f"{p.steady_s:.1f} | {p.tokens_per_s:,.0f} | {p.e2e_tokens_per_s:,.0f} | {_f(r['efficiency'])} | "
            f"{_f(r['vs_serve'])} | {_f(r['vs_ray_data_llm'])} | {_pct(r['mfu'])} | {_pct(p.engine_busy)} | "
            f"{_n(p.tokens_per_call)} | {p.tokens:,} {check} {p.engine_tokens:,} | {p.run_id or ''} |"
        )
    return lines


def _breakdown_lines(result: BenchResult) -> list[str]:
    lines = [
        "| point | wall s | " + " | ".join(BREAKDOWN_LABELS[k] for k in BREAKDOWN) + " | engine limits |",
        "|" + "---|" * (len(BREAKDOWN) + 3),
    ]
    for p in result.of("pipeline"):
        if not p.ok:
            continue
        figures = _breakdown(p)
        limits = (
            f"budget {_n(p.params.get('engine_max_num_batched_tokens'))}, max_num_seqs "
            f"{_n(p.params.get('engine_max_num_seqs'))}, chunked prefill {p.params.get('engine_chunked_prefill')}"
        )
        lines.append(f"| {p.label} | {p.wall_s:.1f} | " + " | ".join(f"{v:.2f}" for v in figures) + f" | {limits} |")
    return [
        *lines,
        "",
        "Stages overlap in a pipeline (reading and chunking run while the engine works), so the busy seconds do "
        "not add up to the wall time; *engine idle* is engine time spent waiting between calls.",
    ]


def _device_lines(result: BenchResult) -> list[str]:
    lines = [
        f"- FLOPs per token (planner arithmetic at this corpus's chunk lengths): {result.flops_per_token / 1e9:.3f} "
        "GFLOP",
    ]
    if result.peak_tflops:
        ceiling = result.peak_tflops * 1e12 / result.flops_per_token
        lines.append(
            f"- peak {result.peak_tflops:,.0f} TFLOP/s ({result.peak_source}): ceiling {ceiling:,.0f} tokens/s per "
            "engine at 100% MFU"
        )
    else:
        lines.append(f"- data-sheet peak: {result.peak_source}; MFU is left blank")
    if result.device:
        d = result.device
        lines += [
            f"- measured with plain PyTorch on {d.name} ({d.dtype}"
            + (f", {d.threads} threads" if d.threads else "")
            + f"): dense matmul {d.matmul_tflops:.3f} TFLOP/s; model forward pass at {d.seq_len} tokens x {d.batch} "
            f"rows {d.forward_tflops:.3f} TFLOP/s = {d.forward_tokens_per_s:,.0f} tokens/s",
        ]
        bare = best(result.of("bare"))
        if bare:
            share = bare.tokens_per_s / d.forward_tokens_per_s
            lines.append(f"- the bare engine reaches {share:.0%} of that plain forward-pass rate")
    return lines


def _baseline_lines(result: BenchResult) -> list[str]:
    lines = []
    for kind in ("bare", "serve", "ray_data_llm"):
        pts = result.of(kind)
        if kind in result.missing:
            lines.append(f"- {KIND_NAMES[kind]}: not run: {result.missing[kind]}")
        elif pts:
            top = best(pts)
            note = f" ({top.note})" if top and top.note else ""
            rate = f"best {top.tokens_per_s:,.0f} tokens/s at {top.label}" if top else "no successful pass"
            lines.append(f"- {KIND_NAMES[kind]}: {rate}{note}")
    for kind, cos in result.cosines.items():
        lines.append(f"- vectors of {KIND_NAMES[kind]} vs bare engine, first chunks: lowest cosine {cos:.6f}")
    bare_runs = [p.tokens_per_s for p in result.of("bare") if p.ok and p.params == result.of("bare")[0].params]
    if len(bare_runs) > 1:
        lines.append(
            f"- repeated bare runs at the first budget: {', '.join(f'{r:,.0f}' for r in bare_runs)} tokens/s "
            f"(spread {max(bare_runs) / min(bare_runs) - 1:.1%}: the machine's noise)"
        )
    return lines


EFFICIENCY_TARGET, STARTUP_TARGET = 0.95, 1.15


def target_lines(result: BenchResult) -> list[str]:
    """The throughput issue's four ratios, per engines-per-device setting of the sweep, and which setting won."""
    pipeline = [p for p in result.of("pipeline") if p.ok]
    if not pipeline:
        return ["- no pipeline point finished"]
    serve = best(result.of("serve"))
    rdl = best(result.of("ray_data_llm"))
    bare_starts = sorted(p.startup_s for p in result.of("bare") if p.ok)
    by_share: dict = {}
    for p in pipeline:
        by_share.setdefault(p.params.get("engines_per_device", 1), []).append(p)
    lines = []
    for share, points in by_share.items():
        effs = [efficiency(p, result.bare_for(p), result.engine_devices) for p in points]
        top = best(points)
        first = points[0]
        head = f"engines per device {share}:"
        if all(e is not None for e in effs):
            ok = min(effs) >= EFFICIENCY_TARGET
            budgets = ", ".join(f"{p.params.get('max_num_batched_tokens'):,}" for p in points)
            lines.append(
                f"- {_verdict(ok)} {head} efficiency {', '.join(f'{e:.2f}' for e in effs)} at budgets "
                f"{budgets} (target >= {EFFICIENCY_TARGET} at every budget)"
            )
        if serve:
            ratio = top.tokens_per_s / serve.tokens_per_s
            lines.append(
                f"- {_verdict(ratio >= 1)} {head} best {top.tokens_per_s:,.0f} tokens/s = {ratio:.2f}x "
                f"vLLM serve at its best ({serve.label}, {serve.tokens_per_s:,.0f})"
            )
        if rdl:
            steady, e2e = first.tokens_per_s / rdl.tokens_per_s, first.e2e_tokens_per_s / rdl.e2e_tokens_per_s
            lines.append(
                f"- {_verdict(min(steady, e2e) >= 1)} {head} {steady:.2f}x Ray Data LLM steady, "
                f"{e2e:.2f}x end to end (same budget)"
            )
        if bare_starts:
            starts = sorted(p.startup_s for p in points)
            ratio = starts[len(starts) // 2] / bare_starts[len(bare_starts) // 2]
            lines.append(
                f"- {_verdict(ratio <= STARTUP_TARGET)} {head} start-up {ratio:.2f}x the bare engine's "
                f"(medians {starts[len(starts) // 2]:.1f} s and {bare_starts[len(bare_starts) // 2]:.1f} s; "
                f"target <= {STARTUP_TARGET}){_ray_start(result)}"
            )
    if len(by_share) > 1:
        winner = max(by_share, key=lambda k: best(by_share[k]).tokens_per_s)
        rates = ", ".join(f"{k}: {best(v).tokens_per_s:,.0f}" for k, v in by_share.items())
        lines.append(f"- engines per device sweep (best tokens/s per setting) {rates}: {winner} won")
    return lines


def _ray_start(result: BenchResult) -> str:
    if result.ray_start_s is None:
        return ""
    return f", on a running Ray: starting a local one took {result.ray_start_s:.1f} s more, once, before the points"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def cpu_lines(result: BenchResult) -> list[str]:
    """CPU-seconds per process role in each point's steady window, sampled every second."""
    points = [p for p in result.points if p.ok and p.cpu and p.kind in ("bare", "pipeline")]
    if not points:
        return []
    roles = sorted(
        {r for p in points for r in p.cpu}, key=lambda r: -max(p.cpu.get(r, {}).get("cpu_s", 0) for p in points)
    )
    lines = [
        "## Where the CPU goes in the steady window",
        "",
        f"CPU-seconds of each process role while the engines were steady ({result.cores} cores; in brackets, how "
        "many processes held the role). *Besides the engine* is everything but the engine's own process.",
        "",
        "| process role | " + " | ".join(p.label for p in points) + " |",
        "|" + "---|" * (len(points) + 1),
    ]
    for role in roles:
        cells = [
            f"{p.cpu[role]['cpu_s']:.1f} ({p.cpu[role]['processes']:.0f})" if role in p.cpu else "" for p in points
        ]
        lines.append(f"| {role} | " + " | ".join(cells) + " |")
    totals, besides, windows = [], [], []
    for p in points:
        total = sum(v["cpu_s"] for v in p.cpu.values())
        engine = sum(v["cpu_s"] for r, v in p.cpu.items() if r in ENGINE_ROLES)
        totals.append(f"{total:.1f}")
        besides.append(f"{total - engine:.1f} ({(total - engine) / total:.0%})" if total else "")
        windows.append(f"{p.steady_s * result.cores:.1f}")
    lines += [
        "| **all** | " + " | ".join(totals) + " |",
        "| **besides the engine** | " + " | ".join(besides) + " |",
        "| core-seconds available | " + " | ".join(windows) + " |",
    ]
    return lines


ENGINE_ROLES = ("engine actors", "engine (bare)")


def _f(v: float | None) -> str:
    return f"{v:.2f}" if v is not None else ""


def _pct(v: float | None) -> str:
    return f"{v:.0%}" if v is not None else ""


def _n(v) -> str:
    return f"{v:,.0f}" if isinstance(v, (int, float)) else ""


def _breakdown(point: Point) -> list[float]:
    return [point.startup_s, *(point.stages.get(k, 0.0) for k in BREAKDOWN[1:])]


def _plots(result: BenchResult) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [_save(plt, *_throughput_plot(result, plt), result.out_dir / "throughput.png")]
    pipeline = [p for p in result.of("pipeline") if p.ok]
    if pipeline:
        names.append(_save(plt, *_stages_plot(pipeline, plt), result.out_dir / "stages.png"))
    return names


def _save(plt, fig, ax, legend_loc: str, path: Path) -> str:
    ax.legend(fontsize=7, loc=legend_loc)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _throughput_plot(result: BenchResult, plt):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, pts in sweeps(result).items():
        ok = [p for p in pts if p.ok]
        ax.plot(
            [p.params["max_num_batched_tokens"] for p in ok],
            [p.tokens_per_s for p in ok],
            "o-",
            label=f"pipeline (max_model_len {key[0]}, actors {key[1]}, batch {key[2]})",
        )
        ax.plot(
            [p.params["max_num_batched_tokens"] for p in ok],
            [p.e2e_tokens_per_s for p in ok],
            "o:",
            color=ax.lines[-1].get_color(),
            alpha=0.6,
            label="pipeline, end to end",
        )
    bares = [p for p in result.of("bare") if p.ok]
    if bares:
        ax.plot(
            [p.params["max_num_batched_tokens"] for p in bares],
            [p.tokens_per_s for p in bares],
            "s",
            color="black",
            label="bare LLM.embed",
        )
    for kind, style in (("serve", "--"), ("ray_data_llm", "-.")):
        top = best(result.of(kind))
        if top:
            ax.axhline(
                top.tokens_per_s,
                linestyle=style,
                color="grey" if kind == "serve" else "tab:purple",
                label=f"{KIND_NAMES[kind]} ({top.label})",
            )
    ax.set_xlabel("max_num_batched_tokens")
    ax.set_ylabel("tokens/s (steady)")
    top = max((p.tokens_per_s for p in result.points if p.ok), default=1.0)
    ax.set_ylim(0, top * 1.15)  # room above the highest baseline line
    ax.set_title("Throughput against the scheduler budget")
    return fig, ax, "lower right"


def _stages_plot(pipeline: list[Point], plt):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bottoms = [0.0] * len(pipeline)
    labels = [f"{p.label}\n{p.params['max_num_batched_tokens']:,}" for p in pipeline]
    for i, key in enumerate(BREAKDOWN):
        values = [_breakdown(p)[i] for p in pipeline]
        ax.bar(labels, values, bottom=bottoms, label=BREAKDOWN_LABELS[key])
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    ax.plot(labels, [p.wall_s for p in pipeline], "k_", markersize=40, label="wall time")
    ax.set_ylabel("seconds (busy, summed over workers)")
    ax.set_title("Where the pipeline's time goes")
    return fig, ax, "upper right"
