"""Test doubles for the logic around an engine; never the only test of a feature."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from pipeline.errors import InputRejected


class FakeEmbedder:
    """Deterministic unit vectors from a hash of the token ids; for tests of the logic around an engine."""

    def __init__(self, dim: int = 8, refuse_token: int | None = None):
        self.dim = dim
        self.refuse_token = refuse_token
        self.tokens_processed = 0

    def embed(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        if self.refuse_token is not None and any(self.refuse_token in ids for ids in token_ids):
            msg = f"Token id {self.refuse_token} is out of vocabulary"
            raise InputRejected(msg)
        out = np.empty((len(token_ids), self.dim), dtype=np.float32)
        for row, ids in enumerate(token_ids):
            seed = int.from_bytes(hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).digest()[:8], "little")
            vec = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            out[row] = vec / np.linalg.norm(vec)
            self.tokens_processed += len(ids)
        return out

    def info(self) -> dict:
        return {"engine": "fake", "dim": self.dim}
