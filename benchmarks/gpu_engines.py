"""Benchmark for a GPU machine with vLLM's CUDA build (`pip install '.[gpu]'`): what the placement rules assume.

    python -m benchmarks.gpu_engines --out gpu_out [--model DIR] [--engines 1,2,4] [--budget 8192] [--seq-len 2000]
    python -m benchmarks.gpu_engines --out /tmp/smoke --device cpu --engines 1,2 --chunks 16 --seq-len 200  # no GPU

Four measurements, each engine in a process of its own built exactly as the pipeline builds it (EngineSpec,
engine_kwargs, VllmEmbedder), on GPU 0:
1. start race: two engines sharing the GPU started together, then one after the other (as the pipeline's start
   gate does): vLLM's "Available KV cache memory" line and any error of each;
2. engines per GPU: 1, 2, 4 engines sharing the GPU (started one after another), then all embedding the same
   synthetic chunks at once: tokens/s of the GPU;
3. compile: one compiled engine (enforce_eager off) started twice on one cache directory (VLLM_CACHE_ROOT and
   TorchInductor's): cold and warm start;
4. memory: the planner's figures for the same engine beside vLLM's own lines (weights loaded, KV cache).
The model is a tiny random-weight decoder built on the spot (benchmarks/model_builders.py, Qwen3 shape, last-token
pooling) unless --model names one. Writes results.json and results.md under --out; figures, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import re
import time
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

KV_LINE = re.compile(r"Available KV cache memory: ([\d.]+) GiB")
WEIGHTS_LINE = re.compile(r"[Mm]odel loading took ([\d.]+) GiB")
REPORT_TIMEOUT_S = 1800
ERROR_LINE = re.compile(r"(Error|error|No available memory|AssertionError)[^\n]*")


def parse_engine_log(text: str) -> dict:
    """What one engine's log says about its memory, and its first error line, if any."""
    kv, weights, error = KV_LINE.findall(text), WEIGHTS_LINE.findall(text), ERROR_LINE.search(text)
    return {
        "kv_cache_gib": float(kv[-1]) if kv else None,
        "weights_gib": float(weights[-1]) if weights else None,
        "error": error.group(0)[:300] if error else None,
    }


def _engine(spec, log_path: str, cache: str | None, ready, go, results, chunks: int, seq_len: int, vocab: int):
    """One engine process: start, say so, wait for the go, embed `chunks` random sequences, report."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ["VLLM_LOGGING_LEVEL"] = "INFO"
    if cache:
        os.environ.update({"VLLM_CACHE_ROOT": cache, "TORCHINDUCTOR_CACHE_DIR": f"{cache}/inductor"})
    from pipeline.engine.vllm import VllmEmbedder

    began = time.time()
    try:
        engine = VllmEmbedder(replace(spec, engine_log_level="INFO"))
    except Exception as exc:  # noqa: BLE001 - the figure is the failure
        results.put({"began": began, "error": f"{type(exc).__name__}: {exc}"[:500]})
        ready.set()
        return
    ready_at = time.time()
    ready.set()
    go.wait()
    rng = random.Random(os.getpid())
    ids = [[rng.randrange(1000, vocab) for _ in range(seq_len)] for _ in range(chunks)]
    t0 = time.perf_counter()
    if ids:
        engine.embed(ids)
    results.put(
        {
            "began": began,
            "ready": ready_at,
            "start_s": ready_at - began,
            "embed_s": time.perf_counter() - t0,
            "tokens": chunks * seq_len,
            "info": engine.info(),
        }
    )
    engine.close()


def run_engines(spec, n: int, out: Path, name: str, together: bool, chunks: int, seq_len: int, vocab: int, cache=None):
    """n engines sharing the device: started together or one after another, then embedding at once."""
    ctx = get_context("spawn")
    go, results = ctx.Event(), ctx.Queue()
    procs, readies = [], []
    shared = replace(spec, engines_per_device=n)
    for i in range(n):
        ready = ctx.Event()
        log = out / f"{name}-{i}.log"
        args = (shared, str(log), cache, ready, go, results, chunks, seq_len, vocab)
        proc = ctx.Process(target=_engine, args=args)
        proc.start()
        procs.append(proc)
        readies.append(ready)
        if not together:
            _wait_ready(ready, proc)
    for ready, proc in zip(readies, procs, strict=True):
        _wait_ready(ready, proc)
    t0 = time.perf_counter()
    go.set()
    reports = []
    for proc in procs:
        try:
            reports.append(results.get(timeout=REPORT_TIMEOUT_S))
        except queue.Empty:
            reports.append({"error": f"no report within {REPORT_TIMEOUT_S} s (exit code {proc.exitcode})"})
    wall = time.perf_counter() - t0
    for proc in procs:
        proc.join(timeout=120)
    logs = [parse_engine_log((out / f"{name}-{i}.log").read_text(errors="replace")) for i in range(n)]
    tokens = sum(r.get("tokens", 0) for r in reports)
    return {
        "engines": n,
        "together": together,
        "reports": reports,
        "logs": logs,
        "wall_s": wall,
        "tokens_per_s": tokens / wall if tokens and wall > 0 else None,
    }


def _wait_ready(ready, proc) -> None:
    """Until the engine process says it started (or failed to), or died without a word."""
    deadline = time.monotonic() + REPORT_TIMEOUT_S
    while not ready.wait(timeout=5) and proc.is_alive() and time.monotonic() < deadline:
        continue


def plan_figures(spec, model_dir: Path) -> dict:
    from pipeline.plan.memory import GIB, PlanRequest, load_config, plan_memory

    config, checkpoint = load_config(model_dir)
    request = PlanRequest(
        dtype=spec.dtype,
        max_model_len=spec.max_model_len,
        max_num_batched_tokens=spec.max_num_batched_tokens,
        device=spec.device,
    )
    plan = plan_memory(config, request, checkpoint)
    return {k: (v / GIB if isinstance(v, int) else v) for k, v in plan.per_rank.items() if k != "fits"}


def render(results: dict) -> str:
    lines = [f"# GPU engines ({results['device']}, {results['date']})", "", "## Start race (two engines, one GPU)", ""]
    lines += ["| start | engine | KV cache GiB | error |", "|---|---|---|---|"]
    for key in ("together", "one_after_another"):
        race = results["race"][key]
        for i, log in enumerate(race["logs"]):
            error = log["error"] or (race["reports"][i].get("error") if i < len(race.get("reports", [])) else None)
            lines.append(f"| {key} | {i} | {log['kv_cache_gib']} | {error or ''} |")
    lines += ["", "## Engines per GPU", "", "| engines | tokens/s | start s (each) |", "|---|---|---|"]
    for run in results["per_gpu"]:
        starts = ", ".join(f"{r.get('start_s', float('nan')):.1f}" for r in run["reports"])
        errors = [r["error"] for r in run["reports"] if r.get("error")]
        tps = f"{run['tokens_per_s']:,.0f}" if run["tokens_per_s"] else f"failed: {errors[0] if errors else '?'}"
        lines.append(f"| {run['engines']} | {tps} | {starts} |")
    compile_ = results["compile"]
    cold, warm = (f"{s:.1f}" if s is not None else "failed" for s in (compile_["cold_s"], compile_["warm_s"]))
    lines += ["", "## Compile", "", f"cold start {cold} s, warm start {warm} s", ""]
    lines += ["## Memory: plan vs vLLM", "", f"plan (GiB per engine): {json.dumps(results['plan'])}", ""]
    lines.append(f"vLLM (alone on the GPU): {json.dumps(results['per_gpu'][0]['logs'][0])}")
    return "\n".join(lines) + "\n"


def main() -> None:
    from benchmarks.model_builders import build_tiny_qwen3
    from pipeline.plan.engine_spec import EngineSpec

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", help="model directory (default: a tiny random Qwen3-shaped decoder)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--engines", default="1,2,4")
    parser.add_argument("--budget", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=2000)
    parser.add_argument("--chunks", type=int, default=512, help="chunks each engine embeds per measurement")
    parser.add_argument("--gpu-memory-utilization", type=float, help="of the device, split among its engines")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = Path(args.model) if args.model else build_tiny_qwen3(out / "tiny-qwen3")
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    spec = EngineSpec(
        model_dir=str(model),
        max_model_len=args.seq_len + 1,
        max_num_batched_tokens=args.budget,
        device=args.device,
        cpu_threads=max(1, (os.cpu_count() or 2) // 2),
        allow_long_max_model_len=True,
        engine_log_level="INFO",
        dtype="bfloat16" if args.device == "cuda" else "float32",
        enforce_eager=args.device != "cuda",
        gpu_memory_utilization=args.gpu_memory_utilization or (0.9 if args.device == "cuda" else 0.2),
    )
    common = {"chunks": args.chunks, "seq_len": args.seq_len, "vocab": vocab}
    results = {"device": args.device, "date": time.strftime("%Y-%m-%d"), "spec": spec.__dict__, "plan": {}}
    results["race"] = {
        "together": run_engines(spec, 2, out, "race-together", True, **{**common, "chunks": 0}),
        "one_after_another": run_engines(spec, 2, out, "race-sequential", False, **{**common, "chunks": 0}),
    }
    results["per_gpu"] = [
        run_engines(spec, int(n), out, f"per-gpu-{n}", False, **common) for n in args.engines.split(",")
    ]
    cache = str(out / "compile-cache")
    compiled = replace(spec, enforce_eager=False)
    cold = run_engines(compiled, 1, out, "compile-cold", False, **{**common, "chunks": 0}, cache=cache)
    warm = run_engines(compiled, 1, out, "compile-warm", False, **{**common, "chunks": 0}, cache=cache)
    results["compile"] = {k: run["reports"][0].get("start_s") for k, run in (("cold_s", cold), ("warm_s", warm))}
    results["plan"] = plan_figures(spec, model)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "results.md").write_text(render(results))
    print(render(results))


if __name__ == "__main__":
    main()
