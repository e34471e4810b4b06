import subprocess
import sys

import psutil
import pytest

from pipeline.runtime.process_tree import children, started_since, stop_leftovers, with_descendants

pytestmark = pytest.mark.unit

SLEEPER = "import time; time.sleep(600)"
PARENT = (
    "import subprocess, sys, time; "
    f"p = subprocess.Popen([sys.executable, '-c', {SLEEPER!r}]); print(p.pid, flush=True); time.sleep(600)"
)


def test_a_process_still_running_after_the_grace_is_killed_and_one_that_exited_is_not():
    before = children()
    hung = subprocess.Popen([sys.executable, "-c", SLEEPER])
    quick = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    started = started_since(before)
    assert {p.pid for p in started} == {hung.pid, quick.pid}
    killed = stop_leftovers(started, grace_s=3)
    assert [k.split()[0] for k in killed] == [str(hung.pid)]
    assert not psutil.pid_exists(hung.pid)  # psutil reaped it: Popen can no longer tell how it ended


def test_a_grandchild_left_behind_when_its_parent_dies_is_still_found_and_killed():
    # A local Ray's worker: below the raylet when the run ends, orphaned once the raylet is shut down.
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    grandchild = int(parent.stdout.readline())
    tree = with_descendants([psutil.Process(parent.pid)])
    assert {p.pid for p in tree} == {parent.pid, grandchild}
    parent.kill()
    parent.wait()
    assert psutil.pid_exists(grandchild)
    killed = stop_leftovers(tree, grace_s=1)
    assert [k.split()[0] for k in killed] == [str(grandchild)]
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
