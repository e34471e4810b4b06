"""An independent embedding of text: the model's tokenizer and a plain transformers forward pass with the
pooling its sentence-transformers files describe. Used to check what the engine wrote. No ray or vllm;
torch and transformers are imported on first use.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import ConfigError
from pipeline.plan.model_dir import ModelDir

REPRODUCIBLE_POOLING = ("cls", "last", "mean")


class ReferenceEmbedder:
    def __init__(self, model: ModelDir, trust_remote_code: bool = False):
        if model.pooling.mode not in REPRODUCIBLE_POOLING:
            msg = f"pooling in {model.path} is not cls, last-token or mean; the reference cannot reproduce it"
            raise ConfigError(msg)
        import torch
        from transformers import AutoModel
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # "Loading weights" bars on a query's stderr
        self.torch = torch
        self.model = AutoModel.from_pretrained(
            str(model.path), local_files_only=True, trust_remote_code=trust_remote_code, dtype=torch.float32
        ).eval()
        self.mode, self.normalize = model.pooling.mode, model.pooling.normalize

    def embed_ids(self, token_ids: list[int]) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            ids = torch.tensor([token_ids])
            hidden = self.model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
        if self.mode == "cls":
            vec = hidden[0]
        elif self.mode == "last":
            vec = hidden[-1]
        else:
            vec = hidden.mean(dim=0)
        if self.normalize:
            vec = torch.nn.functional.normalize(vec, dim=0)
        return vec.numpy().astype(np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
