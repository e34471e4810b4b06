"""The job's command line: bad settings stop it before Ray or an engine starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def ingest(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jobs.ingest", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_missing_input_fails_with_exit_2_and_the_fix(tmp_path):
    proc = ingest("--config", "conf/local.toml", "--inputs", str(tmp_path / "missing"))
    assert proc.returncode == 2
    assert f"input '{tmp_path / 'missing'}' does not exist; fix input.paths" in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr and "raylet" not in proc.stderr  # Ray never started


def test_chunk_size_the_model_cannot_serve_is_refused(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"id": "1", "text": "x"}\n')
    proc = ingest("--config", "conf/local.toml", "--inputs", str(tmp_path), "--chunk-tokens", "600")
    assert proc.returncode == 2
    assert "chunk.tokens=600 does not fit model.max_model_len=256" in proc.stderr


def test_dry_run_reports_the_lowered_chunk_size(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"id": "1", "text": "x"}\n')
    proc = ingest("--config", "conf/local.toml", "--inputs", str(tmp_path), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "chunk.tokens lowered from 2000 to 255" in proc.stdout
    assert "1 shards" in proc.stdout and "max_model_len 256" in proc.stdout


def test_help_lists_every_setting_with_its_description_and_default():
    from pipeline.settings import Settings

    proc = ingest("--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())  # argparse wraps the descriptions
    for section, field in Settings.model_fields.items():
        for name, info in getattr(field.annotation, "model_fields", {}).items():
            flag = f"--{section}.{name.replace('_', '-')}"
            assert flag in text, flag
            assert " ".join(info.description.split())[:40] in text, flag
    assert "--chunk.tokens int, --chunk-tokens int Most tokens in one chunk" in text and "(default: 2000)" in text
