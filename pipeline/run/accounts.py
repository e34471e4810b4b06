"""A run's accounts: what it has committed, counted on the driver from the group records and from what committing
them did (documents by fate, chunks, tokens, rejects, busy seconds per stage, what the engines reported, what
reached the driver), and the outcome they add up to. Plain Python: no store, no ray, no vllm."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from pipeline import schema as s
from pipeline.records import GroupRecord
from pipeline.stats import STAGES, RunTotals
from pipeline.store.group_commit import Applied, Finished


@dataclass(frozen=True)
class RunOutcome:
    totals: RunTotals
    added: int
    replaced: int
    skipped: int
    removed: int
    stages: dict[str, float] = field(default_factory=dict)
    """Busy seconds per stage, summed over workers: read_s, parse_s, chunk_s, embed_s, wait_s, write_s."""
    chunks_discarded: int = 0
    """Embedded but not stored: chunks of documents the engine refused in part."""
    tokens_discarded: int = 0
    engine_tokens: int = 0
    """Tokens the engines report having processed, kept or discarded; equals the chunker's count."""
    first_engine_ready: datetime | None = None
    groups: int = 0
    """Groups of fragments committed (one chunks-table version each, plus one per removal batch)."""
    record_bytes: int = 0
    """Bytes of the group records that reached the driver: its whole share of the run's data."""
    nodes: tuple[str, ...] = ()
    """Nodes whose tasks wrote the committed fragments."""
    commit_s: float = 0.0
    """Driver seconds spent committing; the rest of write_s is the workers' fragment writing."""

    @property
    def tokens_embedded(self) -> int:
        """Tokens the engines embedded, stored or discarded."""
        return self.totals.tokens + self.tokens_discarded

    @property
    def chunks_embedded(self) -> int:
        return self.totals.chunks + self.chunks_discarded


class RunAccounts:
    """The run's counts, group by group; `outcome` adds them up at any moment (a failed run's row says what it
    kept)."""

    def __init__(self):
        self.rows = self.tokens = self.rejected = 0
        self.docs = dict.fromkeys((s.Fate.NEW, s.Fate.CHANGED, s.Fate.UNCHANGED), 0)
        self.stages = dict.fromkeys(STAGES, 0.0)
        self.embedded = RunTotals()
        """Chunks and tokens the engines embedded (stored or not)."""
        self.engine_tokens = 0
        self.engine_info: dict | None = None
        self.engine_ready: list[datetime] = []
        self.record_bytes = 0
        self.nodes: set[str] = set()
        self.commit_s = 0.0
        """Seconds the driver spent committing (chunks, rejects, batch stats); write_s adds the workers' writing."""
        self.end = Finished()

    def group(self, record: GroupRecord, applied: Applied) -> None:
        """One group record, and what committing it did."""
        self.record_bytes += len(record.to_json())
        self._committing(applied.seconds)
        if not applied.new:
            return
        if record.fragments:
            self.nodes.add(record.node)
        self.rows += record.rows
        self.tokens += record.tokens
        self.rejected += applied.rejected
        for fate in self.docs:
            self.docs[fate] += record.count(fate)
        for stage, seconds in record.stages.items():
            if stage in self.stages:
                self.stages[stage] += seconds
        for payload in record.batches:
            batch = payload.batch
            self.stages["wait_s"] += batch.wait_s
            self.stages["embed_s"] += batch.embed_s
            self.engine_tokens += batch.engine_tokens
            self.embedded += RunTotals(chunks=batch.n_chunks, tokens=batch.n_tokens)
            if payload.engine is not None:
                self.engine_ready.append(datetime.fromisoformat(payload.engine["ready_at"]))
                self.engine_info = self.engine_info or payload.engine

    def finished(self, end: Finished) -> None:
        """What the end of the run removed: discarded chunks no longer count, nor documents whose first chunk went."""
        self.end = end
        self._committing(end.seconds)

    def _committing(self, seconds: float) -> None:
        self.commit_s += seconds
        self.stages["write_s"] += seconds

    def written(self) -> dict[str, int]:
        """What the progress display counts as written."""
        return {"chunks_written": self.rows, "rejected": self.rejected, "unchanged": self.docs[s.Fate.UNCHANGED]}

    def outcome(self, groups: int) -> RunOutcome:
        """The counts so far; `groups`: the transactions committed."""
        chunks, tokens = self.rows - self.end.discarded.chunks, self.tokens - self.end.discarded.tokens
        added = self.docs[s.Fate.NEW] - self.end.unstored[s.Fate.NEW]
        replaced = self.docs[s.Fate.CHANGED] - self.end.unstored[s.Fate.CHANGED]
        skipped = self.docs[s.Fate.UNCHANGED]
        return RunOutcome(
            totals=RunTotals(
                docs_in=added + replaced + skipped + self.rejected,
                docs=added + replaced,
                chunks=chunks,
                tokens=tokens,
                rejected=self.rejected,
            ),
            added=added,
            replaced=replaced,
            skipped=skipped,
            removed=self.end.removed,
            stages=dict(self.stages),
            engine_tokens=self.engine_tokens,
            first_engine_ready=min(self.engine_ready, default=None),
            chunks_discarded=self.embedded.chunks - chunks,
            tokens_discarded=self.embedded.tokens - tokens,
            groups=groups,
            record_bytes=self.record_bytes,
            nodes=tuple(sorted(self.nodes)),
            commit_s=self.commit_s,
        )
