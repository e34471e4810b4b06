"""How documents are cut into chunks, fixed before the run: the chunker's settings and their fingerprint, stored
with every chunk so that a change of chunking re-embeds. No ray or vllm imports."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChunkPlan:
    max_tokens: int
    """Most tokens in a chunk, special tokens included; at most max_model_len - 1."""
    overlap_tokens: int
    boundary_window: float
    model_id: str

    @property
    def fingerprint(self) -> str:
        return f"{self.model_id}|{self.max_tokens}|{self.overlap_tokens}|{self.boundary_window}"
