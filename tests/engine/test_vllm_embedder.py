"""The real vLLM engine (CPU build here) against a plain transformers forward pass with the same pooling."""

from __future__ import annotations

import gc
from dataclasses import replace

import pyarrow as pa
import pytest

from pipeline import schema as s
from pipeline.engine.reference import ReferenceEmbedder, cosine
from pipeline.engine.vllm import VllmEmbedder
from pipeline.errors import ChunkBudgetError
from pipeline.plan.model_dir import ModelDir
from pipeline.settings import Settings
from pipeline.stages.chunking import Chunker
from pipeline.stages.documents import text_hash
from pipeline.stages.embed import EmbedStep
from pipeline.stages.tokenizer import load_tokenizer
from tests.support.plans import plan_on_one_node

pytestmark = pytest.mark.engine


def engine_for(model_path, **model):
    settings = Settings(
        model={
            "path": str(model_path),
            "dtype": "float32",
            "gpu_memory_utilization": 0.1,
            "enforce_eager": True,
            **model,
        }
    )
    tokenizer = load_tokenizer(model_path)
    plan = plan_on_one_node(settings, tokenizer.num_special_tokens, gpus=0, cpus=2)
    return plan, tokenizer, VllmEmbedder(plan.engine)


def chunk_rows(tokenizer, plan, texts):
    docs = pa.Table.from_pylist(
        [{s.DOC_ID: f"d{i}", s.SOURCE: "t", s.TEXT: t, s.DOC_HASH: text_hash(t)} for i, t in enumerate(texts)],
        schema=s.DOC_SCHEMA,
    )
    return Chunker(tokenizer, plan.chunk).chunk(docs)


@pytest.fixture(scope="module")
def long_texts(sample_texts):
    return ["\n\n".join(sample_texts[i : i + 4]) for i in range(0, 16, 4)]


def test_tiny_long_position_model_embeds_2000_token_chunks_like_transformers(tiny_model_path, long_texts):
    plan, tokenizer, engine = engine_for(tiny_model_path, max_num_batched_tokens=8192)
    try:
        assert plan.engine.max_model_len == 2001 and plan.chunk.max_tokens == 2000
        assert gc.get_freeze_count() > 100_000  # the imports' objects, out of the start's full collections
        chunks = chunk_rows(tokenizer, plan, long_texts)
        n_tokens = chunks.column(s.N_TOKENS).to_pylist()
        assert max(n_tokens) > 1900, "the fixture should exercise near-2,000-token chunks"
        out = EmbedStep(engine, "t")(chunks)
        assert engine.info()["max_model_len"] == 2001
        assert engine.info()["max_num_batched_tokens"] == 8192
        reference = ReferenceEmbedder(ModelDir.read(str(tiny_model_path)))
        for ids, vec in zip(chunks.column(s.TOKEN_IDS).to_pylist(), out.column(s.VECTOR).to_pylist(), strict=False):
            assert cosine(reference.embed_ids(ids), vec) >= 0.999
        with pytest.raises(ChunkBudgetError, match="max_model_len - 1 = 2000"):
            engine.embed([[101] + [2000] * 1999 + [102]])
    finally:
        engine.close()


def test_packaged_minilm_matches_transformers_on_full_length_chunks(minilm_path, long_texts):
    # all 512 positions, past the 256 it is served at: what the benchmark runs
    plan, tokenizer, engine = engine_for(minilm_path, max_model_len=512, allow_long_max_model_len=True)
    try:
        chunks = chunk_rows(tokenizer, plan, long_texts[:2])
        assert max(chunks.column(s.N_TOKENS).to_pylist()) > 480
        vectors = engine.embed(chunks.column(s.TOKEN_IDS).to_pylist())
        assert vectors.shape == (len(chunks), 384)
        reference = ReferenceEmbedder(ModelDir.read(str(minilm_path)))
        for ids, vec in zip(chunks.column(s.TOKEN_IDS).to_pylist(), vectors, strict=False):
            assert cosine(reference.embed_ids(ids), vec) >= 0.999
        # semantic sanity: a chunk is closer to a paraphrase of itself than to another chunk
        a, b = engine.embed(
            [
                tokenizer.with_special_tokens(tokenizer.encode(t)[0])
                for t in ("How do I parse JSON in Python?", "Decoding a JSON document with Python")
            ]
        )
        c = vectors[0]
        assert cosine(a, b) > cosine(a, c)
    finally:
        engine.close()


def test_vllm_itself_refuses_a_batch_budget_below_max_model_len_for_an_encoder(tiny_model_path):
    """Why the job refuses max_num_batched_tokens < max_model_len: this vLLM version does too, for encoder
    pooling models (no chunked prefill), rather than splitting long prompts."""
    from pipeline.errors import ConfigError
    from pipeline.plan.job import plan_lengths

    with pytest.raises(ConfigError, match=r"max_num_batched_tokens=1024 is below model\.max_model_len=2001"):
        plan_lengths(Settings(model={"path": str(tiny_model_path), "max_num_batched_tokens": 1024}))
    spec = plan_on_one_node(
        Settings(
            model={
                "path": str(tiny_model_path),
                "dtype": "float32",
                "enforce_eager": True,
                "gpu_memory_utilization": 0.1,
            }
        ),
        2,
        gpus=0,
        cpus=2,
    ).engine
    with pytest.raises(Exception, match="max_num_batched_tokens \\(1024\\) is smaller than max_model_len \\(2001\\)"):
        VllmEmbedder(replace(spec, max_num_batched_tokens=1024))


def test_last_token_decoder_embeds_prompts_longer_than_its_batch_budget(tmp_path, long_texts):
    """A Qwen3-style decoder with last-token pooling: vLLM 0.32 runs chunked prefill, so a 512-token budget
    serves 2,000-token chunks; vectors still equal a transformers forward pass."""
    from benchmarks.model_builders import build_tiny_qwen3

    model = build_tiny_qwen3(tmp_path / "qwen")
    # a decoder needs KV cache: on the CPU backend it comes out of gpu_memory_utilization x host memory, after
    # what this test process already holds, so 0.1 (enough for encoders) is too little here
    plan, tokenizer, engine = engine_for(
        model, max_model_len=2048, max_num_batched_tokens=512, gpu_memory_utilization=0.3
    )
    try:
        assert engine.info()["chunked_prefill"] is True and engine.info()["max_num_batched_tokens"] == 512
        chunks = chunk_rows(tokenizer, plan, long_texts[:1])
        assert max(chunks.column(s.N_TOKENS).to_pylist()) > 1500
        vectors = engine.embed(chunks.column(s.TOKEN_IDS).to_pylist())
        reference = ReferenceEmbedder(ModelDir.read(str(model)))
        assert reference.mode == "last"
        for ids, vec in zip(chunks.column(s.TOKEN_IDS).to_pylist(), vectors, strict=True):
            assert cosine(reference.embed_ids(ids), vec) >= 0.999
    finally:
        engine.close()
