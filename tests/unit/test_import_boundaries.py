import subprocess
import sys

PURE_MODULES = [
    "pipeline.settings",
    "pipeline.schema",
    "pipeline.chunking",
    "pipeline.embedding",
    "pipeline.stats",
    "pipeline.documents",
    "pipeline.job_plan",
    "pipeline.tokenizer",
    "pipeline.io.sources",
    "pipeline.io.lance_store",
    "pipeline.ingest",
    "pipeline.reference_embedding",
    "pipeline.index_plan",
    "pipeline.io.maintenance",
    "pipeline.search",
    "pipeline.query_engine",
    "pipeline.retrieval_check",
    "jobs.index",
    "jobs.query",
    "jobs.retrieval_check",
]


def test_core_modules_import_neither_ray_nor_vllm():
    code = (
        f"import sys; import {', '.join(PURE_MODULES)}; "
        "print(sorted(m for m in ('ray', 'vllm', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
