"""A run's progress as counts, and the ETA from tokens. Pure: the Ray board that collects the counts and the
display that shows them live elsewhere.

The plan is a barrier (every document is read and planned before the first is chunked), so by the time chunks
flow the plan stage has counted the documents and text bytes to chunk. The chunk stage counts the bytes it has
chunked and the tokens they became; their ratio turns the bytes still queued into tokens, and tokens over the
engines' rate give the ETA. Tokens, not documents: one long document costs as much as a thousand short ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import schema as s


@dataclass
class Progress:
    docs_planned: int = 0
    """Documents the plan sent to chunking (new or changed)."""
    bytes_planned: int = 0
    """Their text, UTF-8 bytes."""
    docs_chunked: int = 0
    bytes_chunked: int = 0
    tokens_chunked: int = 0
    """Tokens of the chunks made so far (special tokens included: what the engine computes)."""
    chunks_made: int = 0
    engines_ready: int = 0
    chunks_embedded: int = 0
    tokens_embedded: int = 0
    chunks_written: int = 0
    rejected: int = 0
    unchanged: int = 0

    def add(self, counts: dict[str, int]) -> None:
        for key, value in counts.items():
            setattr(self, key, getattr(self, key) + int(value))

    def chunks_queued(self) -> int:
        """Chunks made and not yet embedded."""
        return max(self.chunks_made - self.chunks_embedded, 0)

    def tokens_expected(self) -> int | None:
        """All tokens this run will embed: those chunked, plus the queued bytes at the chunked tokens per byte.
        None until something was chunked."""
        if self.bytes_chunked <= 0 or self.tokens_chunked <= 0:
            return None
        queued = max(self.bytes_planned - self.bytes_chunked, 0)
        return self.tokens_chunked + round(queued * self.tokens_chunked / self.bytes_chunked)


@dataclass
class Rate:
    """Tokens written per second over a sliding window of (seconds, tokens written) observations."""

    window_s: float = 30.0
    points: list[tuple[float, int]] = field(default_factory=list)

    def observe(self, t: float, tokens_written: int) -> None:
        self.points.append((t, tokens_written))
        while len(self.points) > 2 and self.points[1][0] <= t - self.window_s:
            self.points.pop(0)

    def tokens_per_s(self) -> float | None:
        if len(self.points) < 2:
            return None
        (t0, n0), (t1, n1) = self.points[0], self.points[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 and n1 > n0 else None


def eta_s(progress: Progress, tokens_per_s: float | None) -> float | None:
    """Seconds until the expected tokens are embedded at the given rate; None while either is unknown."""
    expected = progress.tokens_expected()
    if expected is None or not tokens_per_s:
        return None
    return max(expected - progress.tokens_embedded, 0) / tokens_per_s


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "--"
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_line(progress: Progress, elapsed_s: float, tokens_per_s: float | None) -> str:
    """One line: documents chunked and chunks and tokens embedded of the totals, tokens/s and the ETA."""
    p = progress
    expected = p.tokens_expected()
    tokens = f"{_short(p.tokens_embedded)}/{_short(expected)}" if expected else _short(p.tokens_embedded)
    rate = f"{tokens_per_s:,.0f} tok/s" if tokens_per_s else ("-- tok/s" if p.engines_ready else "starting engines")
    docs = f"docs {p.docs_chunked:,}/{p.docs_planned:,}" if p.docs_planned else "planning"
    chunks = f"{p.chunks_embedded:,}/{p.chunks_embedded + p.chunks_queued():,}" if p.tokens_chunked else "0"
    extra = f" · {p.rejected:,} rejected" if p.rejected else ""
    return (
        f"{duration(elapsed_s)} · {docs} · chunks {chunks} · tokens {tokens} · {rate} · "
        f"ETA {duration(eta_s(p, tokens_per_s))}{extra}"
    )


def _short(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _to_chunk(docs: pa.Table) -> pa.Table:
    mask = pc.and_(pc.is_in(docs.column(s.FATE), pa.array(s.FATES_TO_CHUNK)), pc.is_null(docs.column(s.REJECT_REASON)))
    return docs.filter(pc.fill_null(mask, False))


def planned_counts(docs: pa.Table) -> dict[str, int]:
    """What a planned batch sends to chunking: documents and their text bytes."""
    chunked = _to_chunk(docs)
    size = pc.sum(pc.binary_length(chunked.column(s.TEXT))).as_py() if len(chunked) else 0
    return {"docs_planned": len(chunked), "bytes_planned": int(size or 0)}


def chunked_counts(docs: pa.Table, chunks: pa.Table) -> dict[str, int]:
    """What one chunk call did: the planned documents it chunked, their bytes, and the tokens of its chunks."""
    planned = planned_counts(docs)
    made = embedded_counts(chunks)
    return {
        "docs_chunked": planned["docs_planned"],
        "bytes_chunked": planned["bytes_planned"],
        "chunks_made": made["chunks_embedded"],
        "tokens_chunked": made["tokens_embedded"],
    }


def embedded_counts(chunks: pa.Table) -> dict[str, int]:
    """Chunk rows (not reject or marker rows) of a batch and their tokens."""
    tokens = chunks.column(s.N_TOKENS)
    total = pc.sum(tokens).as_py() if len(chunks) else 0
    return {"chunks_embedded": len(tokens) - tokens.null_count, "tokens_embedded": int(total or 0)}
