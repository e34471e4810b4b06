"""The recent runs of a store, as a table, as JSON, and as a one-page HTML report a person opens in a browser:
tokens/s over the newest run and per engine (from its `batches` rows), its stages' busy time and fates, and the
history of recent runs. Reads only the `runs` rows and the newest run's `batches` rows. No ray or vllm imports."""

from __future__ import annotations

import html
import json
from datetime import datetime

import pyarrow as pa

from pipeline.schema import Fate
from pipeline.stats import STAGE_LABELS, STAGES
from pipeline.store.lance_store import LanceStore
from pipeline.store.runs import RunLog
from pipeline.store.sql import sql_str

COLUMNS = [
    "run_id",
    "kind",
    "started_at",
    "wall_s",
    "status",
    "docs_in",
    "added",
    "replaced",
    "skipped",
    "removed",
    "rejected",
    "chunks",
    "tokens",
    "tokens_per_s",
    "startup_s",
    "engine_s",
    "engine_busy",
    "tokens_per_engine_s",
    "device_hours",
    "mfu",
    "cost",
    "cost_per_million_tokens",
    "error",
    *STAGES,
]
FATES = {fate.run_column: "unchanged" if fate is Fate.UNCHANGED else fate.run_column for fate in Fate}
"""The runs columns that count documents by fate, and how the report names them."""
BIN_S = 5.0
"""Width of the time bins of the tokens/s chart."""


def recent_runs(store: LanceStore, limit: int) -> list[dict]:
    """The newest runs, as the report and its JSON show them."""
    return [{c: getattr(row, c) for c in COLUMNS} for row in RunLog(store).recent(limit, COLUMNS)]


def run_batches(store: LanceStore, run_id: str) -> pa.Table:
    if not store.exists(store.names.batches):
        return pa.table({})
    return store.read(store.names.batches, f"run_id = {sql_str(run_id)}")


def as_json(rows: list[dict]) -> str:
    return json.dumps([{k: _plain(v) for k, v in row.items()} for row in rows])


def _plain(value):
    return value.isoformat() if isinstance(value, datetime) else value


def render_table(rows: list[dict]) -> str:
    head = ["started (UTC)", "status", "wall s", "added", "replaced", "unchanged", "removed", "rejected", "tokens"]
    head += ["tokens/s", "busy", "cost", "run", "error"]
    lines = [head]
    for r in rows:
        lines.append(
            [
                f"{r['started_at']:%Y-%m-%d %H:%M}" if r["started_at"] else "",
                r["status"] or "",
                _num(r["wall_s"], "{:,.1f}"),
                *(_num(r[k], "{:,}") for k in ("added", "replaced", "skipped", "removed", "rejected", "tokens")),
                _num(r["tokens_per_s"], "{:,.0f}"),
                _num(r["engine_busy"], "{:.0%}"),
                _num(r["cost"], "{:,.4g}"),
                r["run_id"],
                (r["error"] or "")[:60],
            ]
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def _num(value, form: str) -> str:
    return "" if value is None else form.format(value)


def rates_over_time(batches: pa.Table, bin_s: float = BIN_S) -> list[tuple[float, float]]:
    """(seconds since the first batch began, tokens/s) per bin: each batch's tokens spread over its engine time."""
    if not batches.num_rows or "started_at" not in batches.column_names:
        return []
    rows = [r for r in batches.select(["started_at", "embed_s", "n_tokens"]).to_pylist() if r["started_at"]]
    if not rows:
        return []
    t0 = min(r["started_at"] for r in rows)
    end = max((r["started_at"] - t0).total_seconds() + r["embed_s"] for r in rows)
    bins = [0.0] * (int(end // bin_s) + 1)
    for r in rows:
        start = (r["started_at"] - t0).total_seconds()
        stop = start + max(r["embed_s"], 1e-9)
        rate = r["n_tokens"] / (stop - start)
        for b in range(int(start // bin_s), int(stop // bin_s) + 1):
            overlap = min(stop, (b + 1) * bin_s) - max(start, b * bin_s)
            if overlap > 0 and b < len(bins):
                bins[b] += rate * overlap
    return [(b * bin_s, tokens / bin_s) for b, tokens in enumerate(bins)]


def per_engine(batches: pa.Table) -> dict[str, float]:
    """Tokens per busy second of each engine (by its label)."""
    if not batches.num_rows:
        return {}
    out: dict[str, list[float]] = {}
    for r in batches.select(["actor", "n_tokens", "embed_s"]).to_pylist():
        tokens, seconds = out.setdefault(r["actor"], [0.0, 0.0])
        out[r["actor"]] = [tokens + r["n_tokens"], seconds + r["embed_s"]]
    return {actor: t / s if s > 0 else 0.0 for actor, (t, s) in sorted(out.items())}


def render_html(rows: list[dict], batches: pa.Table) -> str:
    """The page: the newest run in detail, then the history of `rows`."""
    if not rows:
        return _page("No runs", "<p>This store has no runs yet.</p>")
    run = rows[0]
    facts = [
        f"started {_e(_plain(run['started_at']))}",
        f"{_num(run['wall_s'], '{:,.1f}')} s",
        f"<span id='tokens'>{_num(run['tokens'], '{:,}')}</span> tokens",
    ]
    for key, form, unit in (
        ("tokens_per_s", "{:,.0f}", " tokens/s"),
        ("engine_busy", "{:.0%}", " of the engines' time busy"),
        ("device_hours", "{:.4g}", " device-hours"),
        ("cost", "{:,.4g}", " cost"),
    ):
        if run[key] is not None:
            facts.append(form.format(run[key]) + unit)
    summary = (
        f"<p id='summary'>Run <code>{_e(run['run_id'])}</code> ({_e(run['kind'])}), <b>{_e(run['status'])}</b>: "
        + ", ".join(facts)
        + "</p>"
    )
    error = f"<p class='error'>{_e(run['error'])}</p>" if run["error"] else ""
    over_time = rates_over_time(batches)
    engines = per_engine(batches)
    stages = {STAGE_LABELS[k]: run[k] or 0.0 for k in STAGES}
    fates = {**{label: run[k] or 0 for k, label in FATES.items()}, "rejected": run["rejected"] or 0}
    body = (
        summary
        + error
        + "<h2>Tokens/s over the run</h2>"
        + _line_chart("rate", over_time, "s since the first batch", "tokens/s")
        + "<h2>Tokens/s per engine (busy time)</h2>"
        + _bars("engines", engines, "{:,.0f}")
        + "<h2>Busy seconds per stage (summed over workers)</h2>"
        + _bars("stages", stages, "{:,.2f}")
        + "<h2>Documents by fate</h2>"
        + _bars("fates", fates, "{:,}")
        + "<h2>Recent runs</h2>"
        + _line_chart(
            "history",
            [(i, r["tokens_per_s"] or 0.0) for i, r in enumerate(reversed(rows))],
            "run (oldest to newest)",
            "tokens/s",
        )
        + _history(rows)
    )
    return _page(f"Run {run['run_id']}", body)


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _line_chart(name: str, points: list[tuple[float, float]], x_label: str, y_label: str) -> str:
    if not points:
        return f"<p id='{name}'>no data</p>"
    w, h, pad = 720, 220, 40
    xmax = max(x for x, _ in points) or 1.0
    ymax = max(y for _, y in points) or 1.0
    xy = [(pad + (w - 2 * pad) * x / xmax, h - pad - (h - 2 * pad) * y / ymax) for x, y in points]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    dots = "".join(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='2.5'/>" for x, y in xy)
    return (
        f"<svg id='{name}' width='{w}' height='{h}' role='img' aria-label='{_e(y_label)} by {_e(x_label)}'>"
        f"<line x1='{pad}' y1='{h - pad}' x2='{w - pad}' y2='{h - pad}' class='axis'/>"
        f"<line x1='{pad}' y1='{pad}' x2='{pad}' y2='{h - pad}' class='axis'/>"
        f"<polyline points='{path}' class='line'/>{dots}"
        f"<text x='{pad}' y='{pad - 8}'>{_e(y_label)} (max {ymax:,.0f})</text>"
        f"<text x='{w - pad}' y='{h - 8}' text-anchor='end'>{_e(x_label)}</text></svg>"
    )


def _bars(name: str, values: dict[str, float], form: str) -> str:
    if not values:
        return f"<p id='{name}'>no data</p>"
    top = max(values.values()) or 1.0
    rows = "".join(
        f"<tr><th>{_e(k)}</th><td><div class='bar' style='width:{400 * v / top:.0f}px'></div></td>"
        f"<td class='n'>{form.format(v)}</td></tr>"
        for k, v in values.items()
    )
    return f"<table id='{name}' class='bars'>{rows}</table>"


def _history(rows: list[dict]) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("started", "status", "added", "tokens", "tokens/s", "cost", "error"))
    body = "".join(
        f"<tr class='{_e(r['status'])}'><td>{_e(_plain(r['started_at']))}</td><td>{_e(r['status'])}</td>"
        f"<td class='n'>{_num(r['added'], '{:,}')}</td><td class='n'>{_num(r['tokens'], '{:,}')}</td>"
        f"<td class='n'>{_num(r['tokens_per_s'], '{:,.0f}')}</td><td class='n'>{_num(r['cost'], '{:,.4g}')}</td>"
        f"<td>{_e((r['error'] or '')[:120])}</td></tr>"
        for r in rows
    )
    return f"<table id='runs'><tr>{head}</tr>{body}</table>"


def _page(title: str, body: str) -> str:
    style = (
        "body{font:14px system-ui,sans-serif;margin:24px;color:#222}h1{font-size:20px}h2{font-size:15px;"
        "margin-top:24px}svg{background:#fafafa;border:1px solid #ddd}.axis{stroke:#888}.line{fill:none;"
        "stroke:#2a6fdb;stroke-width:2}circle{fill:#2a6fdb}.bar{height:14px;background:#2a6fdb}"
        "td,th{padding:2px 8px;text-align:left}.n{text-align:right}.error,.failed td{color:#b00020}"
        "#runs{border-collapse:collapse}#runs td,#runs th{border-bottom:1px solid #eee}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{style}</style>"
        f"</head><body><h1>{_e(title)}</h1>{body}</body></html>"
    )
