"""The model's own tokenizer, loaded from its directory with local files only. No ray or vllm imports."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from tokenizers import Tokenizer as HFTokenizer

from pipeline.errors import ConfigError
from pipeline.stages.tokenizer_cache import cache_key, cached_backend, keep_backend


@runtime_checkable
class Tokenizer(Protocol):
    prefix_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...]

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids without special tokens, and each token's character span in `text`."""
        ...

    @property
    def num_special_tokens(self) -> int:
        """How many ids `with_special_tokens` adds around a sequence."""
        ...

    def with_special_tokens(self, ids: list[int]) -> list[int]:
        """The ids as the engine gets them: the model's special tokens around them."""
        ...


@dataclass
class FastTokenizer:
    """A Hugging Face fast tokenizer with truncation and padding switched off."""

    backend: HFTokenizer
    prefix_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...]

    segment_chars: int = 200_000
    """Longer texts are tokenized in pieces cut at whitespace, which bounds the tokenizer's memory."""

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        if len(text) <= self.segment_chars:
            enc = self.backend.encode(text, add_special_tokens=False)
            return enc.ids, enc.offsets
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        for start, end in _segments(text, self.segment_chars):
            enc = self.backend.encode(text[start:end], add_special_tokens=False)
            piece = [(a + start, b + start) for a, b in enc.offsets]
            if piece and start > 0:
                piece[0] = _trim_leading_space(text, *piece[0])
            ids.extend(enc.ids)
            offsets.extend(piece)
        return ids, offsets

    @property
    def num_special_tokens(self) -> int:
        return len(self.prefix_ids) + len(self.suffix_ids)

    def with_special_tokens(self, ids: list[int]) -> list[int]:
        return [*self.prefix_ids, *ids, *self.suffix_ids]


def _trim_leading_space(text: str, a: int, b: int) -> tuple[int, int]:
    """A piece starts at whitespace, which offset trimming keeps out of a word token (or puts after an empty
    one) inside a whole text; whitespace tokens keep it."""
    if a == b or text[a:b].strip():
        while a < len(text) and text[a].isspace():
            a += 1
        b = max(a, b)
    return a, b


_WHITESPACE_RUN = re.compile(r"\s+")


def _segments(text: str, size: int) -> list[tuple[int, int]]:
    """Pieces of about `size` characters, cut where a run of whitespace starts (a paragraph break if there is
    one in the last tenth): tokenizers split words at whitespace, so the pieces tokenize as the whole does."""
    spans, start = [], 0
    while len(text) - start > size:
        lo, hi = start + size - size // 10, start + size
        cut = paragraph = None
        for run in _WHITESPACE_RUN.finditer(text, lo, hi):
            if not text[run.start() - 1].isspace():
                cut = run.start()
                if "\n\n" in run.group():
                    paragraph = run.start()
        cut = paragraph or cut or hi  # no whitespace in the window: a cut inside a word, the only choice left
        spans.append((start, cut))
        start = cut
    spans.append((start, len(text)))
    return spans


def load_tokenizer(model_dir: str | Path, trust_remote_code: bool = False) -> FastTokenizer:
    """Load the tokenizer the way vLLM and transformers do (tokenizer_config.json applied), offline; from the
    tokenizer cache when these files were loaded before."""
    key = cache_key(Path(model_dir), trust_remote_code) if Path(model_dir).is_dir() else None
    backend = cached_backend(key) if key else None
    if backend is None:
        backend = _transformers_backend(model_dir, trust_remote_code)
        if key:
            keep_backend(key, backend)
    backend.no_truncation()
    backend.no_padding()
    prefix, suffix = _special_affixes(backend)
    return FastTokenizer(backend, prefix, suffix)


def _transformers_backend(model_dir: str | Path, trust_remote_code: bool) -> HFTokenizer:
    from transformers import AutoTokenizer  # heavy import (torch comes with it), only on a cache miss

    try:
        hf = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        hint = (
            " (it asks for trust_remote_code: set model.trust_remote_code = true if you trust it)"
            if ("trust_remote_code" in str(exc))
            else ""
        )
        msg = f"cannot load the tokenizer from {model_dir}{hint}: {exc}"
        raise ConfigError(msg) from None
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        msg = f"the tokenizer in {model_dir} has no fast (tokenizers) backend; add a tokenizer.json to the directory"
        raise ConfigError(msg)
    return HFTokenizer.from_str(backend.to_str())


def _special_affixes(backend: HFTokenizer) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The ids the post-processor puts around a single sequence, found by encoding a probe both ways."""
    probe = "probe text"
    bare = backend.encode(probe, add_special_tokens=False).ids
    full = backend.encode(probe, add_special_tokens=True).ids
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            prefix, suffix = tuple(full[:start]), tuple(full[start + len(bare) :])
            if len(prefix) + len(suffix) != backend.num_special_tokens_to_add(False):
                break
            return prefix, suffix
    msg = "the tokenizer's post-processor does not wrap a sequence in fixed special tokens; it is not supported"
    raise ConfigError(msg)
