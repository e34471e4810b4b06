"""What clusters do to a run, with the stand-in engine. On a two-node Ray cluster started on this machine (a head and
a second node, 2 CPUs each, as `ray start` starts them) with an engine on each node, paced like a CPU engine: the run
finishes on the head when the second node is lost after the first commit, recording the loss; a rerun then equals
a clean run (the same shape with no fault, which once stalled, runs to the end in tests/ray/test_cluster_job.py).
On a local Ray with a stand-in engine that stops answering: it is restarted and the run finishes; one that keeps
hanging ends the run with its last log lines."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import lancedb
import pyarrow as pa
import pytest

from pipeline import schema as s
from pipeline.plan.job import plan_lengths
from pipeline.run.in_process import planned_documents
from pipeline.settings import InputSettings, load_settings
from pipeline.stages.chunk_step import ChunkStep
from pipeline.stages.chunking import Chunker
from pipeline.stages.tokenizer import load_tokenizer
from tests.fakes import HANGS_ENV, RECORDS_ENV
from tests.job_process import REPO, SMALL_RAY, job_command, job_env
from tests.local_cluster import LocalCluster

pytestmark = pytest.mark.ray
SMALL_GROUPS = ("--no-index.after-run", "--run.commit-rows", "32", "--run.batch-rows", "8")
PACED = ("--model.embedder", "tests.fakes:PacedEngine")


class Job:
    """`python -m jobs.ingest --config conf/local.toml` in its own process, its JSON log events collected."""

    def __init__(self, env: dict, corpus: Path, db: Path, *extra: str):
        args = job_command(
            "jobs.ingest", "--inputs", str(corpus), "--db", str(db), "--logging.json-format", "true", *extra
        )
        self.started = time.monotonic()
        self.events: list[dict] = []
        self.stderr: list[str] = []
        # stdout to a file: joining a cluster, the driver prints its workers' logs there, and a pipe that nobody
        # reads fills up and stops it
        self.stdout = (db.parent / f"{db.name}-stdout.txt").open("w")
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=self.stdout, stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)
            if line.startswith("{"):
                try:
                    self.events.append({**json.loads(line), "_at": time.monotonic()})
                except ValueError:
                    continue

    def wait_for(self, event: str, timeout_s: float = 400) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            for e in self.events:
                if e.get("event") == event:
                    return e["_at"]
            time.sleep(0.05)
        raise AssertionError(f"no {event} event:\n{''.join(self.stderr[-30:])}")

    def said(self) -> str:
        """The job's error line, if it printed one, then the last lines it printed."""
        errors = [line for line in self.stderr if line.startswith("error:")]
        return "".join([*errors[-1:], "...\n", *self.stderr[-30:]])

    def end(self, timeout_s: float = 600) -> int:
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the job did not end in {timeout_s} s:\n{self.said()}") from None
        finally:
            self._reader.join(timeout=5)
            self.stdout.close()
        return self.proc.returncode


def runs(db: Path) -> list[dict]:
    return lancedb.connect(str(db)).open_table("runs").to_arrow().sort_by("started_at").to_pylist()


def chunk_ids(db: Path) -> list[str]:
    return lancedb.connect(str(db)).open_table("chunks").to_arrow().column(s.CHUNK_ID).to_pylist()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The sample corpus: 106 documents, 390 chunks of the embedded default, 13 commits of 32 chunks."""
    out = tmp_path_factory.mktemp("corpus")
    subprocess.run([sys.executable, "-m", "jobs.sample_corpus", "--out", str(out)], cwd=REPO, check=True)
    return out


@pytest.fixture(scope="module")
def clean_ids(corpus) -> set[str]:
    """The chunk ids a clean run of the embedded default stores: the same chunking, in this process."""
    lengths = plan_lengths(load_settings(REPO / "conf/local.toml"))
    docs = planned_documents(InputSettings(paths=[str(corpus)]), lengths.chunk.fingerprint)
    rows = ChunkStep(Chunker(load_tokenizer(lengths.model.path), lengths.chunk))(docs)
    return set(rows.filter(pa.compute.is_valid(rows.column(s.CHUNK_ID))).column(s.CHUNK_ID).to_pylist())


@pytest.fixture
def cluster():
    """A fresh two-node cluster for each test. On one cluster kept for both, the second run stalled before its first
    commit in 2 of 2 CI runs (and 1 of 4 here), engines started and nothing read; not understood yet (see the
    note on issue 26), so each test gets the cluster a scheduled job would meet."""
    nodes = LocalCluster("faults", {})
    try:
        nodes.add_node(cpus=2)
        nodes.add_node(cpus=2)
        yield nodes
    finally:
        nodes.stop()
        shutil.rmtree(nodes.temp_dir, ignore_errors=True)


def test_losing_the_second_node_after_the_first_commit_leaves_the_head_to_finish(cluster, corpus, clean_ids, tmp_path):
    db = tmp_path / "db"
    job = Job(cluster.job_env(), corpus, db, "--run.actors", "2", *PACED, *SMALL_GROUPS)
    job.wait_for("rows_committed")
    killed_at = time.monotonic()
    assert len(cluster.kill_node(1)) > 1  # its raylet and the workers under it
    code = job.end()
    ended_s = time.monotonic() - killed_at
    [run] = runs(db)
    print(
        f"node lost {killed_at - job.started:.1f} s into the run; the run ended {ended_s:.1f} s later: {run['status']}"
    )
    lost = json.loads(run["lost_nodes"] or "[]")
    assert len(lost) == 1 and run["engines_lost"] == 1, run
    if code == 0:  # the head's engine took the lost engine's batches: nothing lost, nothing twice
        ids = chunk_ids(db)
        assert run["status"] == "succeeded" and len(ids) == len(set(ids)) and set(ids) == clean_ids
        return
    # or the run ended within its bound, saying what was lost and that a rerun resumes: rerun on this machine
    assert ended_s < 600 and lost[0] in job.stderr[-1] and "a rerun resumes" in job.stderr[-1]
    committed = len(chunk_ids(db))
    stand_in = ("--model.embedder", "tests.fakes:StandInEngine")
    rerun = Job(job_env(**SMALL_RAY), corpus, db, *stand_in, *SMALL_GROUPS)
    assert rerun.end() == 0, rerun.said()
    ids = chunk_ids(db)
    assert len(ids) == len(set(ids)) and set(ids) == clean_ids  # nothing lost, nothing twice
    print(f"chunks committed before the rerun: {committed} of {len(clean_ids)}; it embedded {runs(db)[-1]['chunks']}")


def local_job(env_extra: dict, corpus: Path, db: Path, records: Path, *extra: str) -> Job:
    env = job_env(**SMALL_RAY, **env_extra, **{RECORDS_ENV: str(records)})
    flags = ["--model.embedder", "tests.fakes:HangingEngine", "--run.engine-call-timeout-s", "5"]
    return Job(env, corpus, db, *flags, "--run.engine-start-timeout-s", "15", *SMALL_GROUPS, *extra)


def test_an_engine_that_stops_answering_is_restarted_and_the_run_finishes(corpus, clean_ids, tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    job = local_job({HANGS_ENV: "1"}, corpus, tmp_path / "db", records)
    assert job.end() == 0, job.said()
    [run] = runs(tmp_path / "db")
    assert run["status"] == "succeeded" and set(chunk_ids(tmp_path / "db")) == clean_ids
    assert len(list((records / "hangs").iterdir())) == 1  # one incarnation stopped answering
    # on a loaded machine a restarted engine's call can outlive the test's 5 s bound too, and is counted as a hang
    # like any other: each hang counted is one restart, and each restart one more start
    assert run["engine_restarts"] == run["engines_hung"] >= 1, run
    assert len(list(records.glob("*.json"))) == run["engine_restarts"] + 1


def test_an_engine_that_keeps_hanging_ends_the_run_with_its_last_words(corpus, tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    job = local_job({HANGS_ENV: "always"}, corpus, tmp_path / "db", records, "--run.engine-hangs", "1")
    assert job.end() == 1
    error = job.stderr[-1]
    assert error.startswith("error: engine 0 hung 2 times") and "run.engine_hangs=1" in error, error
    assert "WARNING tests.fakes: stand-in engine" in error and "stops answering" in error  # its last log lines
    [run] = runs(tmp_path / "db")
    assert run["status"] == "failed" and run["engine_restarts"] == 1 and run["engines_hung"] == 2
