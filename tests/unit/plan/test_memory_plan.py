"""The memory planner on well-known shapes, written as configs here (no weights needed).

Expected parameter counts, and why:
- BERT-base (vocab 30522, hidden 768, 12 layers, FFN 3072, 512 positions, 2 token types): 109,482,240, the
  count transformers reports for bert-base-uncased: embeddings 23,440,896 + 393,216 + 1,536; per layer
  attention 4 x (768^2 + 768) = 2,362,368 and MLP 2 x 768 x 3072 + 3072 + 768 = 4,722,432; pooler 590,592.
- Phi-3.5-vision language tower (vocab 32064, hidden 3072, 32 layers, FFN 8192, 32 heads, rotary, untied):
  3,722,578,944 without the LM head a pooling model does not use (3,821,079,552 with it, Phi-3-mini's count):
  token table 32064 x 3072 = 98,500,608; per layer qkv 3072 x 9216 + o 3072^2 = 37,748,736 and gated MLP
  3 x 3072 x 8192 = 75,497,472; no positional table.
- Qwen3-Embedding-0.6B-style decoder (vocab 151669, hidden 1024, 28 layers, 16 heads of 128, 8 KV heads,
  FFN 3072, tied embeddings, q/k norms): 595,776,512, Qwen3-0.6B's count; the tied table is counted once.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.model_configs import BERT_BASE, PHI3V, QWEN3
from pipeline.plan.memory import GIB, PlanRequest, activation_bytes, load_config, plan_memory
from pipeline.plan.model_params import params_from_safetensors, params_from_shape, shape_from_config

pytestmark = pytest.mark.unit


def test_bert_base_parameters_by_component():
    p = params_from_shape(shape_from_config(BERT_BASE))
    assert p["token_embedding"] == 30522 * 768 == 23_440_896
    assert p["positional"] == 512 * 768
    assert p["attention"] == 12 * 2_362_368 and p["mlp"] == 12 * 4_722_432
    assert p["norms"] == 12 * 2 * 1536 + 1536 and p["heads"] == 590_592
    assert sum(p.values()) == 109_482_240


def test_phi3_vision_language_tower_parameters_and_rotary_positions():
    shape = shape_from_config(PHI3V)
    p = params_from_shape(shape)
    assert p["positional"] == 0 and shape.max_positions == 131072
    assert p["token_embedding"] == 98_500_608
    assert p["attention"] == 32 * 37_748_736 and p["mlp"] == 32 * 75_497_472
    assert sum(p.values()) == 3_722_578_944
    assert sum(params_from_shape(shape, lm_head=True).values()) == 3_821_079_552


def test_qwen3_decoder_with_tied_embeddings_counts_the_table_once():
    shape = shape_from_config(QWEN3)
    p = params_from_shape(shape, lm_head=True)  # tied: no second table
    assert p["heads"] == 0 and p["token_embedding"] == 151669 * 1024
    assert p["attention"] == 28 * (1024 * 2048 + 2 * 1024 * 1024 + 2048 * 1024)
    assert sum(p.values()) == 595_776_512


def test_phi3_plan_for_2000_token_chunks_on_an_80_gib_gpu():
    plan = plan_memory(
        PHI3V,
        PlanRequest(
            max_model_len=2001,
            max_num_batched_tokens=8192,
            device="cuda",
            device_memory_bytes=80 * GIB,
            chunk_tokens=2000,
            batch_rows=64,
        ),
    )
    assert plan.dtype == "bfloat16" and plan.weight_bytes == 3_722_578_944 * 2
    # KV for one forward pass: 8192 tokens x 32 layers x 2 (k, v) x 3072 x 2 bytes = 3 GiB
    assert plan.kv_cache_needed_bytes == 8192 * 32 * 2 * 3072 * 2 == 3 * GIB
    assert plan.fits is True
    text = "\n".join(plan.advice)
    assert "max_model_len: use 2001" in text
    assert "131,072 positions: vLLM must find KV cache for one 131,072-token sequence at start-up (48.00 GiB)" in text
    assert "smallest tensor_parallel_size that fits: 1" in text
    # 131,072-token passes need 16x the activation and KV of 8,192-token ones
    big = plan_memory(PHI3V, PlanRequest(max_num_batched_tokens=131072, device="cuda", device_memory_bytes=80 * GIB))
    assert big.activation["peak"] == pytest.approx(16 * plan.activation["peak"], rel=1e-6)
    assert big.kv_cache_needed_bytes == 48 * GIB and big.fits is False


def test_tensor_parallel_splits_weights_and_finds_the_smallest_size_that_fits():
    small_gpu = PlanRequest(
        max_model_len=2001, max_num_batched_tokens=8192, device="cuda", device_memory_bytes=12 * GIB, chunk_tokens=2000
    )
    plan = plan_memory(PHI3V, small_gpu)
    assert plan.fits is False
    assert "smallest tensor_parallel_size that fits: 2" in "\n".join(plan.advice)
    tp2 = plan_memory(PHI3V, PlanRequest(**{**small_gpu.__dict__, "tensor_parallel_size": 2}))
    assert tp2.per_rank["weights"] == plan.weight_bytes // 2 and tp2.fits is True


def test_largest_budget_and_engines_per_device_are_consistent():
    request = PlanRequest(
        max_model_len=2001, max_num_batched_tokens=8192, device="cuda", device_memory_bytes=24 * GIB, chunk_tokens=2000
    )
    plan = plan_memory(QWEN3, request)
    line = next(a for a in plan.advice if a.startswith("largest max_num_batched_tokens"))
    largest = int(line.split(": ")[1].split(" ")[0].replace(",", ""))
    assert plan_memory(QWEN3, PlanRequest(**{**request.__dict__, "max_num_batched_tokens": largest})).fits
    too_big = PlanRequest(**{**request.__dict__, "max_num_batched_tokens": largest + 256})
    assert not plan_memory(QWEN3, too_big).fits
    engines = int(next(a for a in plan.advice if a.startswith("engines per device")).rsplit(" ", 1)[1])
    assert engines >= 2 and plan_memory(QWEN3, PlanRequest(**{**request.__dict__, "engines_per_device": engines})).fits


def test_warns_when_the_job_cannot_fill_the_budget():
    plan = plan_memory(
        BERT_BASE,
        PlanRequest(max_model_len=512, max_num_batched_tokens=16384, device="cpu", chunk_tokens=511, batch_rows=16),
    )
    assert any("at most 8,176 tokens reach an engine per call" in w for w in plan.warnings)


def test_activation_grows_linearly_with_the_budget():
    shape = shape_from_config(BERT_BASE)
    assert activation_bytes(shape, 16384, 4)["peak"] == pytest.approx(2 * activation_bytes(shape, 8192, 4)["peak"], 1)


def test_headers_agree_with_arithmetic_on_real_checkpoints(minilm_path, tiny_model_path):
    for model in (minilm_path, tiny_model_path):
        config, checkpoint = load_config(model)
        plan = plan_memory(config, PlanRequest(device="cpu"), checkpoint)
        assert plan.params_source == "safetensors headers" and plan.mismatches == []
        assert plan.params == params_from_shape(shape_from_config(config))
    assert sum(params_from_safetensors(minilm_path).counts.values()) == 22_713_216  # all-MiniLM-L6-v2


def test_a_config_that_disagrees_with_the_weights_is_reported(tiny_model_path, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(tiny_model_path, model)
    config = json.loads((model / "config.json").read_text())
    config["num_hidden_layers"] = 3  # the checkpoint has 2
    (model / "config.json").write_text(json.dumps(config))
    config, checkpoint = load_config(model)
    plan = plan_memory(config, PlanRequest(device="cpu"), checkpoint)
    assert any(m.startswith("attention: config arithmetic") for m in plan.mismatches)
    assert any("disagree" in w for w in plan.warnings)


def test_plan_command_prints_a_table_and_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(PHI3V))
    repo = Path(__file__).resolve().parents[3]
    args = [sys.executable, "-m", "jobs.plan", str(tmp_path), "--max-model-len", "2001", "--device-memory-gib", "80"]
    table = subprocess.run(args, cwd=repo, capture_output=True, text=True, check=True)
    assert "none: rotary" in table.stdout and "3,722,578,944" in table.stdout
    out = subprocess.run(
        [sys.executable, "-m", "jobs.plan", str(tmp_path / "config.json"), "--json"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(out.stdout)
    assert data["params"]["token_embedding"] == 98_500_608 and data["kind"] == "decoder"


def test_advice_for_2000_token_chunks_on_each_shape():
    def advice(config):
        return "\n".join(plan_memory(config, PlanRequest(device="cuda", chunk_tokens=2000)).advice)

    # BERT-base has 512 learned positions: 2,000-token chunks cannot be served
    assert "max_model_len: use 512 (the model has 512 positions, so chunks hold at most 511 tokens" in advice(
        BERT_BASE
    )
    # the decoders take 2,001 and say what their default length would cost in KV cache
    assert "max_model_len: use 2001" in advice(QWEN3)
    # Qwen3: 32,768 x 28 layers x 2 x 1,024 (8 KV heads x 128) x 2 bytes = 3.5 GiB
    assert "one 32,768-token sequence at start-up (3.50 GiB)" in advice(QWEN3)
    assert "one 131,072-token sequence at start-up (48.00 GiB)" in advice(PHI3V)


def test_job_and_planner_read_the_same_position_limit(tmp_path):
    from pipeline.plan.model_dir import ModelDir

    for model_type, positions, usable in (("xlm-roberta", 514, 512), ("mpnet", 514, 512), ("bert", 512, 512)):
        config = {**BERT_BASE, "model_type": model_type, "max_position_embeddings": positions, "pad_token_id": 1}
        (tmp_path / "config.json").write_text(json.dumps(config))
        (tmp_path / "tokenizer_config.json").write_text("{}")
        assert ModelDir.read(str(tmp_path)).limits.position_limit == shape_from_config(config).max_positions == usable


def test_the_plan_jobs_defaults_are_the_ingestion_settings_defaults(minilm_path):
    from jobs.plan import build_parser
    from pipeline.settings import Settings

    args = build_parser().parse_args([str(minilm_path)])
    s = Settings(model={"path": str(minilm_path)})
    assert (args.dtype, args.max_num_batched_tokens, args.tensor_parallel_size, args.gpu_memory_utilization) == (
        s.model.dtype,
        s.model.max_num_batched_tokens,
        s.model.tensor_parallel_size,
        s.model.gpu_memory_utilization,
    )
    assert (args.chunk_tokens, args.batch_rows) == (s.chunk.tokens, s.run.batch_rows)
