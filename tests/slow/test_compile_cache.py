"""A compiled engine's second start reads the compile cache instead of compiling again. On the CPU build vLLM 0.32
compiles in DYNAMO_TRACE_ONCE mode: TorchInductor compiles the traced graph, and its FX graph cache
(TORCHINDUCTOR_CACHE_DIR) is the cache a second start reads; torch's own counters say whether it did. The default
CPU engine is eager and compiles nothing; the plan says so (tests/unit/test_job_plan.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
START_ENGINE = """
import json
import sys

from torch._dynamo.utils import counters

from pipeline.engine.vllm import VllmEmbedder
from tests.support.plans import plan_on_one_node
from pipeline.settings import Settings

settings = Settings(
    model={"path": sys.argv[1], "max_model_len": 256, "dtype": "float32", "enforce_eager": False,
           "gpu_memory_utilization": 0.1},
    logging={"engine_level": "INFO"},
)
engine = VllmEmbedder(plan_on_one_node(settings, 2, gpus=0, cpus=2).engine)
print(json.dumps({"dim": engine.dim, "mode": engine.llm.llm_engine.vllm_config.compilation_config.mode.name,
                  "inductor": dict(counters["inductor"])}))
engine.close()
"""


def start_compiled_engine(model: Path, cache: Path) -> dict:
    env = {**os.environ, "VLLM_CACHE_ROOT": str(cache / "vllm"), "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor")}
    cmd = [sys.executable, "-c", START_ENGINE, str(model)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    started = json.loads(proc.stdout.strip().splitlines()[-1])
    assert started["dim"] == 384 and started["mode"] != "NONE"
    return started["inductor"]


def test_a_compiled_engine_reads_the_compile_cache_on_its_second_start(minilm_path, tmp_path):
    first = start_compiled_engine(minilm_path, tmp_path)
    assert first.get("fxgraph_cache_miss", 0) > 0 and first.get("fxgraph_cache_hit", 0) == 0
    second = start_compiled_engine(minilm_path, tmp_path)
    assert second.get("fxgraph_cache_hit", 0) > 0 and second.get("fxgraph_cache_miss", 0) == 0
