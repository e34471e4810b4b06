"""Nothing lost, nothing twice: real driver processes killed with SIGKILL, a killed engine actor, and two
jobs on one store, each checked against a clean run. Local Ray, the real CPU engine on a tiny model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import lancedb
import pyarrow as pa
import pytest

from pipeline import schema as s
from pipeline.schema import KEY_COLUMNS
from pipeline.stages.fates import complete_documents
from tests.job_process import REPO, SMALL_RAY, job_command, job_env, reap_session, session_processes

pytestmark = [pytest.mark.ray, pytest.mark.engine]
DOCS = 120
STARTED: list[IngestProcess] = []
"""Every job a test started, stopped with its Ray's processes when the test ends, however it ended."""


class IngestProcess:
    """`python -m jobs.ingest` in its own process and session (so its local Ray's processes can be found, and
    stopped by their ids when it is killed), its JSON log events collected as they come."""

    def __init__(self, model: Path, inputs: Path, db: Path, *extra: str):
        args = job_command(
            "jobs.ingest",
            "--model-path",
            str(model),
            "--model.name",
            "tiny",
            "--model.enforce-eager",
            "true",
            "--model.gpu-memory-utilization",
            "0.1",
            "--chunk-tokens",
            "128",
            "--inputs",
            str(inputs),
            "--db",
            str(db),
            "--run.commit-rows",
            "16",
            "--run.batch-rows",
            "8",
            "--logging.json-format",
            "true",
            *extra,
        )
        env = job_env(**SMALL_RAY)
        self.events: list[dict] = []
        self.stderr: list[str] = []
        self.proc = subprocess.Popen(
            args,
            cwd=REPO,
            env=env,
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

    def kill(self) -> None:
        """SIGKILL the driver, as the OOM killer would; then its local Ray's processes, which would otherwise
        outlive it (a worker stuck in its engine has been seen running 14 minutes after its driver died)."""
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
        reap_session(self.proc.pid)

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


@pytest.fixture(autouse=True)
def no_job_outlives_its_test():
    yield
    while STARTED:
        job = STARTED.pop()
        if job.proc.poll() is None:
            job.proc.kill()
            job.proc.wait()
        reap_session(job.proc.pid, grace_s=5.0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sample_texts) -> Path:
    """DOCS documents in 3 shards: enough chunks that a run is still writing well after its first commit."""
    root = tmp_path_factory.mktemp("corpus")
    texts = [sample_texts[i % 36] + f"\n\nCopy {i}." for i in range(DOCS)]
    for shard in range(3):
        docs = texts[shard::3]
        (root / f"part-{shard}.jsonl").write_text(
            "".join(json.dumps({"id": f"s{shard}-{i}", "text": t}) + "\n" for i, t in enumerate(docs))
        )
    return root


def chunks(db: Path) -> pa.Table:
    return lancedb.connect(str(db)).open_table("chunks").to_arrow()


def runs(db: Path) -> list[dict]:
    return lancedb.connect(str(db)).open_table("runs").to_arrow().sort_by("started_at").to_pylist()


@pytest.fixture(scope="module")
def clean(tiny_model_path, corpus, tmp_path_factory) -> pa.Table:
    db = tmp_path_factory.mktemp("clean") / "db"
    IngestProcess(tiny_model_path, corpus, db).finish()
    table = chunks(db)
    assert table.num_rows > 3 * DOCS
    return table


def assert_same_as_clean(db: Path, clean: pa.Table) -> None:
    table = chunks(db)
    ids = table.column(s.CHUNK_ID).to_pylist()
    assert len(ids) == len(set(ids)), "duplicate chunks"
    assert set(ids) == set(clean.column(s.CHUNK_ID).to_pylist())
    got = {r[s.CHUNK_ID]: r[s.VECTOR] for r in table.select([s.CHUNK_ID, s.VECTOR]).to_pylist()}
    want = {r[s.CHUNK_ID]: r[s.VECTOR] for r in clean.select([s.CHUNK_ID, s.VECTOR]).to_pylist()}
    assert max(max(abs(a - b) for a, b in zip(got[k], want[k], strict=True)) for k in want) < 1e-4


def test_driver_killed_at_several_points_then_rerun_equals_one_clean_run(tiny_model_path, corpus, clean, tmp_path):
    db = tmp_path / "db"
    kill_points = [("run_planned", 1), ("store_read", 1), ("rows_committed", 1)]
    for event, count in kill_points:
        job = IngestProcess(tiny_model_path, corpus, db)
        assert job.wait_for(event, count), f"run ended before {event}: {''.join(job.stderr[-15:])}"
        job.kill()
    stored = chunks(db)
    committed_before = stored.num_rows
    assert committed_before > 0, "the last kill came after commits"
    # Documents whose every chunk landed before the crash; a group may also hold only part of a document.
    chunking = stored.column(s.CHUNKING)[0].as_py()
    whole_before = len(complete_documents(stored.select(KEY_COLUMNS), chunking))
    out = IngestProcess(tiny_model_path, corpus, db).finish()
    assert_same_as_clean(db, clean)
    history = runs(db)
    assert [r["status"] for r in history] == ["interrupted"] * (len(history) - 1) + ["succeeded"]
    last = history[-1]
    assert last["skipped"] == whole_before, "documents committed before the crash were embedded again"
    assert last["docs_in"] == last["docs"] + last["skipped"] + last["rejected"] == DOCS
    assert "unchanged" in out


def test_second_run_embeds_nothing(tiny_model_path, corpus, clean, tmp_path):
    db = tmp_path / "db"
    IngestProcess(tiny_model_path, corpus, db).finish()
    before = chunks(db).sort_by(s.CHUNK_ID)
    IngestProcess(tiny_model_path, corpus, db).finish()
    after = chunks(db).sort_by(s.CHUNK_ID)
    assert after.column(s.CHUNK_ID) == before.column(s.CHUNK_ID)
    assert after.column(s.VECTOR) == before.column(s.VECTOR)
    last = runs(db)[-1]
    assert (last["skipped"], last["added"], last["replaced"], last["chunks"], last["tokens"]) == (DOCS, 0, 0, 0, 0)


def test_killed_engine_actor_is_restarted_and_every_chunk_lands_once(tiny_model_path, corpus, clean, tmp_path):
    db = tmp_path / "db"
    job = IngestProcess(tiny_model_path, corpus, db)
    assert job.wait_for("rows_committed", 1)
    pids = job.ray_processes("ray::EngineActor")
    assert pids, "no engine actor process found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    job.finish()
    assert_same_as_clean(db, clean)
    assert runs(db)[-1]["status"] == "succeeded"


def test_killed_write_task_is_retried_and_every_chunk_lands_once(tiny_model_path, corpus, clean, tmp_path):
    """SIGKILL a worker process while it runs a write task (fragments maybe written, record not yet sent): Ray
    retries the task, the retry's fragments are committed, the dead attempt's files stay orphans."""
    db = tmp_path / "db"
    job = IngestProcess(tiny_model_path, corpus, db)
    killed: list[int] = []
    deadline = time.monotonic() + 400
    while not killed and job.proc.poll() is None and time.monotonic() < deadline:
        for pid in job.ray_processes("MapBatches(_write)"):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        time.sleep(0.01)
    assert killed, "no write task was seen running"
    job.finish()
    assert_same_as_clean(db, clean)
    [run] = runs(db)
    assert run["status"] == "succeeded" and run["docs_in"] == DOCS


def test_a_second_job_on_the_same_store_is_refused_while_the_first_runs(tiny_model_path, corpus, clean, tmp_path):
    db = tmp_path / "db"
    first = IngestProcess(tiny_model_path, corpus, db)
    assert first.wait_for("run_planned")
    second = IngestProcess(tiny_model_path, corpus, db)
    second.proc.wait(timeout=120)
    second._reader.join(timeout=5)
    assert second.proc.returncode == 2
    assert "another ingestion run" in "".join(second.stderr)
    first.finish()
    assert_same_as_clean(db, clean)


def test_engine_that_cannot_start_fails_the_job_with_a_clear_message(tiny_model_path, corpus, tmp_path):
    db = tmp_path / "db"
    job = IngestProcess(tiny_model_path, corpus, db, "--gpu-memory-utilization", "0.99")
    job.proc.wait(timeout=300)
    job._reader.join(timeout=5)
    assert job.proc.returncode == 1
    # what the engine said, not Ray Data's "failed after retries"
    assert job.stderr[-1].startswith("error: ") and "gpu-memory-utilization" in job.stderr[-1]
    [run] = runs(db)
    assert run["status"] == "failed" and "EngineError" in run["error"]


def test_a_chunk_without_room_for_its_overlaps_is_refused_once_the_tokenizer_loads(tiny_model_path, corpus, tmp_path):
    """The engines start before the tokenizer has loaded; what only the tokenizer can tell (its special tokens
    leave no room for the overlaps) still refuses the run with the fix, before a run is recorded."""
    db = tmp_path / "db"
    job = IngestProcess(tiny_model_path, corpus, db, "--chunk-overlap-tokens", "64")
    job.proc.wait(timeout=300)
    job._reader.join(timeout=5)
    assert job.proc.returncode == 2
    assert job.stderr[-1].startswith("error: chunk.overlap_tokens=64 leaves no room")
    assert "lower chunk.overlap_tokens below 63" in job.stderr[-1]
    assert any(e.get("event") == "run_planned" for e in job.events)  # refused after the engines were placed
    tables = lancedb.connect(str(db)).table_names()
    assert "runs" not in tables or runs(db) == []


def test_sigterm_finishes_the_commit_in_flight_marks_the_run_interrupted_and_the_next_starts_at_once(
    tiny_model_path, corpus, clean, tmp_path
):
    """A spot instance's notice or Kubernetes deleting the pod: SIGTERM to the driver. It stops within the grace
    period (30 s, Kubernetes' default), records why, releases the store's lock, and the next run completes it."""
    db = tmp_path / "db"
    job = IngestProcess(tiny_model_path, corpus, db)
    assert job.wait_for("rows_committed", 1)
    signalled = time.monotonic()
    job.proc.send_signal(signal.SIGTERM)
    job.proc.wait(timeout=60)
    stopped_s = time.monotonic() - signalled
    job._reader.join(timeout=5)
    assert job.proc.returncode == 1 and stopped_s < 30, (stopped_s, "".join(job.stderr[-20:]))
    assert "interrupted by SIGTERM" in job.stderr[-1] and "a rerun resumes from there" in job.stderr[-1]
    [run] = runs(db)
    assert run["status"] == "interrupted" and run["error"].startswith("interrupted by SIGTERM")
    assert run["groups"] >= 1 and run["chunks"] == chunks(db).num_rows  # the row counts what stayed committed
    started = time.monotonic()
    rerun = IngestProcess(tiny_model_path, corpus, db)
    assert rerun.wait_for("run_planned", timeout_s=120) and time.monotonic() - started < 120  # no lock to wait out
    rerun.finish()
    assert_same_as_clean(db, clean)
    assert [r["status"] for r in runs(db)] == ["interrupted", "succeeded"]
