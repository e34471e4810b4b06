"""Fixtures of the unit tier shared by the Ray adapters' tests (which run without a cluster)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from pipeline.run.in_process import planned_documents
from pipeline.settings import InputSettings, Settings
from tests.support.plans import plan_on_one_node


@pytest.fixture(scope="module")
def plan(minilm_path):
    """The embedded default's plan for one CPU engine on 2 cores."""
    return plan_on_one_node(Settings(model={"path": str(minilm_path), "device": "cpu"}), 2, gpus=0, cpus=2)


@pytest.fixture(scope="module")
def planned(plan, sample_texts, tmp_path_factory) -> pa.Table:
    """Four documents and a blank one, planned as new."""
    shard = tmp_path_factory.mktemp("in") / "s.jsonl"
    lines = [json.dumps({"id": f"doc{i}", "text": t}) for i, t in enumerate(sample_texts[:4])]
    shard.write_text("\n".join([*lines, json.dumps({"id": "blank", "text": " "})]))
    return planned_documents(InputSettings(paths=[str(shard)]), plan.chunk.fingerprint)
