"""Baseline 1, the ceiling: the chunks' token ids straight into vllm.LLM.embed, in one process, no Ray, no I/O.

Runs in a fresh spawned process so its memory is returned and it shares nothing with the pipeline's engines.
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from benchmarks import corpus
from benchmarks.cpu_use import CpuSampler, Sample, cpu_by_role
from benchmarks.metrics import SAMPLE_VECTORS, Point
from pipeline import schema as s
from pipeline.plan.engine_spec import EngineSpec


def run_bare(spec: EngineSpec, chunks_path: Path, label: str) -> tuple[Point, dict[str, list[float]]]:
    with CpuSampler() as sampler, ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        result = pool.submit(_embed_all, spec, str(chunks_path)).result()
    bare_roles = [
        Sample(x.t, x.pid, "driver" if x.role == "driver" else "engine (bare)", x.cpu_s) for x in sampler.samples
    ]
    point = Point(
        kind="bare",
        label=label,
        params={"max_num_batched_tokens": spec.max_num_batched_tokens, "max_model_len": spec.max_model_len},
        wall_s=result["start_s"] + result["embed_s"],
        startup_s=result["start_s"],
        chunks=result["chunks"],
        tokens=result["tokens"],
        engine_tokens=result["engine_tokens"],
        stages={"embed_s": result["embed_s"]},
        tokens_per_call=float(result["tokens"]),
        note="one LLM.embed call with every chunk",
        cpu=cpu_by_role(bare_roles, result["embed_from"], result["embed_from"] + result["embed_s"]),
    )
    return point, result["vectors"]


def _embed_all(spec: EngineSpec, chunks_path: str) -> dict:
    from pipeline.engine.vllm import VllmEmbedder

    table = corpus.load(Path(chunks_path))
    token_ids = table.column(s.TOKEN_IDS).to_pylist()
    started = time.perf_counter()
    embedder = VllmEmbedder(spec)  # the pipeline's engine settings, exactly
    start_s = time.perf_counter() - started
    from vllm.inputs import TokensPrompt

    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in token_ids]
    embed_from, t0 = time.time(), time.perf_counter()
    outputs = embedder.llm.embed(prompts, use_tqdm=False)
    embed_s = time.perf_counter() - t0
    ids = table.column(s.CHUNK_ID).to_pylist()
    embedder.close()
    return {
        "start_s": start_s,
        "embed_s": embed_s,
        "embed_from": embed_from,
        "chunks": len(outputs),
        "tokens": sum(len(t) for t in token_ids),
        "engine_tokens": sum(len(o.prompt_token_ids) for o in outputs),
        "vectors": {ids[i]: list(outputs[i].outputs.embedding) for i in range(min(SAMPLE_VECTORS, len(outputs)))},
    }
