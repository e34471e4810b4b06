"""The tokenizer cache: a second load of the same tokenizer files reads the stored backend without importing
transformers (nor torch) and tokenizes exactly as transformers' own load; a changed file is a miss; a cache that
cannot be written, or is switched off, only costs time."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.model_builders import TOKENIZER_FILES
from pipeline.stages.tokenizer import load_tokenizer
from pipeline.stages.tokenizer_cache import CACHE_ENV

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[3]
LOAD = """
import json, sys
from pipeline.stages.tokenizer import load_tokenizer
tok = load_tokenizer(sys.argv[1])
texts = json.loads(sys.argv[2])
print(json.dumps({"imported": sorted(m for m in ("transformers", "torch") if m in sys.modules),
                  "encoded": [tok.encode(t) for t in texts], "affixes": [tok.prefix_ids, tok.suffix_ids]}))
"""


def load_in_a_process(model: Path, texts: list[str], cache: Path | str) -> dict:
    env = {"PATH": "/usr/bin:/bin", CACHE_ENV: str(cache), "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-c", LOAD, str(model), json.dumps(texts)]
    out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.fixture
def model(tmp_path, minilm_path) -> Path:
    """The packaged model's tokenizer files in a directory of their own."""
    folder = tmp_path / "model"
    folder.mkdir()
    for name in TOKENIZER_FILES:
        if (minilm_path / name).is_file():
            shutil.copy(minilm_path / name, folder / name)
    return folder


def test_a_second_load_skips_transformers_and_tokenizes_the_same(model, tmp_path, sample_texts):
    texts = [sample_texts[0][:3000], "naïve café — ß, 東京, emoji 🙂 and  double  spaces\n\nnew paragraph"]
    first = load_in_a_process(model, texts, tmp_path / "cache")
    assert "transformers" in first["imported"] and len(list((tmp_path / "cache").iterdir())) == 1
    second = load_in_a_process(model, texts, tmp_path / "cache")
    assert second["imported"] == [], "a cached tokenizer loaded transformers"
    assert second["encoded"] == first["encoded"] and second["affixes"] == first["affixes"]


def test_a_changed_tokenizer_file_is_a_miss(model, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    before = load_tokenizer(model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 64}))
    after = load_tokenizer(model)
    assert len(list((tmp_path / "cache").iterdir())) == 2  # its own entry, not the first one's
    assert after.encode("a short text") == before.encode("a short text")


def test_an_unwritable_or_switched_off_cache_only_costs_time(model, tmp_path, monkeypatch):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(blocked))
    assert load_tokenizer(model).encode("hello world")[0]
    monkeypatch.setenv(CACHE_ENV, "off")
    assert load_tokenizer(model).encode("hello world")[0]
