from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.model_builders import build_bpe_tokenizer, build_tiny_bert, minilm_dir

TIERS = {"unit": 120, "readers": 300, "ray": 600, "engine": 900, "slow": 1800}
"""Each tier, cheapest first, and its tests' timeout in seconds (setup included: a module's fixtures run with its
first test); a test may ask for more with @pytest.mark.timeout."""


def pytest_collection_modifyitems(config, items):
    """Every test is in exactly one tier, and in that tier's folder (tests/<tier>/); one in none, in two, or in
    another tier's folder fails the collection."""
    wrong = []
    for item in items:
        tiers = sorted({m.name for m in item.iter_markers() if m.name in TIERS})
        folder = Path(item.path).relative_to(Path(__file__).parent).parts[0]
        if tiers != [folder]:
            wrong.append(f"{item.nodeid}: {tiers or 'no tier'} in tests/{folder}/")
        elif item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TIERS[folder]))
    if wrong:
        lines = "\n  ".join(wrong)
        raise pytest.UsageError(f"each test needs exactly one tier marker of {list(TIERS)}, its folder's:\n  {lines}")


def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist a module's tests run in one worker, sharing its fixtures, and the real engine's modules
    (tests/engine/, tests/slow/) all in one worker, one after another: each engine takes every core."""
    from xdist.scheduler import LoadScopeScheduling

    class TierScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "real engine" if module.startswith(("tests/engine/", "tests/slow/")) else module

    return TierScheduling(config, log)


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    return minilm_dir()


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def sample_texts() -> list[str]:
    from pipeline.sample_corpus import DEFAULT_MODULES, documents

    return [d["text"] for d in documents(list(DEFAULT_MODULES[:40]), 6000)]


@pytest.fixture(scope="session")
def s3_server():
    from tests.s3_server import moto_server

    with moto_server() as server:
        yield server


@pytest.fixture(scope="session")
def bpe_tokenizer_path(tmp_path_factory, sample_texts) -> Path:
    return build_bpe_tokenizer(tmp_path_factory.mktemp("bpe"), sample_texts)


def model_settings(path: Path | str, **overrides):
    from pipeline.settings import ModelSettings

    return ModelSettings(path=str(path), **overrides)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray of this machine's size in this process, for one test module, shut down after it."""
    import ray

    ray.init(num_cpus=2, object_store_memory=512 * 2**20, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def no_job_outlives_its_test():
    """Every ingest job a test started (tests/job_process.py: IngestProcess) is stopped when the test ends, however
    it ended, with what its local Ray left."""
    yield
    from tests.job_process import stop_started_jobs

    stop_started_jobs()
