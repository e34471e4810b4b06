"""The benchmark job: chunk the corpus once, run the pipeline at every sweep point and the baselines on the same
chunks and engine settings, read every pipeline figure back from its own runs and batches rows, and hand the
points to the report."""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import structlog

from benchmarks import corpus
from benchmarks.bench_table import BENCH_SCHEMA
from benchmarks.cpu_use import CpuSampler, cpu_by_role
from benchmarks.device import DeviceFigures, measure_device
from benchmarks.metrics import Point
from benchmarks.settings import BenchJobSettings, BenchSettings
from pipeline import schema as s
from pipeline.errors import PipelineError
from pipeline.plan.compute import flops_per_token, peak_tflops
from pipeline.plan.job import RunPlan
from pipeline.records import RunRecord
from pipeline.run.executor import Executor
from pipeline.run.in_process import InProcessExecutor
from pipeline.run.ingest import run_ingest
from pipeline.run.start import start_run
from pipeline.settings import Settings
from pipeline.stats import STAGES
from pipeline.store.lance_store import LanceStore
from pipeline.store.sql import sql_str

log = structlog.get_logger(__name__)


@dataclass
class BenchResult:
    bench_id: str
    out_dir: Path
    settings: BenchJobSettings
    chunks: int
    tokens: int
    lengths: list[int]
    flops_per_token: float
    peak_tflops: float | None
    peak_source: str
    device: DeviceFigures | None
    engine_devices: int
    """Engines that each have a device of their own (1 on CPU, where engines share the cores)."""
    model: str
    """The model's id, as the runs table records it."""
    engine_device: str
    """cpu or cuda."""
    points: list[Point] = field(default_factory=list)
    cosines: dict[str, float] = field(default_factory=dict)
    """Lowest cosine between a runner's vectors and the bare engine's, over the first chunks."""
    missing: dict[str, str] = field(default_factory=dict)
    """Baselines that did not run, and why."""
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    ray_start_s: float | None = None
    """Seconds a local Ray took to start before the pipeline points, which then all find it running, as a job
    submitted to a cluster does: their start-up is the pipeline's own."""

    def of(self, kind: str) -> list[Point]:
        return [p for p in self.points if p.kind == kind]

    def bare_for(self, point: Point) -> Point | None:
        """The bare-engine run with the same budget and max_model_len (the fastest, when repeated)."""
        key = (point.params.get("max_num_batched_tokens"), point.params.get("max_model_len"))
        same = [
            b
            for b in self.of("bare")
            if b.ok and (b.params.get("max_num_batched_tokens"), b.params.get("max_model_len")) == key
        ]
        return max(same, key=lambda b: b.tokens_per_s) if same else None


def sweep_settings(settings: BenchJobSettings, prefix: str) -> list[Settings]:
    """One run's Settings per sweep point (without the bench section, which runs do not record), each writing to
    tables of its own so nothing is skipped as unchanged, and without the indexing at the end of a run, which no
    baseline does."""
    b = settings.bench
    lens = b.max_model_lens or [settings.model.max_model_len]
    actors = b.actors or [settings.run.actors]
    rows = b.batch_rows or [settings.run.batch_rows]
    shares = b.engines_per_device or [settings.run.engines_per_device]
    points = []
    sweep = itertools.product(shares, b.budgets, lens, actors, rows)
    for i, (per_device, budget, mml, n_actors, batch) in enumerate(sweep):
        points.append(
            core_settings(settings).model_copy(
                update={
                    "model": settings.model.model_copy(
                        update={"max_num_batched_tokens": budget, "max_model_len": mml}
                    ),
                    "run": settings.run.model_copy(
                        update={"actors": n_actors, "batch_rows": batch, "engines_per_device": per_device}
                    ),
                    "store": settings.store.model_copy(update={"table_prefix": f"{prefix}p{i}_"}),
                    "index": settings.index.model_copy(update={"after_run": False}),
                }
            )
        )
    return points


def engine_plan(settings: Settings, executor: Executor | None = None) -> RunPlan:
    """The plan one pipeline actor would get with these settings, alone on its device, for the baselines: the run's
    own start, on this machine (or the executor's cluster)."""
    settings = settings.model_copy(update={"run": settings.run.model_copy(update={"engines_per_device": 1})})
    start = start_run(settings, executor or InProcessExecutor(), open_store(settings))
    start.tokenizer()
    return start.plan


def run_bench(settings: BenchJobSettings) -> BenchResult:
    bench_id = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}"
    out_dir = Path(settings.bench.output_dir) / bench_id
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"{settings.store.table_prefix}bench{bench_id}_"
    points = sweep_settings(settings, prefix)
    first = points[0]
    plan = engine_plan(first)
    spec = plan.engine
    table = corpus.chunk_corpus(first)
    if not len(table):
        msg = f"the inputs {list(settings.input.paths)} hold no documents to chunk; point input.paths at a corpus"
        raise PipelineError(msg)
    chunks_path = corpus.save(table, out_dir / "chunks.arrow")
    lengths = corpus.lengths_of(table)
    shape = plan.model.shape
    device = None
    if settings.bench.measure_device:
        seq = round(sum(n * n for n in lengths) / sum(lengths))
        device = measure_device(spec, shape, seq, settings.model.max_num_batched_tokens)
        log.info("device_measured", **device.to_dict())
    dtype = device.dtype if device else spec.dtype
    peak, source = peak_tflops(
        device.name if device and spec.device == "cuda" else None,
        dtype,
        settings.bench.peak_tflops,
        "bench.peak_tflops",
    )
    result = BenchResult(
        bench_id,
        out_dir,
        settings,
        len(table),
        sum(lengths),
        lengths,
        flops_per_token(shape, lengths),
        peak,
        source,
        device,
        engine_devices=1 if spec.device == "cpu" else max(1, (first.run.actors or 1)),
        model=plan.model_id,
        engine_device=spec.device,
    )
    store = open_store(settings, prefix)
    vectors: dict[str, dict[str, list[float]]] = {}
    baselines = settings.bench.baselines
    bare_keys = list(dict.fromkeys((p.model.max_num_batched_tokens, p.model.max_model_len) for p in points))

    if "bare" in baselines:
        result.points.append(_bare(first, chunks_path, "bare", vectors))
    if points:
        result.ray_start_s = _start_ray(first)
    for i, point_settings in enumerate(points):
        result.points.append(_pipeline_point(point_settings, f"pipeline p{i}", vectors))
    if "ray_data_llm" in baselines:
        result.points.append(_ray_data_llm(spec, table, first, store, f"{prefix}ray_data_llm_chunks", vectors, result))
    _stop_ray()
    if "serve" in baselines:
        result.points.extend(_serve(spec, table, first, settings.bench, store, prefix, out_dir, vectors, result))
    if "bare" in baselines:
        repeats = [bare_keys[0]] * (settings.bench.bare_runs - 1) + bare_keys[1:]
        for n, (budget, mml) in enumerate(repeats, start=1):
            s_ = next(p for p in points if (p.model.max_num_batched_tokens, p.model.max_model_len) == (budget, mml))
            result.points.append(_bare(s_, chunks_path, f"bare #{n + 1}", vectors))
    else:
        result.missing["bare"] = "not in bench.baselines"
    for kind in ("serve", "ray_data_llm"):
        if kind not in baselines:
            result.missing.setdefault(kind, "not in bench.baselines")
    result.cosines = _cosines(vectors)
    return result


def open_store(settings: Settings, prefix: str | None = None) -> LanceStore:
    return LanceStore.from_settings(settings.store, prefix)


def _bare(settings: Settings, chunks_path: Path, label: str, vectors: dict) -> Point:
    from benchmarks.bare import run_bare

    spec = engine_plan(settings).engine
    try:
        point, sample = run_bare(spec, chunks_path, label)
    except Exception as exc:  # a baseline's failure is reported, not fatal to the sweep
        log.exception("baseline_failed", baseline=label)
        return _failed("bare", label, settings, exc)
    vectors.setdefault("bare", sample)
    log.info("bare_measured", label=label, tokens_per_s=round(point.tokens_per_s), start_s=round(point.startup_s, 1))
    return point


def _pipeline_point(settings: Settings, label: str, vectors: dict) -> Point:
    try:
        with CpuSampler() as sampler:
            run = run_ingest(settings)
    except PipelineError as exc:
        log.error("pipeline_point_failed", label=label, error=str(exc))
        return _failed("pipeline", label, settings, exc)
    store = open_store(settings)
    point = point_from_rows(store, run.run_id, label)
    began = run.started_at.timestamp()
    point = replace(point, cpu=cpu_by_role(sampler.samples, began + point.startup_s, began + point.wall_s))
    vectors.setdefault("pipeline", {})
    vectors["pipeline"].update(_stored_vectors(store, vectors.get("bare", {})))
    log.info("pipeline_measured", label=label, tokens_per_s=round(point.tokens_per_s), wall_s=round(point.wall_s, 1))
    return point


def point_from_rows(store: LanceStore, run_id: str, label: str) -> Point:
    """A pipeline point built only from its runs row and batches rows, so the report agrees with the tables."""
    where = f"{s.RUN_ID} = {sql_str(run_id)}"
    [run] = [RunRecord.from_row(row) for row in store.read(store.names.runs, where).to_pylist()]
    batches = store.read(store.names.batches, where)
    resolved = run.resolved()
    per_call = batches.column("engine_tokens").to_numpy() if len(batches) else np.zeros(0)
    engine = json.loads(run.engine) if run.engine else {}
    return Point(
        kind="pipeline",
        label=label,
        params={
            "max_num_batched_tokens": run.max_num_batched_tokens,
            "max_model_len": run.max_model_len,
            "actors": resolved["actors"],
            "engines_per_device": resolved.get("engines_per_device", 1),
            "batch_rows": run.settings_values()["run"]["batch_rows"],
            "engine_max_num_batched_tokens": engine.get("max_num_batched_tokens"),
            "engine_max_num_seqs": engine.get("max_num_seqs"),
            "engine_chunked_prefill": engine.get("chunked_prefill"),
        },
        wall_s=run.wall_s,
        startup_s=run.startup_s or 0.0,
        chunks=run.chunks,
        tokens=run.tokens,
        engine_tokens=run.engine_tokens,
        stages={k: getattr(run, k) for k in STAGES},
        engines=resolved["actors"],
        tokens_per_call=float(per_call.mean()) if len(per_call) else None,
        run_id=run_id,
        error=run.error,
    )


def _stored_vectors(store: LanceStore, wanted: dict) -> dict[str, list[float]]:
    if not wanted or not store.exists(store.names.chunks):
        return {}
    ids = ", ".join(sql_str(i) for i in wanted)
    table = store.read(store.names.chunks, f"{s.CHUNK_ID} IN ({ids})", [s.CHUNK_ID, s.VECTOR])
    return dict(zip(table.column(s.CHUNK_ID).to_pylist(), table.column(s.VECTOR).to_pylist(), strict=True))


def _ray_data_llm(spec, table, settings, store, name, vectors, result) -> Point:
    from benchmarks.ray_llm import run_ray_data_llm

    try:
        _start_ray(settings)
        point, sample = run_ray_data_llm(spec, table, settings.run.batch_rows, store, name, settings.run.commit_rows)
    except Exception as exc:
        log.exception("baseline_failed", baseline="ray_data_llm")
        result.missing["ray_data_llm"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"
        return _failed("ray_data_llm", "ray.data.llm", settings, exc)
    vectors["ray_data_llm"] = sample
    log.info("ray_data_llm_measured", tokens_per_s=round(point.tokens_per_s), wall_s=round(point.wall_s, 1))
    return point


def _serve(spec, table, settings: Settings, b: BenchSettings, store, prefix, out_dir, vectors, result) -> list[Point]:
    from benchmarks.serve import run_serve, vllm_server

    params = {"max_num_batched_tokens": spec.max_num_batched_tokens, "max_model_len": spec.max_model_len}
    points = []
    try:
        with vllm_server(spec, out_dir / "serve.log", b.serve_start_timeout_s) as (url, startup_s):
            for c in b.serve_concurrency:
                point, sample = run_serve(
                    url,
                    startup_s,
                    table,
                    c,
                    b.serve_inputs_per_request,
                    store,
                    f"{prefix}serve_c{c}_chunks",
                    settings.run.commit_rows,
                    params,
                )
                vectors.setdefault("serve", sample)
                log.info("serve_measured", concurrency=c, tokens_per_s=round(point.tokens_per_s))
                points.append(point)
    except Exception as exc:
        log.exception("baseline_failed", baseline="serve")
        result.missing["serve"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"
        points.append(_failed("serve", "serve", settings, exc))
    return points


def _failed(kind: str, label: str, settings: Settings, exc: BaseException) -> Point:
    params = {
        "max_num_batched_tokens": settings.model.max_num_batched_tokens,
        "max_model_len": settings.model.max_model_len,
    }
    return Point(kind, label, params, 0.0, 0.0, 0, 0, 0, error=f"{type(exc).__name__}: {exc}"[:1000])


def _start_ray(settings: Settings) -> float:
    from pipeline.run.ray.executor import RayExecutor

    started = time.perf_counter()
    RayExecutor().start(settings.run)
    return time.perf_counter() - started


def _stop_ray() -> None:
    """Ray shut down and, when local, its processes (the pipeline's engines among them) gone before the next
    engine starts."""
    from pipeline.run.ray.executor import RayExecutor

    RayExecutor.stop()


def _cosines(vectors: dict[str, dict[str, list[float]]]) -> dict[str, float]:
    bare = vectors.get("bare") or {}
    out = {}
    for kind, sample in vectors.items():
        if kind == "bare":
            continue
        common = [i for i in bare if i in sample]
        if not common:
            continue
        a = np.asarray([bare[i] for i in common], dtype=np.float64)
        b = np.asarray([sample[i] for i in common], dtype=np.float64)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        out[kind] = float(cos.min())
    return out


def bench_rows(result: BenchResult, diagnosis: str) -> pa.Table:
    from benchmarks.metrics import efficiency, mfu

    serve_best = max((p.tokens_per_s for p in result.of("serve") if p.ok), default=0.0)
    rdl = max((p.tokens_per_s for p in result.of("ray_data_llm") if p.ok), default=0.0)
    now = datetime.now(timezone.utc)
    rows = []
    for p in result.points:
        bare = result.bare_for(p)
        rows.append(
            {
                "bench_id": result.bench_id,
                "kind": p.kind,
                "label": p.label,
                "run_id": p.run_id,
                "params": json.dumps(p.params, sort_keys=True),
                "max_num_batched_tokens": p.params.get("max_num_batched_tokens"),
                "max_model_len": p.params.get("max_model_len"),
                "wall_s": p.wall_s,
                "startup_s": p.startup_s,
                "steady_s": p.steady_s if p.ok else None,
                "chunks": p.chunks,
                "tokens": p.tokens,
                "engine_tokens": p.engine_tokens,
                "tokens_per_s": p.tokens_per_s,
                "e2e_tokens_per_s": p.e2e_tokens_per_s,
                "efficiency": efficiency(p, bare, result.engine_devices) if p.kind != "bare" else None,
                "vs_serve": p.tokens_per_s / serve_best if serve_best else None,
                "vs_ray_data_llm": p.tokens_per_s / rdl if rdl else None,
                "mfu": mfu(p, result.flops_per_token, result.peak_tflops),
                "engine_busy": p.engine_busy,
                "tokens_per_call": p.tokens_per_call,
                "stages": json.dumps(p.stages, sort_keys=True),
                "flops_per_token": result.flops_per_token,
                "diagnosis": diagnosis if p.kind == "pipeline" else None,
                "error": p.error,
                "note": p.note,
                "created_at": now,
                "model": result.model,
                "device": result.engine_device,
            }
        )
    return pa.Table.from_pylist(rows, schema=BENCH_SCHEMA)


def core_settings(settings: Settings) -> Settings:
    """The sections every run reads, without a job's own (what a runs row records)."""
    return Settings.model_construct(**{name: getattr(settings, name) for name in Settings.model_fields})
