"""Faults a test injects at a named point of a run, so a crash lands exactly where the test means it to on any
machine, loaded or not, instead of a process caught in flight by a poll. Off unless EMBEDPIPE_FAULTS names the point:
a test-only hook that costs a dictionary lookup. No ray or vllm imports.

EMBEDPIPE_FAULTS="POINT=ACTION@N[,...]" makes the Nth time any process of the run reaches POINT do ACTION: `kill`
(SIGKILL this process, as the OOM killer or a lost node does), `raise` (an InjectedFault), or `wait` (hold there
until the test creates the file POINT.go in the directory, at most WAIT_S: the run is then known to be at that
point while the test acts). The reaches are counted across processes, in files under EMBEDPIPE_FAULTS_DIR (one
directory per test; the processes of a local cluster share it); a point reached again after its Nth time (Ray's retry
of a killed task) goes on."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

FAULTS_ENV = "EMBEDPIPE_FAULTS"
FAULTS_DIR_ENV = "EMBEDPIPE_FAULTS_DIR"
POINTS = {
    "store.read": "the driver, once the store is opened for the run's workers",
    "commit.after_group": "the driver, right after a group's commit, before the next",
    "write.after_fragments": "a write task, after writing its group's fragments, before sending its record",
    "engine.before_embed": "an engine actor, as a batch arrives, before its engine embeds it",
    "engine.start": "an engine actor, as it starts its engine",
}
"""Where a fault can be injected, and which process reaches the point."""
ACTIONS = ("kill", "raise", "wait")
WAIT_S = 600.0


class InjectedFault(RuntimeError):
    """Raised at a point a test asked to fail."""


def fault_point(name: str) -> None:
    """Reached `name`: do what EMBEDPIPE_FAULTS says for this reach, if anything."""
    spec = os.environ.get(FAULTS_ENV)
    if not spec:
        return
    wanted = parse(spec).get(name)
    if wanted is None:
        return
    action, nth = wanted
    if _reach(name) != nth:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "wait":
        _wait(Path(os.environ[FAULTS_DIR_ENV]) / f"{name}.go")
        return
    raise InjectedFault(f"fault injected at {name} (reach {nth})")


SUBMITTED_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
"""Set by Ray's job supervisor in the driver of a `ray job submit`: that job's runtime environment is the
submitter's, and a driver's own would replace it (its working_dir with it)."""


def forwarded_env() -> dict[str, str]:
    """The fault variables of this process, for the runtime environment of a driver joining a cluster by
    RAY_ADDRESS: its workers start from their nodes' environment, not the driver's (empty unless a test set them,
    and for a submitted job, whose runtime environment carries them)."""
    if os.environ.get(SUBMITTED_JOB_ENV):
        return {}
    return {k: os.environ[k] for k in (FAULTS_ENV, FAULTS_DIR_ENV) if os.environ.get(k)}


def _wait(go: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while not go.exists():
        if time.monotonic() > deadline:
            raise InjectedFault(f"{go.name} never came: the test that held this point did not release it")
        time.sleep(0.1)


def parse(spec: str) -> dict[str, tuple[str, int]]:
    """'point=action@n,...' -> {point: (action, n)}; ValueError naming what is wrong."""
    out = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        point, _, rest = item.partition("=")
        action, _, nth = rest.partition("@")
        if point not in POINTS or action not in ACTIONS or not nth.isdigit() or int(nth) < 1:
            msg = f"{FAULTS_ENV} item {item!r}: want POINT=ACTION@N with a point of {sorted(POINTS)}, an action of "
            raise ValueError(msg + f"{ACTIONS} and N >= 1")
        out[point] = (action, int(nth))
    return out


def _reach(name: str) -> int:
    """This reach's number among every process's reaches of `name` (1 for the first)."""
    if not os.environ.get(FAULTS_DIR_ENV):
        raise ValueError(f"{FAULTS_ENV} is set without {FAULTS_DIR_ENV}, the directory its reaches are counted in")
    folder = Path(os.environ[FAULTS_DIR_ENV])
    folder.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        try:
            fd = os.open(folder / f"{name}.{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            n += 1
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return n
