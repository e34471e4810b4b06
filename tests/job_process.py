"""Jobs as a user runs them: `python -m jobs.<name>` in its own process, from the repository root, on a local Ray
that the job starts for itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil

from pipeline.runtime.process_tree import stop_leftovers

REPO = Path(__file__).resolve().parents[1]
SMALL_RAY = {
    "EMBEDPIPE_RUN__NUM_CPUS": "2",
    "EMBEDPIPE_RUN__OBJECT_STORE_MB": "256",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
}
"""A local Ray sized for these machines (2 cores), without Ray Data's progress bars in the captured output."""


def job_env(**extra: str) -> dict[str, str]:
    """This process's environment plus `extra`, without RAY_ADDRESS: a job that finds one joins that cluster
    instead of starting its own Ray."""
    env = {**os.environ, **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def job_command(module: str, *args: str, config: str = "conf/local.toml") -> list[str]:
    return [sys.executable, "-m", module, "--config", config, *args]


def session_processes(sid: int) -> dict[int, str]:
    """Every live process of session `sid` and its command line. A job started in a session of its own
    (`start_new_session=True`) keeps its local Ray's processes in it, workers too (Ray gives them process groups
    of their own, not sessions), and they stay in it when the job dies and they are left to init."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            state, _, _, session = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:4]
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
        except (OSError, ValueError):
            continue
        if int(session) == sid and state != "Z":
            found[int(proc.name)] = cmdline
    return found


def reap_session(sid: int, grace_s: float = 15.0) -> list[str]:
    """Wait up to `grace_s` for a dead job's session to empty on its own, then SIGKILL what is left, by pid.
    Returns what it had to kill, as "pid name"."""
    processes = []
    for pid in session_processes(sid):
        try:
            processes.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    return stop_leftovers(processes, grace_s)


def stand_in_ingest(
    model: Path, corpus: Path, db: Path, records: Path, *extra: str, status: int = 0
) -> subprocess.CompletedProcess:
    """`python -m jobs.ingest` on a small local Ray with the stand-in engine (tests.fakes.RecordingEngine, which
    writes a record of each start under `records`), batches of 4 rows and no index after the run; its exit status
    checked against `status`."""
    from tests.fakes import RECORDS_ENV

    args = job_command(
        "jobs.ingest",
        *("--model-path", str(model), "--model.name", "tiny", "--inputs", str(corpus), "--db", str(db)),
        *("--model.embedder", "tests.fakes:RecordingEngine", "--no-index.after-run", "--run.batch-rows", "4"),
        *extra,
    )
    env = job_env(**SMALL_RAY, **{RECORDS_ENV: str(records)})
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == status, proc.stderr[-3000:]
    return proc
