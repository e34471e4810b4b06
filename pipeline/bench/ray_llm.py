"""Baseline 3: Ray Data's own LLM processor (ray.data.llm, embed task) on the same token ids and engine settings.

Its chat-template, tokenize and detokenize stages are off: the rows carry `tokenized_prompt`, which Ray 2.60
hands to vLLM as prompt_token_ids. On CPU machines the engine's placement bundle must ask for a CPU (the
default asks for a GPU and never schedules); its Prometheus export needs ray[serve], so it is turned off.
"""

from __future__ import annotations

import time

import pyarrow as pa
import ray
import structlog

from pipeline import schema as s
from pipeline.bench.corpus import write_rows
from pipeline.bench.metrics import Point
from pipeline.embedding import EngineSpec, engine_environment, engine_kwargs
from pipeline.io.lance_store import LanceStore

log = structlog.get_logger(__name__)


def run_ray_data_llm(
    spec: EngineSpec, chunks: pa.Table, batch_rows: int, store: LanceStore, table_name: str, commit_rows: int
) -> tuple[Point, dict[str, list[float]]]:
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    m = spec.model
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
        },
    )
    source = chunks.select([s.CHUNK_ID, s.TOKEN_IDS])
    blocks = [source.slice(i, batch_rows) for i in range(0, len(source), batch_rows)]
    started = time.perf_counter()
    dataset = processor(ray.data.from_arrow(blocks))
    by_id = {cid: i for i, cid in enumerate(chunks.column(s.CHUNK_ID).to_pylist())}
    vectors: dict[str, list[float]] = {}
    pending: list[str] = []
    engine_tokens, first_out, first_llm_s = 0, None, 0.0
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        if first_out is None:
            first_out = time.perf_counter() - started
            first_llm_s = max(batch.column("time_taken_llm").to_pylist())
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
    # The engine starts inside the first batch's actor: start-up is the wait for the first output less the
    # engine time of that batch (an estimate; Ray Data does not report when its engine became ready).
    startup_s = max((first_out or 0.0) - first_llm_s, 0.0)
    point = Point(
        kind="ray_data_llm",
        label="ray.data.llm",
        params={
            "max_num_batched_tokens": m.max_num_batched_tokens,
            "max_model_len": spec.max_model_len,
            "batch_rows": batch_rows,
        },
        wall_s=wall_s,
        startup_s=startup_s,
        chunks=len(vectors),
        tokens=sum(chunks.column(s.N_TOKENS).to_pylist()),
        engine_tokens=engine_tokens,
        tokens_per_call=None,
        note="start-up estimated as first output time minus that batch's engine time; Ray already running",
    )
    return point, {cid: vectors[cid] for cid in chunks.column(s.CHUNK_ID).to_pylist()[:32] if cid in vectors}
