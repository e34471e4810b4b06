"""Jobs as a user runs them: `python -m jobs.<name>` in its own process, from the repository root, on a local Ray
that the job starts for itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
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


def stand_in_ingest(model: Path, corpus: Path, db: Path, *extra: str, status: int = 0) -> subprocess.CompletedProcess:
    """`python -m jobs.ingest` on a small local Ray with the stand-in engine (tests.fakes.StandInEngine), batches of 4
    rows and no index after the run; its exit status checked against `status`."""
    args = job_command(
        "jobs.ingest",
        *("--model-path", str(model), "--model.name", "tiny", "--inputs", str(corpus), "--db", str(db)),
        *("--model.embedder", "tests.fakes:StandInEngine", "--no-index.after-run", "--run.batch-rows", "4"),
        *extra,
    )
    proc = subprocess.run(args, cwd=REPO, env=job_env(**SMALL_RAY), capture_output=True, text=True, timeout=600)
    assert proc.returncode == status, proc.stderr[-3000:]
    return proc


STARTED: list[IngestProcess] = []
"""Every ingest job a test started, stopped with its Ray's processes when the test ends, however it ended
(tests/conftest.py: `no_job_outlives_its_test`)."""


class IngestProcess:
    """`python -m jobs.ingest` in its own process and session (so its local Ray's processes can be found, and
    stopped by their ids when it is killed), its JSON log events collected as they come. `faults`: what
    EMBEDPIPE_FAULTS injects (pipeline/runtime/faults.py), counted under `faults_dir`."""

    def __init__(self, args: list[str], faults: str = "", faults_dir: Path | None = None, **env: str):
        from pipeline.runtime.faults import FAULTS_DIR_ENV, FAULTS_ENV

        command = job_command("jobs.ingest", *args, "--logging.json-format", "true")
        extra = {FAULTS_ENV: faults, FAULTS_DIR_ENV: str(faults_dir)} if faults else {}
        self.faults_dir = faults_dir
        self.events: list[dict] = []
        self.stderr: list[str] = []
        self.proc = subprocess.Popen(
            command,
            cwd=REPO,
            env=job_env(**SMALL_RAY, **extra, **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        STARTED.append(self)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for line in self.proc.stderr:
                self.stderr.append(line)
                if line.startswith("{"):
                    try:
                        self.events.append(json.loads(line))
                    except ValueError:
                        continue
        except ValueError:  # the pipe closes under the reader when the process is killed
            return

    def wait_for(self, event: str, count: int = 1, timeout_s: float = 300) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if sum(e.get("event") == event for e in self.events) >= count:
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        raise TimeoutError(f"no {event} event within {timeout_s} s:\n{''.join(self.stderr[-40:])}")

    def held_at(self, point: str, nth: int = 1, timeout_s: float = 300) -> None:
        """Wait until the job reached `point` for the `nth` time, where it holds (a `wait` fault)."""
        deadline = time.monotonic() + timeout_s
        while not (self.faults_dir / f"{point}.{nth}").exists():
            assert self.proc.poll() is None, f"the job ended before {point}:\n{''.join(self.stderr[-40:])}"
            assert time.monotonic() < deadline, f"the job never reached {point}:\n{''.join(self.stderr[-40:])}"
            time.sleep(0.05)

    def release(self, point: str) -> None:
        (self.faults_dir / f"{point}.go").touch()

    def died(self, timeout_s: float = 300) -> None:
        """The driver killed itself (a `kill` fault); then its local Ray's processes, which would otherwise outlive
        it, are stopped by their ids."""
        returncode = self.proc.wait(timeout=timeout_s)
        self._reader.join(timeout=5)
        assert returncode == -signal.SIGKILL, f"the job was not killed ({returncode}):\n{''.join(self.stderr[-40:])}"
        reap_session(self.proc.pid, grace_s=2.0)  # what it left is stopped, not waited for

    def ended(self, timeout_s: float = 300) -> int:
        self.proc.wait(timeout=timeout_s)
        self._reader.join(timeout=5)
        return self.proc.returncode

    def ray_processes(self, title: str) -> list[int]:
        """This job's processes whose title names `title` (Ray titles a worker by what it runs)."""
        return [pid for pid, cmdline in session_processes(self.proc.pid).items() if title in cmdline]

    def finish(self, timeout_s: float = 600) -> str:
        out, _ = self.proc.communicate(timeout=timeout_s)
        self._reader.join(timeout=5)
        assert self.proc.returncode == 0, "".join(self.stderr[-60:])
        left = session_processes(self.proc.pid)
        assert not left, f"the job's local Ray left processes running: {left}"
        return out


def stop_started_jobs() -> None:
    """Stop every job a test started that still runs, and what its local Ray left."""
    while STARTED:
        job = STARTED.pop()
        if job.proc.poll() is None:
            job.proc.kill()
            job.proc.wait()
        reap_session(job.proc.pid, grace_s=5.0)
