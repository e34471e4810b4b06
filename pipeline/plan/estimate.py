"""What a run will embed and what it will cost, before it runs: the chunk stage's output tallied block by block
(documents, chunks and exact tokens per fate, the chunk-length distribution), scaled up from a seeded sample of
the input's pieces (files, or parts of large ones) when one is taken, and projected into time and money from the
rate the store's own runs measured, its benchmark table's, or the model's FLOPs at an assumed share of the device's
peak. Pure: no ray or vllm imports."""

from __future__ import annotations

import bisect
import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schema as s
from pipeline.plan.compute import flops_per_token
from pipeline.plan.model_params import ModelShape
from pipeline.records import RunRecord
from pipeline.schema import RunStatus

ASSUMED_MFU = 0.4
"""Share of the device's 16-bit peak assumed when nothing measured the rate (vLLM pooling runs of large models
reach 40-60%); the estimate says when it rests on it."""
Z_95 = 1.96
RUN_MATCH = ("model", "max_model_len", "max_num_batched_tokens")
"""What a past run must share with this one for its rate to count (and the device, from its settings)."""


@dataclass
class Tally:
    """Additive counts of the chunk stage's rows."""

    docs: Counter = field(default_factory=Counter)
    """Fate (or 'rejected') -> documents."""
    chunks: Counter = field(default_factory=Counter)
    tokens: Counter = field(default_factory=Counter)
    lengths: Counter = field(default_factory=Counter)
    """Chunk tokens -> chunks of that length (of the chunks to embed)."""
    piece_tokens: Counter = field(default_factory=Counter)
    """Sampled piece -> its tokens to embed (for a sample's interval; empty without a sample)."""

    def __add__(self, other: Tally) -> Tally:
        return Tally(
            self.docs + other.docs,
            self.chunks + other.chunks,
            self.tokens + other.tokens,
            self.lengths + other.lengths,
            self.piece_tokens + other.piece_tokens,
        )

    @classmethod
    def of(cls, rows: pa.Table, pieces: PieceIndex | None = None) -> Tally:
        """One block of chunk-stage rows (CHUNK_SCHEMA); with `pieces`, each chunk's tokens are also counted to the
        sampled piece its document was read from."""
        tally = cls()
        rejected = pc.is_valid(rows.column(s.REJECT_REASON))
        tally.docs["rejected"] = int(pc.sum(rejected).as_py() or 0)
        chunk_rows = rows.filter(pc.and_(pc.is_valid(rows.column(s.CHUNK_ID)), pc.invert(rejected)))
        markers = rows.filter(pc.and_(pc.is_null(rows.column(s.CHUNK_ID)), pc.invert(rejected)))
        for fate in markers.column(s.FATE).to_pylist():
            tally.docs[fate] += 1
        columns = (s.FATE, s.CHUNK_INDEX, s.N_TOKENS, s.SOURCE, s.LINE)
        for fate, index, n, source, line in zip(*(chunk_rows.column(c).to_pylist() for c in columns), strict=True):
            tally.docs[fate] += index == 0
            tally.chunks[fate] += 1
            tally.tokens[fate] += n
            tally.lengths[n] += 1
            if pieces is not None:
                tally.piece_tokens[pieces.piece(source, line)] += n
        return tally

    def to_json(self) -> str:
        return json.dumps(
            {
                "docs": self.docs,
                "chunks": self.chunks,
                "tokens": self.tokens,
                "lengths": {str(k): v for k, v in self.lengths.items()},
                "piece_tokens": {str(k): v for k, v in self.piece_tokens.items()},
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Tally:
        d = json.loads(text)
        lengths, pieces = (Counter({int(k): v for k, v in d[key].items()}) for key in ("lengths", "piece_tokens"))
        return cls(Counter(d["docs"]), Counter(d["chunks"]), Counter(d["tokens"]), lengths, pieces)

    @property
    def tokens_to_embed(self) -> int:
        return sum(self.tokens[f] for f in s.FATES_TO_CHUNK)

    @property
    def chunks_to_embed(self) -> int:
        return sum(self.chunks[f] for f in s.FATES_TO_CHUNK)

    def percentiles(self, qs: tuple[float, ...] = (0.1, 0.5, 0.9, 0.99)) -> dict[float, int]:
        """Chunk-length percentiles of the chunks to embed."""
        total = sum(self.lengths.values())
        out, seen = {}, 0
        ordered = sorted(self.lengths.items())
        for q in qs:
            target, seen = q * total, 0
            for length, count in ordered:
                seen += count
                if seen >= target:
                    out[q] = length
                    break
        return out


def in_sample(key: str, fraction: float, seed: int) -> bool:
    """Whether a piece (or anything named by `key`) is in the seeded sample: the same for the same seed."""
    if fraction >= 1.0:
        return True
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@dataclass(frozen=True)
class Sample:
    """A seeded sample of the input's pieces (whole files, or the parts large ones are read in), each kept with
    probability `fraction`: only the kept pieces are read."""

    fraction: float
    seed: int = 0

    def keeps(self, piece_key: str) -> bool:
        return in_sample(piece_key, self.fraction, self.seed)


@dataclass(frozen=True)
class PieceIndex:
    """Which sampled piece a document was read from, by its source and line: a piece holds the lines from its
    first up to the next piece's first."""

    starts: dict[str, list[int]]
    """Source -> first lines of its sampled pieces, ascending."""
    ids: dict[str, list[int]]
    """Source -> the ids of those pieces, in the same order."""

    @classmethod
    def listing(cls, pieces: list[tuple[str, int]]) -> PieceIndex:
        """`pieces`: (source, first line) of each sampled piece; a piece's id is its place in the list."""
        starts: dict[str, list[int]] = {}
        ids: dict[str, list[int]] = {}
        for i, (source, first) in sorted(enumerate(pieces), key=lambda p: (p[1][0], p[1][1])):
            starts.setdefault(source, []).append(first)
            ids.setdefault(source, []).append(i)
        return cls(starts, ids)

    def piece(self, source: str, line: int | None) -> int:
        firsts = self.starts[source]
        return self.ids[source][max(bisect.bisect_right(firsts, line if line is not None else firsts[0]) - 1, 0)]


@dataclass(frozen=True)
class SampledTally:
    tally: Tally
    pieces: int | None = None
    """The input's pieces (None: every piece was read)."""
    sampled: int | None = None
    """The pieces the sample kept and read."""


def scaled_tokens(tally: Tally, fraction: float) -> tuple[float, float]:
    """Tokens to embed in the whole input, from a sample that kept each piece with probability `fraction`, and
    the half-width of its 95% interval (Poisson sampling of pieces: variance (1 - f) / f^2 x the sum of the
    sampled pieces' squared totals)."""
    if fraction >= 1.0:
        return float(tally.tokens_to_embed), 0.0
    total = tally.tokens_to_embed / fraction
    squares = float(sum(n * n for n in tally.piece_tokens.values()))
    return total, Z_95 * math.sqrt((1 - fraction) * squares) / fraction


@dataclass(frozen=True)
class Rate:
    tokens_per_engine_s: float
    """Tokens per second of one engine over a run's working time: its wall time less start-up and maintenance, so
    the stages around the engines (reading, chunking, writing, commits) are in it, not only the engines' compute."""
    startup_s: float | None
    source: str
    after_s: float = 0.0
    """Seconds a run spends after its last commit (index and maintenance)."""


def rate_from_runs(runs: list[RunRecord], model: str, max_model_len: int, budget: int, device: str) -> Rate | None:
    """The median per-engine rate of the store's recent successful runs with this model, limits and device, and
    their median start-up and maintenance."""
    alike = [
        r
        for r in runs
        if r.status == RunStatus.SUCCEEDED
        and (r.model, r.max_model_len, r.max_num_batched_tokens) == (model, max_model_len, budget)
        and r.resolved().get("device") == device
        and (r.tokens or 0) > 0
        and _working_s(r) > 0
    ]
    if not alike:
        return None
    rates = sorted(r.tokens / (_working_s(r) * _engines(r)) for r in alike)
    return Rate(
        _median(rates),
        _median([r.startup_s for r in alike]),
        f"median of {len(alike)} earlier run{'s' if len(alike) > 1 else ''} of this store with this model, limits "
        f"and device ({_span(rates)} tokens/s per engine)",
        _median([r.maintenance_s or 0.0 for r in alike]),
    )


def rate_from_bench(rows: list[dict], model: str, max_model_len: int, budget: int, device: str) -> Rate | None:
    """The median per-engine rate of the store's benchmark table's pipeline runs with this model, limits and device
    (`python -m benchmarks.bench` run against this store), and their median start-up."""
    alike = [
        r
        for r in rows
        if r.get("kind") == "pipeline"
        and not r.get("error")
        and (r.get("model"), r.get("device")) == (model, device)
        and (r.get("max_model_len"), r.get("max_num_batched_tokens")) == (max_model_len, budget)
        and (r.get("tokens_per_s") or 0) > 0
        and r.get("startup_s") is not None
    ]
    if not alike:
        return None
    rates = sorted(r["tokens_per_s"] / max(json.loads(r.get("params") or "{}").get("actors") or 1, 1) for r in alike)
    return Rate(
        _median(rates),
        _median([r["startup_s"] for r in alike]),
        f"median of {len(alike)} benchmark run{'s' if len(alike) > 1 else ''} in this store with this model, limits "
        f"and device ({_span(rates)} tokens/s per engine; no earlier run of this store yet)",
    )


def _span(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:,.0f}" if round(low) == round(high) else f"{low:,.0f}-{high:,.0f}"


def _working_s(run: RunRecord) -> float:
    if run.wall_s is None or run.startup_s is None or not run.engine_s:
        return 0.0
    return run.wall_s - run.startup_s - (run.maintenance_s or 0.0)


def _engines(run: RunRecord) -> int:
    """Engines the run held: its engine-seconds over its wall time."""
    return max(1, round(run.engine_s / run.wall_s))


def _median(values: list[float]) -> float:
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def rate_from_flops(shape: ModelShape, lengths: Counter, peak_tflops: float) -> Rate:
    mean = max(1, round(sum(k * v for k, v in lengths.items()) / max(sum(lengths.values()), 1)))
    per_token = flops_per_token(shape, [mean])
    return Rate(
        peak_tflops * 1e12 * ASSUMED_MFU / per_token,
        None,
        f"the model's FLOPs per token at a {ASSUMED_MFU:.0%} share of the device's {peak_tflops:,.0f} TFLOP/s peak "
        "(assumed: nothing has measured this store's rate yet)",
    )


@dataclass(frozen=True)
class Projection:
    embed_s: float
    """Seconds of working time the engines need to embed the tokens, all engines working."""
    wall_s: float
    """Start-up (when known), embed_s and the time after the last commit."""
    device_hours: float
    cost: float | None
    rate: Rate

    def text(self) -> str:
        startup = f" + {self.rate.startup_s:,.0f} s start-up" if self.rate.startup_s is not None else ""
        after = f" + {self.rate.after_s:,.0f} s maintenance" if self.rate.after_s >= 0.5 else ""
        cost = f", cost {self.cost:,.4g}" if self.cost is not None else ""
        return (
            f"about {self.embed_s:,.0f} s of embedding{startup}{after} = {self.wall_s:,.0f} s, "
            f"{self.device_hours:.4g} device-hours{cost}; rate: {self.rate.source}"
        )


def project(tokens: float, engines: int, rate: Rate, devices_per_engine: float, price: float | None) -> Projection:
    embed_s = tokens / (rate.tokens_per_engine_s * max(engines, 1))
    wall_s = embed_s + (rate.startup_s or 0.0) + rate.after_s
    device_hours = wall_s * engines * devices_per_engine / 3600
    return Projection(embed_s, wall_s, device_hours, device_hours * price if price is not None else None, rate)
