"""The benchmark's own table in the store: one row per runner and point of a benchmark invocation."""

from __future__ import annotations

import pyarrow as pa

from pipeline.schema import RUN_ID, TIMESTAMP

BENCH_SCHEMA = pa.schema(
    [
        pa.field("bench_id", pa.string()),
        pa.field("kind", pa.string()),
        pa.field("label", pa.string()),
        pa.field(RUN_ID, pa.string()),
        pa.field("params", pa.string()),
        pa.field("max_num_batched_tokens", pa.int64()),
        pa.field("max_model_len", pa.int64()),
        pa.field("wall_s", pa.float64()),
        pa.field("startup_s", pa.float64()),
        pa.field("steady_s", pa.float64()),
        pa.field("chunks", pa.int64()),
        pa.field("tokens", pa.int64()),
        pa.field("engine_tokens", pa.int64()),
        pa.field("tokens_per_s", pa.float64()),
        pa.field("e2e_tokens_per_s", pa.float64()),
        pa.field("efficiency", pa.float64()),
        pa.field("vs_serve", pa.float64()),
        pa.field("vs_ray_data_llm", pa.float64()),
        pa.field("mfu", pa.float64()),
        pa.field("engine_busy", pa.float64()),
        pa.field("tokens_per_call", pa.float64()),
        pa.field("stages", pa.string()),
        pa.field("flops_per_token", pa.float64()),
        pa.field("diagnosis", pa.string()),
        pa.field("error", pa.string()),
        pa.field("note", pa.string()),
        pa.field("created_at", TIMESTAMP),
        pa.field("model", pa.string()),
        pa.field("device", pa.string()),
    ]
)
