"""An independent embedding of text: the model's tokenizer and a plain transformers forward pass with the
pooling its sentence-transformers files describe. Used to check what the engine wrote. No ray or vllm;
torch and transformers are imported on first use.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError


def pooling_of(model_dir: Path) -> tuple[str, bool]:
    """(mode, normalize) from modules.json and the pooling module's config; mean + normalize by default."""
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return "mean", True
    modules = json.loads(modules_file.read_text())
    normalize = any(m["type"].endswith("Normalize") for m in modules)
    mode = "mean"
    for m in modules:
        if m["type"].endswith("Pooling"):
            cfg = json.loads((model_dir / m["path"] / "config.json").read_text())
            if cfg.get("pooling_mode_cls_token"):
                mode = "cls"
            elif cfg.get("pooling_mode_lasttoken"):
                mode = "last"
            elif not cfg.get("pooling_mode_mean_tokens", True):
                msg = f"pooling in {model_dir} is not cls, last-token or mean; the reference cannot reproduce it"
                raise ConfigError(msg)
    return mode, normalize


class ReferenceEmbedder:
    def __init__(self, model_dir: str | Path, trust_remote_code: bool = False):
        import torch
        from transformers import AutoModel
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # "Loading weights" bars on a query's stderr
        self.torch = torch
        self.model_dir = Path(model_dir)
        self.model = AutoModel.from_pretrained(
            str(model_dir), local_files_only=True, trust_remote_code=trust_remote_code, dtype=torch.float32
        ).eval()
        self.mode, self.normalize = pooling_of(self.model_dir)

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
