"""Benchmark: process memory of the real CPU engine against the memory planner's prediction.

    python -m benchmarks.memory_cpu [--budgets 2048,8192,16384]

For each model (the packaged MiniLM at 512 positions, a tiny random BERT at 2,001) and budget
(max_num_batched_tokens), a fresh process imports vLLM, records its resident memory, builds the engine
(whose start-up profiles one forward pass at the budget) and embeds one full batch of maximum-length
sequences. Growth over the post-import baseline is compared with the planner's per-engine total.
Prints a table; figures, not assertions: the machine is shared and allocators cache.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MEASURE = r"""
import json, os, sys
os.environ.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_OMP_THREADS_BIND="nobind",
                  VLLM_CPU_NUM_OF_RESERVED_CPU="0", VLLM_LOGGING_LEVEL="ERROR", VLLM_ALLOW_LONG_MAX_MODEL_LEN="1")
def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}
if __name__ == "__main__":
    model, max_len, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    import torch, vllm
    from vllm import LLM
    from vllm.inputs import TokensPrompt
    base = status()
    llm = LLM(model=model, runner="pooling", max_model_len=max_len, max_num_batched_tokens=budget,
              dtype="float32", gpu_memory_utilization=0.1, enforce_eager=True)
    loaded = status()
    seqs = max(1, budget // (max_len - 1))
    llm.embed([TokensPrompt(prompt_token_ids=[101] + [2000] * (max_len - 3) + [102]) for _ in range(seqs)],
              use_tqdm=False)
    done = status()
    print(json.dumps({"base": base, "loaded": loaded, "done": done}))
"""


def main() -> None:
    from benchmarks.model_builders import build_tiny_bert, minilm_dir
    from pipeline.plan.memory import PlanRequest, load_config, plan_memory

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", default="2048,8192,16384")
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    tiny = build_tiny_bert(Path(tempfile.mkdtemp()) / "tiny")
    mib = lambda n: n / 2**20  # noqa: E731
    print(
        f"{'model':<10}{'budget':>8}{'len':>6} | {'plan W':>8}{'plan A':>8}{'plan all':>9} | "
        f"{'load +RSS':>10}{'peak +HWM':>10}{'ratio':>7}   "
        "(MiB; plan all = weights + activation + engine overhead; ratio = measured / plan)"
    )
    for name, model, max_len in (("MiniLM", minilm_dir(), 512), ("tiny-4k", tiny, 2001)):
        config, checkpoint = load_config(model)
        for budget in budgets:
            if budget < max_len:
                continue
            plan = plan_memory(
                config,
                PlanRequest(dtype="float32", max_model_len=max_len, max_num_batched_tokens=budget, device="cpu"),
                checkpoint,
            )
            proc = subprocess.run(
                [sys.executable, "-c", MEASURE, str(model), str(max_len), str(budget)],
                capture_output=True,
                text=True,
                cwd=REPO,
                env=os.environ,
            )
            if proc.returncode:
                print(f"{name:<10}{budget:>8} failed: {proc.stderr.strip().splitlines()[-1]}")
                continue
            m = json.loads(proc.stdout.strip().splitlines()[-1])
            load_growth = m["loaded"]["VmRSS"] - m["base"]["VmRSS"]
            peak_growth = m["done"]["VmHWM"] - m["base"]["VmRSS"]
            predicted = plan.per_rank["needed"]
            print(
                f"{name:<10}{budget:>8}{max_len:>6} | "
                f"{mib(plan.weight_bytes):>8.1f}{mib(plan.activation['peak']):>8.1f}"
                f"{mib(predicted):>9.1f} | {mib(load_growth):>10.1f}{mib(peak_growth):>10.1f}"
                f"{peak_growth / predicted:>7.2f}"
            )


if __name__ == "__main__":
    main()
