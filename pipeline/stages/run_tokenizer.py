"""The run's tokenizer: the model's, checked against the room a chunk leaves for its special tokens. Apart from
`stages.tokenizer`, which chunk actors import without the plan or the settings."""

from __future__ import annotations

from pipeline.plan.job import LengthPlan, check_chunk_room
from pipeline.settings import Settings
from pipeline.stages.tokenizer import FastTokenizer, load_tokenizer


def checked_tokenizer(settings: Settings, lengths: LengthPlan) -> FastTokenizer:
    """The model's tokenizer, with the chunk's room checked against its special tokens. Loading it takes a few
    seconds (mostly importing transformers): a run does it while its engines start, and the chunk actors get it
    loaded, importing only the tokenizers library."""
    tokenizer = load_tokenizer(lengths.model.path, settings.model.trust_remote_code)
    check_chunk_room(settings, lengths.chunk, tokenizer.num_special_tokens)
    return tokenizer
