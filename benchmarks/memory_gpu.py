"""Benchmark for a GPU machine (plain PyTorch + transformers; vLLM's CUDA build is not needed): build the
planner's well-known shapes with random weights on the device, run one forward pass at the planned token
budget, and compare torch.cuda.max_memory_allocated with the planner's weights and activation figures.

    python -m benchmarks.memory_gpu [--shapes phi3v,qwen3,bert] [--budgets 2048,8192] [--seq-len 2000]
    python -m benchmarks.memory_gpu --device cpu --shapes bert --budgets 1024   # smoke check without a GPU

Figures, not assertions. Sequences of --seq-len tokens are packed into batches of budget // seq-len.
"""

from __future__ import annotations

import argparse
import time

from benchmarks.model_configs import BERT_BASE, PHI3V, QWEN3

SHAPES = {"bert": {**BERT_BASE, "max_position_embeddings": 2048}, "qwen3": QWEN3, "phi3v": PHI3V}
"""config.json of each shape; BERT with positions for 2,000-token sequences."""
HF_MODEL_TYPES = {"phi3_v": "phi3"}
"""transformers' text model for a model_type it has no class of its own for."""


def main() -> None:
    import torch
    from transformers import AutoConfig, AutoModel

    from pipeline.plan.memory import GIB, PlanRequest, plan_memory

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="bert,qwen3,phi3v")
    parser.add_argument("--budgets", default="2048,8192")
    parser.add_argument("--seq-len", type=int, default=2000)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    on_gpu = device.type == "cuda"
    if on_gpu:
        total = torch.cuda.get_device_properties(0).total_memory / GIB
        print(f"device: {torch.cuda.get_device_name(0)}, {total:.1f} GiB")
    print(
        f"{'shape':<7}{'tokens':>8} | {'plan W':>9}{'meas W':>9}{'ratio':>6} | "
        f"{'plan A':>9}{'meas A':>9}{'ratio':>6} | {'fwd s':>7}{'TFLOP/s':>9}   (GiB)"
    )
    for name in args.shapes.split(","):
        plan_config = SHAPES[name]
        model_type = HF_MODEL_TYPES.get(plan_config["model_type"], plan_config["model_type"])
        fields = {k: v for k, v in plan_config.items() if k not in ("model_type", "torch_dtype")}
        config = AutoConfig.for_model(model_type, **fields)
        torch.manual_seed(0)
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        with torch.device(device):
            model = AutoModel.from_config(config, dtype=dtype).eval()
        weights = (
            torch.cuda.memory_allocated() if on_gpu else sum(p.numel() * p.element_size() for p in model.parameters())
        )
        n_params = sum(p.numel() for p in model.parameters())
        for budget in (int(b) for b in args.budgets.split(",")):
            seqs = max(1, budget // args.seq_len)
            ids = torch.randint(0, fields["vocab_size"], (seqs, args.seq_len), device=device)
            plan = plan_memory(
                plan_config,
                PlanRequest(
                    dtype="bfloat16" if on_gpu else "float32",
                    max_model_len=args.seq_len + 1,
                    max_num_batched_tokens=seqs * args.seq_len,
                    device=device.type,
                ),
            )
            with torch.inference_mode():
                model(input_ids=ids[:1, :16])  # warm-up: kernels and workspaces
                if on_gpu:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                model(input_ids=ids)
                if on_gpu:
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - start
            peak_act = (torch.cuda.max_memory_allocated() - weights) if on_gpu else float("nan")
            tokens = seqs * args.seq_len
            flops = (
                2 * n_params * tokens + 4 * fields["num_hidden_layers"] * fields["hidden_size"] * args.seq_len * tokens
            )
            print(
                f"{name:<7}{tokens:>8} | {plan.weight_bytes / GIB:>9.3f}{weights / GIB:>9.3f}"
                f"{weights / plan.weight_bytes:>6.2f} | {plan.activation['peak'] / GIB:>9.3f}{peak_act / GIB:>9.3f}"
                f"{peak_act / plan.activation['peak']:>6.2f} | "
                f"{elapsed:>7.3f}{flops / elapsed / 1e12:>9.1f}"
            )
        del model
        if on_gpu:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
