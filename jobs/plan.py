"""python -m jobs.plan MODEL_DIR_OR_CONFIG [--dtype ...] [--max-model-len N] [--max-num-batched-tokens N]
[--tensor-parallel-size N] [--engines-per-device N] [--device-memory-gib G] [--device cuda|cpu] [--json]

What a model costs on a device at the given engine limits, by component, with advice. Works offline on a
config.json alone; reads safetensors headers (never the weights) when the directory has them."""

from __future__ import annotations

import argparse
import sys

from jobs.common import run
from pipeline.plan.memory import GIB, PlanRequest, detect_device_memory, load_config, plan_memory, render_table
from pipeline.settings import ChunkSettings, ModelSettings, RunSettings


def default(section, field: str):
    """A setting's default, so this job's flags mean what the ingestion job's settings of the same name mean."""
    return section.model_fields[field].default


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(lambda: _plan(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.plan", description=__doc__)
    parser.add_argument("model", help="model directory or config.json")
    parser.add_argument(
        "--dtype", default=default(ModelSettings, "dtype"), choices=["auto", "float32", "float16", "bfloat16"]
    )
    parser.add_argument("--max-model-len", type=int)
    parser.add_argument("--max-num-batched-tokens", type=int, default=default(ModelSettings, "max_num_batched_tokens"))
    parser.add_argument("--tensor-parallel-size", type=int, default=default(ModelSettings, "tensor_parallel_size"))
    parser.add_argument("--engines-per-device", type=int, default=1)
    parser.add_argument(
        "--gpu-memory-utilization", type=float, default=default(ModelSettings, "gpu_memory_utilization")
    )
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--device-memory-gib", type=float, help="default: read from the device when there is one")
    parser.add_argument("--chunk-tokens", type=int, default=default(ChunkSettings, "tokens"))
    parser.add_argument("--batch-rows", type=int, default=default(RunSettings, "batch_rows"))
    parser.add_argument("--json", action="store_true")
    return parser


def _plan(args: argparse.Namespace) -> int:
    config, checkpoint = load_config(args.model)
    memory = args.device_memory_gib * GIB if args.device_memory_gib else detect_device_memory(args.device)
    request = PlanRequest(
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        max_num_batched_tokens=args.max_num_batched_tokens,
        tensor_parallel_size=args.tensor_parallel_size,
        engines_per_device=args.engines_per_device,
        gpu_memory_utilization=args.gpu_memory_utilization,
        device=args.device,
        device_memory_bytes=int(memory) if memory else None,
        chunk_tokens=args.chunk_tokens,
        batch_rows=args.batch_rows,
    )
    plan = plan_memory(config, request, checkpoint)
    print(plan.to_json() if args.json else render_table(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
