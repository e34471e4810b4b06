"""Check what a run wrote against an independent embedding of each chunk's text. No ray or vllm imports."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pyarrow.compute as pc

from pipeline import schema as s
from pipeline.engine.reference import ReferenceEmbedder, cosine
from pipeline.errors import NoIngestionRun
from pipeline.plan.model_dir import ModelDir
from pipeline.stages.tokenizer import load_tokenizer
from pipeline.store.lance_store import LanceStore
from pipeline.store.runs import RunLog
from pipeline.store.search import SearchOptions, vector_options
from pipeline.store.sql import sql_list, sql_str


@dataclass(frozen=True)
class VerifyReport:
    run_id: str
    checked: int
    min_cosine: float
    mean_cosine: float
    token_mismatches: int
    over_limit: int
    self_found_first: int
    accounting_ok: bool
    accounting: dict

    def ok(self, min_cosine: float) -> bool:
        """Vectors as an independent embedding makes them, each finding its own chunk first, within limits, and
        counts that add up. A run that wrote no chunks (nothing changed) has no vectors to check."""
        vectors_ok = self.checked == 0 or (self.min_cosine >= min_cosine and self.self_found_first == self.checked)
        return vectors_ok and self.over_limit == 0 and self.accounting_ok

    def lines(self) -> list[str]:
        if self.checked == 0:
            return [
                f"run {self.run_id} wrote no chunks: no vectors to re-embed",
                f"chunks over the run's chunk limit (whole table): {self.over_limit}",
                f"accounting {'ok' if self.accounting_ok else 'MISMATCH'}: {self.accounting}",
            ]
        return [
            f"run {self.run_id}: {self.checked} chunks re-embedded independently (transformers, same pooling)",
            f"cosine to stored vectors: min {self.min_cosine:.6f}, mean {self.mean_cosine:.6f}",
            f"chunks whose text re-tokenizes to a different length: {self.token_mismatches}",
            f"chunks over the run's chunk limit (whole table): {self.over_limit}",
            f"chunks whose own vector finds them first (ties with identical text count): "
            f"{self.self_found_first}/{self.checked}",
            f"accounting {'ok' if self.accounting_ok else 'MISMATCH'}: {self.accounting}",
        ]


def verify_run(store: LanceStore, sample: int, seed: int = 0, model_dir: str | None = None) -> VerifyReport:
    run = RunLog(store).latest(status=None)
    if run is None:
        msg = f"no ingestion run in {store.uri} (table prefix {store.names.runs[: -len('runs')]!r})"
        raise NoIngestionRun(msg)
    model_dir = model_dir or run.resolved()["model_dir"]
    chunks_table = store.open_chunks()
    of_run = f"{s.RUN_ID} = {sql_str(run.run_id)}"
    run_chunks = store.read(store.names.chunks, of_run, [s.CHUNK_ID, s.DOC_ID, s.N_TOKENS])
    over_limit = chunks_table.count_rows(f"{s.N_TOKENS} > {int(run.chunk_tokens)}")
    batches = store.read(store.names.batches, of_run)
    rejects = store.read(store.names.rejects, of_run)
    chunk_docs = len(set(run_chunks.column(s.DOC_ID).to_pylist()))
    pairs = {
        "runs.chunks = chunks rows": (run.chunks, run_chunks.num_rows),
        "runs.chunks + chunks_discarded = sum(batches.n_chunks)": (
            run.chunks + run.chunks_discarded,
            pc.sum(batches.column("n_chunks")).as_py() or 0,
        ),
        "runs.tokens = sum(chunks.n_tokens)": (run.tokens, pc.sum(run_chunks.column(s.N_TOKENS)).as_py() or 0),
        "runs.tokens + tokens_discarded = sum(batches.n_tokens)": (
            run.tokens + run.tokens_discarded,
            pc.sum(batches.column(s.N_TOKENS)).as_py() or 0,
        ),
        "runs.docs = distinct chunk doc ids": (run.docs, chunk_docs),
        "runs.rejected = rejects rows": (run.rejected, rejects.num_rows),
        "runs.docs_in = docs + skipped + rejected": (run.docs_in, run.docs + run.skipped + run.rejected),
    }
    accounting = {name: list(values) for name, values in pairs.items()}
    accounting_ok = all(x == y for x, y in pairs.values())

    chunk_ids = run_chunks.column(s.CHUNK_ID).to_pylist()
    picked = _read_chunks(store, random.Random(seed).sample(chunk_ids, min(sample, len(chunk_ids))))
    model = ModelDir.read(model_dir)
    tokenizer = load_tokenizer(model.path)
    reference = ReferenceEmbedder(model)
    cosines, mismatches, found_first = [], 0, 0
    for row in picked:
        ids = tokenizer.with_special_tokens(tokenizer.encode(row[s.TEXT])[0])
        mismatches += len(ids) != row[s.N_TOKENS]
        cosines.append(cosine(reference.embed_ids(ids), row[s.VECTOR]))
        found_first += _ranks_first(chunks_table, row)
    return VerifyReport(
        run_id=run.run_id,
        checked=len(picked),
        min_cosine=min(cosines, default=float("nan")),
        mean_cosine=sum(cosines) / len(cosines) if cosines else float("nan"),
        token_mismatches=mismatches,
        over_limit=over_limit,
        self_found_first=found_first,
        accounting_ok=accounting_ok,
        accounting=accounting,
    )


def _read_chunks(store: LanceStore, chunk_ids: list[str]) -> list[dict]:
    """The sampled chunks' texts and vectors: only those rows leave the store."""
    if not chunk_ids:
        return []
    where = f"{s.CHUNK_ID} IN ({sql_list(chunk_ids)})"
    return store.read(store.names.chunks, where, [s.CHUNK_ID, s.TEXT, s.N_TOKENS, s.VECTOR]).to_pylist()


def _ranks_first(table, row: dict, tie_eps: float = 1e-6) -> bool:
    """The chunk's own vector finds it at rank 1, or tied at rank 1 with chunks of identical vectors, searched as
    jobs.query searches: through an ANN index, its candidates re-ranked with exact distances (unranked, compressed
    distances can put another chunk first)."""
    query = vector_options(table.search(row[s.VECTOR]), SearchOptions()).limit(20)
    hits = query.select([s.CHUNK_ID, "_distance"]).to_list()
    if not hits:
        return False
    top = hits[0]["_distance"]
    return any(h[s.CHUNK_ID] == row[s.CHUNK_ID] for h in hits if h["_distance"] <= top + tie_eps)
