from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.model_builders import build_bpe_tokenizer, build_tiny_bert, minilm_dir


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
