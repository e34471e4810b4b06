"""Parameter counts of an embedding model by component: from config.json arithmetic and from safetensors
headers (read without loading any weight). Pure: no ray, vllm or torch imports."""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigError

COMPONENTS = ("token_embedding", "positional", "embedding_other", "attention", "mlp", "norms", "heads", "other")
ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "camembert", "electra", "mpnet"}
_PADDED_POSITIONS = {"roberta", "xlm-roberta", "camembert", "mpnet"}
DTYPE_BYTES = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F64": 8,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


@dataclass(frozen=True)
class ModelShape:
    """What the memory arithmetic needs from config.json, for encoders (BERT family) and decoders (Llama family)."""

    model_type: str
    kind: str
    """'encoder' (bidirectional, learned positions) or 'decoder' (causal, rotary positions)."""
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_positions: int
    learned_positions: int
    """Rows of the learned positional table (0 for rotary models)."""
    type_vocab_size: int
    gated_mlp: bool
    attention_bias: bool
    qk_norm: bool
    tie_word_embeddings: bool
    torch_dtype: str | None

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim


def text_config(config: dict) -> dict:
    """The text model's part of a config.json (multimodal configs nest one as text_config)."""
    return config.get("text_config") or config


def usable_positions(config: dict) -> int | None:
    """Longest sequence the model's positions allow; RoBERTa-family tables start after padding_idx + 1 rows."""
    text = text_config(config)
    positions = text.get("max_position_embeddings") or text.get("n_positions")
    if not positions:
        return None
    if config.get("model_type") in _PADDED_POSITIONS:
        positions -= int(text.get("pad_token_id", 1)) + 1
    return int(positions)


def shape_from_config(config: dict) -> ModelShape:
    text = text_config(config)
    model_type = str(config.get("model_type", "unknown"))
    kind = "encoder" if model_type in ENCODER_TYPES else "decoder"
    hidden = int(text["hidden_size"])
    heads = int(text["num_attention_heads"])
    learned = int(text.get("max_position_embeddings", 0)) if kind == "encoder" else 0
    return ModelShape(
        model_type=model_type,
        kind=kind,
        vocab_size=int(text["vocab_size"]),
        hidden_size=hidden,
        num_layers=int(text["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(text.get("num_key_value_heads") or heads),
        head_dim=int(text.get("head_dim") or hidden // heads),
        intermediate_size=int(text["intermediate_size"]),
        max_positions=usable_positions(config) or 0,
        learned_positions=learned,
        type_vocab_size=int(text.get("type_vocab_size", 0)) if kind == "encoder" else 0,
        gated_mlp=kind == "decoder",
        attention_bias=kind == "encoder" or bool(text.get("attention_bias", model_type == "qwen2")),
        qk_norm=model_type.startswith("qwen3"),
        tie_word_embeddings=bool(
            config.get("tie_word_embeddings", text.get("tie_word_embeddings", kind == "encoder"))
        ),
        torch_dtype=config.get("torch_dtype") or config.get("dtype"),
    )


def params_from_shape(shape: ModelShape, lm_head: bool = False, pooler: bool | None = None) -> dict[str, int]:
    """Exact parameter counts per component for the standard layouts (BertModel; Llama/Qwen/Phi-3 decoders).

    lm_head: count an untied output projection (decoders keep one in the checkpoint unless tied; a pooling
    model does not use it). pooler: BERT's pooler dense layer (default: present for encoders).
    """
    h, i, layers = shape.hidden_size, shape.intermediate_size, shape.num_layers
    q, kv = shape.q_size, shape.kv_size
    counts = dict.fromkeys(COMPONENTS, 0)
    counts["token_embedding"] = shape.vocab_size * h
    counts["positional"] = shape.learned_positions * h
    counts["embedding_other"] = shape.type_vocab_size * h
    attention = h * q + 2 * h * kv + q * h
    if shape.attention_bias:
        attention += q + 2 * kv
    if shape.kind == "encoder":
        attention += h  # output projection bias
        mlp = 2 * h * i + i + h
        norms = layers * 2 * (2 * h) + 2 * h  # two LayerNorms per layer and one after the embeddings
    else:
        mlp = 3 * h * i if shape.gated_mlp else 2 * h * i
        norms = layers * 2 * h + h + (layers * 2 * shape.head_dim if shape.qk_norm else 0)
    counts["attention"] = layers * attention
    counts["mlp"] = layers * mlp
    counts["norms"] = norms
    if pooler if pooler is not None else shape.kind == "encoder":
        counts["heads"] += h * h + h
    if lm_head and not shape.tie_word_embeddings:
        counts["heads"] += shape.vocab_size * h
    return counts


_RULES = [
    ("heads", re.compile(r"(^|\.)(lm_head|pooler|score|classifier)(\.|$)")),
    ("token_embedding", re.compile(r"(embed_tokens|word_embeddings|\.wte)\.weight$")),
    ("positional", re.compile(r"(position_embeddings|embed_positions|\.wpe)\.weight$")),
    ("embedding_other", re.compile(r"token_type_embeddings")),
    ("other", re.compile(r"(vision|visual|image|img_|mm_projector|multi_modal)")),
    ("norms", re.compile(r"(norm|ln_\d|ln_f)", re.IGNORECASE)),
    ("attention", re.compile(r"(attn|attention|q_proj|k_proj|v_proj|o_proj|qkv)")),
    ("mlp", re.compile(r"(mlp|intermediate|\.output\.dense|gate_proj|up_proj|down_proj|fc\d)")),
]


def component_of(name: str) -> str:
    for component, pattern in _RULES:
        if pattern.search(name):
            return component
    return "other"


@dataclass(frozen=True)
class CheckpointParams:
    counts: dict[str, int]
    bytes: int
    """Bytes of the stored tensors, at the checkpoint's own dtypes."""
    dtypes: dict[str, int]
    files: int


def params_from_safetensors(model_dir: Path) -> CheckpointParams | None:
    """Counts from the headers of model.safetensors or its shards; None when the directory has none."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({model_dir / f for f in json.loads(index.read_text())["weight_map"].values()})
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    counts = dict.fromkeys(COMPONENTS, 0)
    dtypes: dict[str, int] = {}
    total_bytes = 0
    for path in files:
        for name, info in read_safetensors_header(path).items():
            if info["dtype"].startswith(("I", "U", "BOOL")):
                continue  # integer buffers such as position_ids are not weights
            n = 1
            for dim in info["shape"]:
                n *= dim
            counts[component_of(name)] += n
            dtypes[info["dtype"]] = dtypes.get(info["dtype"], 0) + n
            total_bytes += info["data_offsets"][1] - info["data_offsets"][0]
    return CheckpointParams(counts, total_bytes, dtypes, len(files))


def read_safetensors_header(path: Path) -> dict[str, dict]:
    """The tensor table at the start of a safetensors file: 8-byte little-endian length, then JSON."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > 100_000_000:
            msg = f"{path} does not look like a safetensors file (header of {length} bytes)"
            raise ConfigError(msg)
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header
