"""The estimate's tally: the chunk stage's rows counted in the workers, block by block; the driver sums small
records."""

from __future__ import annotations

import pyarrow as pa
from ray.exceptions import RayError

from pipeline.plan.estimate import PieceIndex, Sample, SampledTally, Tally
from pipeline.plan.job import RunPlan
from pipeline.run.ray.group_records import pipeline_error
from pipeline.run.ray.stages import RECORD, chunk_documents, split_pieces
from pipeline.settings import Settings
from pipeline.stages.pieces import sample_pieces
from pipeline.stages.sources import Inputs
from pipeline.stages.tokenizer import FastTokenizer
from pipeline.store.stored_keys import StoredKeys


def tally_chunks(
    settings: Settings,
    plan: RunPlan,
    inputs: Inputs,
    tokenizer: FastTokenizer,
    keys: StoredKeys | None,
    sample: Sample | None = None,
) -> SampledTally:
    """The chunk stage's rows (of a seeded sample of the pieces, when `sample` says so), tallied in the workers
    block by block: the driver sums small records."""
    pieces = sampled = index = None
    if sample is not None:
        pieces = split_pieces(inputs.shards, inputs.fs, settings.input.piece_bytes)
        sampled, index = sample_pieces(pieces, sample)
    chunks = chunk_documents(settings, plan, inputs, tokenizer, keys, sampled=sampled)
    tallies = chunks.map_batches(
        _tally, fn_kwargs={"pieces": index}, batch_size=None, batch_format="pyarrow", num_cpus=0.25
    )
    total = Tally()
    try:
        for batch in tallies.iter_batches(batch_size=None, batch_format="pyarrow"):
            for payload in batch.column(RECORD).to_pylist():
                total = total + Tally.from_json(payload)
    except RayError as exc:
        raise pipeline_error(exc) from exc
    return SampledTally(total, len(pieces) if pieces else None, len(sampled) if sampled else None)


def _tally(rows: pa.Table, pieces: PieceIndex | None) -> pa.Table:
    return pa.table({RECORD: [Tally.of(rows, pieces).to_json()]})
