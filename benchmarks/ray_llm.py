"""Baseline 3: Ray Data's own LLM processor (ray.data.llm, embed task) on the same token ids and engine settings.

Its chat-template, tokenize and detokenize stages are off: the rows carry `tokenized_prompt`, which Ray 2.60
hands to vLLM as prompt_token_ids. On CPU machines the engine's placement bundle must ask for a CPU (the
default asks for a GPU and never schedules); its Prometheus export needs ray[serve], so it is turned off.
"""

from __future__ import annotations

import time

import pyarrow as pa
import ray

from benchmarks.corpus import write_rows
from benchmarks.metrics import SAMPLE_VECTORS, Point
from pipeline import schema as s
from pipeline.engine.vllm import engine_environment, engine_kwargs
from pipeline.plan.engine_spec import EngineSpec
from pipeline.store.lance_store import LanceStore


def run_ray_data_llm(
    spec: EngineSpec, chunks: pa.Table, batch_rows: int, store: LanceStore, table_name: str, commit_rows: int
) -> tuple[Point, dict[str, list[float]]]:
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    config = vLLMEngineProcessorConfig(
        model_source=spec.model_dir,
        task_type="embed",
        engine_kwargs=engine_kwargs(spec),
        batch_size=batch_rows,
        concurrency=1,
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=False,
        log_engine_metrics=False,
        runtime_env={"env_vars": engine_environment(spec)},
        **({"placement_group_config": {"bundles": [{"CPU": 1}]}} if spec.device == "cpu" else {}),
    )
    processor = build_processor(
        config,
        preprocess=lambda row: {"tokenized_prompt": row[s.TOKEN_IDS], s.CHUNK_ID: row[s.CHUNK_ID]},
        postprocess=lambda row: {
            s.CHUNK_ID: row[s.CHUNK_ID],
            "embedding": row["embeddings"],
            "num_input_tokens": row["num_input_tokens"],
            "time_taken_llm": row["time_taken_llm"],
            "finished_at": time.time(),
        },
    )
    source = chunks.select([s.CHUNK_ID, s.TOKEN_IDS])
    blocks = [source.slice(i, batch_rows) for i in range(0, len(source), batch_rows)]
    started, started_at = time.perf_counter(), time.time()
    dataset = processor(ray.data.from_arrow(blocks))
    by_id = {cid: i for i, cid in enumerate(chunks.column(s.CHUNK_ID).to_pylist())}
    vectors: dict[str, list[float]] = {}
    pending: list[str] = []
    engine_tokens, batch_starts = 0, []
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        batch_starts += batch_start_times(
            batch.column("finished_at").to_pylist(), batch.column("time_taken_llm").to_pylist()
        )
        ids = batch.column(s.CHUNK_ID).to_pylist()
        engine_tokens += sum(batch.column("num_input_tokens").to_pylist())
        for cid, vec in zip(ids, batch.column("embedding").to_pylist(), strict=True):
            vectors[cid] = vec
        pending.extend(ids)
        if len(pending) >= commit_rows:
            write_rows(store, table_name, chunks.take(pa.array([by_id[c] for c in pending])), vectors)
            pending = []
    if pending:
        write_rows(store, table_name, chunks.take(pa.array([by_id[c] for c in pending])), vectors)
    wall_s = time.perf_counter() - started
    # As for the pipeline, start-up ends when the first engine call began: each batch's rows carry when the
    # processor finished it and how long its engine call took.
    startup_s = max(min(batch_starts, default=started_at) - started_at, 0.0)
    point = Point(
        kind="ray_data_llm",
        label="ray.data.llm",
        params={
            "max_num_batched_tokens": spec.max_num_batched_tokens,
            "max_model_len": spec.max_model_len,
            "batch_rows": batch_rows,
        },
        wall_s=wall_s,
        startup_s=startup_s,
        chunks=len(vectors),
        tokens=sum(chunks.column(s.N_TOKENS).to_pylist()),
        engine_tokens=engine_tokens,
        tokens_per_call=None,
        note="start-up until its first engine call began (per-batch timestamps), as for the pipeline; Ray running",
    )
    return point, {
        cid: vectors[cid] for cid in chunks.column(s.CHUNK_ID).to_pylist()[:SAMPLE_VECTORS] if cid in vectors
    }


def batch_start_times(finished_at: list[float], llm_s: list[float]) -> list[float]:
    """When each engine call began: its rows' finish time less the call's engine seconds."""
    return [f - t for f, t in zip(finished_at, llm_s, strict=True)]
