"""Ray and vLLM stay at the edges: every module of the library, the jobs and the benchmarks imports neither (nor
torch) except the run's Ray side (pipeline/run/ray/) and the adapters named here. The list of modules comes from the
tree, so a new module is checked without being listed."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
RAY_SIDE = "pipeline.run.ray"
"""The run's Ray side: its executor, the cluster, the engines' actors and feeders, the dataset's stages."""
EDGES = {
    "benchmarks.ray_llm": "the Ray Data LLM baseline of the benchmark",
}


def at_an_edge(module: str) -> bool:
    return module in EDGES or module == RAY_SIDE or module.startswith(RAY_SIDE + ".")


def modules() -> list[str]:
    found = []
    for package in ("pipeline", "jobs", "benchmarks"):
        for path in sorted((REPO / package).rglob("*.py")):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            found.append(name.removesuffix(".__init__"))
    return found


def test_the_tree_is_found():
    names = modules()
    assert {"pipeline.stages.chunk_step", "pipeline.checks.verify", "benchmarks.metrics", "jobs.ingest"} <= set(names)
    assert set(EDGES) | {RAY_SIDE, f"{RAY_SIDE}.executor"} <= set(names), "an edge moved or went: update EDGES"


def test_core_modules_import_neither_ray_nor_vllm():
    pure = [m for m in modules() if not at_an_edge(m)]
    code = (
        f"import sys; import {', '.join(pure)}; print(sorted(m for m in ('ray', 'vllm', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout


def test_only_the_store_package_opens_tables():
    """LanceDB is reached through pipeline/store; the library, the jobs and the benchmark's runners do not open or
    connect to tables themselves (the scale benchmark builds its synthetic stores directly, on purpose)."""
    allowed = {"benchmarks.scale"}
    offenders = []
    for name in modules():
        if name.startswith("pipeline.store") or name in allowed:
            continue
        path = REPO / (name.replace(".", "/") + ".py")
        path = path if path.exists() else REPO / name.replace(".", "/") / "__init__.py"
        text = path.read_text()
        if "open_table(" in text or "lancedb.connect(" in text or "create_table(" in text:
            offenders.append(name)
    assert offenders == []


def test_the_modules_ray_workers_import_leave_the_lancedb_client_to_the_driver():
    """Every task and actor of a run imports its stage's module in a fresh worker process, tens per run: the lancedb
    client (about a second of imports on 2 cores) is the driver's, and workers read and write through pylance."""
    worker_side = [m for m in modules() if at_an_edge(m) and m.startswith(RAY_SIDE + ".")]
    code = f"import sys; import {', '.join(worker_side)}; print('lancedb' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False", worker_side
