"""What a person sees on a terminal: one live progress line with a token-based ETA, and no engine or Ray
messages (those go to Ray's log files, whose directory the job names once)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

import pytest

from tests.job_process import REPO, job_command, job_env

pytestmark = pytest.mark.engine
DOCS = 40
"""Enough tokens (about 45 k) for the engine to work through several batches while the display ticks."""


def run_on_a_terminal(args: list[str], env: dict, timeout_s: float = 600) -> tuple[int, str]:
    leader, follower = pty.openpty()
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    out = bytearray()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the terminal closed: the job is done
                break
            if not data:
                break
            out += data
        elif proc.poll() is not None:
            break
    proc.wait(timeout=60)
    os.close(leader)
    return proc.returncode, out.decode(errors="replace")


def test_a_terminal_run_shows_live_progress_and_keeps_engine_messages_off_screen(minilm_path, tmp_path):
    corpus = tmp_path / "docs"
    corpus.mkdir()
    words = "the pipeline chunks documents with the model's own tokenizer and embeds them on an engine ".split()
    with (corpus / "a.jsonl").open("w") as f:
        for i in range(DOCS):
            f.write(json.dumps({"id": f"d{i}", "text": " ".join(words[(i + j) % len(words)] for j in range(900))}))
            f.write("\n")
    env = job_env(TERM="xterm", EMBEDPIPE_RUN__NUM_CPUS="2")
    args = job_command(
        "jobs.ingest", "--inputs", str(corpus), "--store.uri", str(tmp_path / "db"), "--no-index.after-run"
    )
    code, screen = run_on_a_terminal(args, env)
    assert code == 0, screen[-3000:]
    redraws = [line for line in screen.split("\r\x1b[2K") if "ETA" in line]
    assert len(redraws) >= 2, screen[-3000:]  # redrawn in place, not printed line after line
    shape = rf"docs \d+/{DOCS} · chunks \d+/\d+ · tokens [\d.k]+/[\d.k]+ · [\d,]+ tok/s · ETA \d"
    assert any(re.search(shape, r) for r in redraws), redraws
    assert "Ingestion took" in screen  # the summary line follows the display
    # vLLM's messages (WARNING 12-02 10:00:00 [model.py:123] ...), Ray's worker prefixes and Ray Data's block
    # counts never reach the screen; the job names the directory where they are
    assert not re.search(r"(INFO|WARNING) \d\d-\d\d [\d:]+ \[", screen), screen[-3000:]
    assert "(MapWorker" not in screen and "Running Dataset" not in screen and "logging_progress" not in screen
    plain = re.sub(r"\x1b\[[0-9;]*m", "", screen)  # the console renderer colours keys and values
    logs = re.search(r"logs=(\S+)", plain)
    assert logs and Path(logs.group(1)).is_dir(), plain[-3000:]
