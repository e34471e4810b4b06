"""Token-exact chunking with the model's own tokenizer. Pure: no ray or vllm imports.

A chunk is a span of the document's tokens. Its token ids (special tokens included) are exactly what
the engine receives, and its text is the exact substring of the document those tokens came from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pyarrow as pa

from pipeline import schema as s
from pipeline.errors import ChunkBudgetError
from pipeline.plan.chunk_plan import ChunkPlan
from pipeline.stages.tokenizer import FastTokenizer

BREAK_NONE, BREAK_WORD, BREAK_SENTENCE, BREAK_PARAGRAPH = 0, 1, 2, 3
_SENTENCE_END = frozenset(".!?;:\u3002\uff01\uff1f")


def break_strength(text: str, offsets: list[tuple[int, int]], i: int) -> int:
    """How good a place it is to end a chunk just before token i (0 < i < len(offsets))."""
    prev_end, start = offsets[i - 1][1], offsets[i][0]
    if start <= prev_end:
        return BREAK_NONE
    gap = text[prev_end:start]
    newlines = gap.count("\n")
    if newlines >= 2:
        return BREAK_PARAGRAPH
    if newlines == 1 or (prev_end > 0 and text[prev_end - 1] in _SENTENCE_END):
        return BREAK_SENTENCE
    return BREAK_WORD


def split_spans(
    n_tokens: int, budget: int, overlap: int, window: int, strength: Callable[[int], int]
) -> list[tuple[int, int]]:
    """Token spans [start, end) of at most `budget` tokens covering 0..n_tokens in order.

    Each cut is the strongest break (paragraph > sentence > word) among the last `window` positions
    before the budget, the latest of equals. With overlap, the next span starts `overlap` tokens
    before the cut, moved back to the start of a word when one is near.
    """
    if budget < 1 or overlap >= budget:
        msg = f"chunk budget of {budget} content tokens cannot hold an overlap of {overlap} tokens"
        raise ChunkBudgetError(msg)
    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        hi = start + budget
        if hi >= n_tokens:
            spans.append((start, n_tokens))
            return spans
        lo = max(start + overlap + 1, hi - window)
        end, best = hi, strength(hi)
        for i in range(hi - 1, lo - 1, -1):
            if best == BREAK_PARAGRAPH:
                break
            k = strength(i)
            if k > best:
                end, best = i, k
        spans.append((start, end))
        nxt = end - overlap
        if overlap and strength(nxt) == BREAK_NONE:
            for i in range(nxt - 1, max(start, nxt - window), -1):
                if strength(i) != BREAK_NONE:
                    nxt = i
                    break
        start = nxt


def chunk_id(fingerprint: str, doc_id: str, doc_hash: str, index: int) -> str:
    return hashlib.sha256(f"{fingerprint}\0{doc_id}\0{doc_hash}\0{index}".encode()).hexdigest()[:32]


class Chunker:
    """Documents (DOC_SCHEMA) in, chunks (CHUNK_SCHEMA) out; rejected documents pass through as reject rows."""

    def __init__(self, tokenizer: FastTokenizer, plan: ChunkPlan):
        self.tokenizer = tokenizer
        self.plan = plan
        self.budget = plan.max_tokens - tokenizer.num_special_tokens
        self.window = int(self.budget * plan.boundary_window)

    def chunk(self, docs: pa.Table) -> pa.Table:
        rows: list[dict] = []
        for doc in docs.to_pylist():
            if doc[s.REJECT_REASON] is None:
                rows.extend(self.chunk_document(doc))
            else:
                rows.append(_reject_row(doc, doc[s.REJECT_REASON], doc[s.REJECT_DETAIL]))
        return pa.Table.from_pylist(rows, schema=s.CHUNK_SCHEMA)

    def chunk_document(self, doc: dict) -> list[dict]:
        text = doc[s.TEXT]
        ids, offsets = self.tokenizer.encode(text)
        if not ids:
            return [_reject_row(doc, s.RejectReason.NO_TOKENS, "the tokenizer produced no tokens for this text")]

        def strength(i: int) -> int:
            return break_strength(text, offsets, i)

        spans = split_spans(len(ids), self.budget, self.plan.overlap_tokens, self.window, strength)
        rows = []
        for index, (start, end) in enumerate(spans):
            token_ids = self.tokenizer.with_special_tokens(ids[start:end])
            if len(token_ids) > self.plan.max_tokens:
                msg = f"chunk of {len(token_ids)} tokens exceeds the limit of {self.plan.max_tokens}"
                raise ChunkBudgetError(msg)
            char_start, char_end = offsets[start][0], offsets[end - 1][1]
            rows.append(
                {
                    s.CHUNK_ID: chunk_id(self.plan.fingerprint, doc[s.DOC_ID], doc[s.DOC_HASH], index),
                    s.DOC_ID: doc[s.DOC_ID],
                    s.SOURCE: doc[s.SOURCE],
                    s.LINE: doc[s.LINE],
                    s.CHUNK_INDEX: index,
                    s.DOC_CHUNKS: len(spans),
                    s.TEXT: text[char_start:char_end],
                    s.CHAR_START: char_start,
                    s.CHAR_END: char_end,
                    s.N_TOKENS: len(token_ids),
                    s.DOC_HASH: doc[s.DOC_HASH],
                    s.TOKEN_IDS: token_ids,
                }
            )
        return rows


def _reject_row(doc: dict, reason: str, detail: str | None) -> dict:
    return {
        s.DOC_ID: doc[s.DOC_ID],
        s.SOURCE: doc[s.SOURCE],
        s.LINE: doc[s.LINE],
        s.REJECT_REASON: reason,
        s.REJECT_DETAIL: detail,
    }
