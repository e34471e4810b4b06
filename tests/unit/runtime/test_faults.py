"""Faults land where a test asks: the Nth reach of a point, counted across processes, and nowhere else."""

from __future__ import annotations

import multiprocessing
import signal

import pytest

from pipeline.runtime.faults import FAULTS_DIR_ENV, FAULTS_ENV, InjectedFault, fault_point, parse

pytestmark = pytest.mark.unit


def test_only_the_nth_reach_of_the_named_point_fails(monkeypatch, tmp_path):
    monkeypatch.setenv(FAULTS_ENV, "commit.after_group=raise@3")
    monkeypatch.setenv(FAULTS_DIR_ENV, str(tmp_path))
    fault_point("store.read")
    fault_point("commit.after_group")
    fault_point("commit.after_group")
    with pytest.raises(InjectedFault, match=r"commit\.after_group \(reach 3\)"):
        fault_point("commit.after_group")
    fault_point("commit.after_group")  # a retry after the fault goes on


def test_without_the_setting_nothing_is_counted(monkeypatch, tmp_path):
    monkeypatch.delenv(FAULTS_ENV, raising=False)
    monkeypatch.setenv(FAULTS_DIR_ENV, str(tmp_path))
    fault_point("write.after_fragments")
    assert list(tmp_path.iterdir()) == []


def _reach_twice() -> None:
    fault_point("write.after_fragments")
    fault_point("write.after_fragments")


def test_the_kill_counts_reaches_across_processes_and_kills_the_process_that_reaches_it(monkeypatch, tmp_path):
    monkeypatch.setenv(FAULTS_ENV, "write.after_fragments=kill@3")
    monkeypatch.setenv(FAULTS_DIR_ENV, str(tmp_path))
    context = multiprocessing.get_context("spawn")
    first = context.Process(target=_reach_twice)
    first.start()
    first.join(60)
    second = context.Process(target=_reach_twice)
    second.start()
    second.join(60)
    assert (first.exitcode, second.exitcode) == (0, -signal.SIGKILL)
    assert len(list(tmp_path.iterdir())) == 3  # the killed process got no further


def test_a_misspelled_fault_is_refused_naming_the_points():
    assert parse("write.after_fragments=kill@2, store.read=raise@1") == {
        "write.after_fragments": ("kill", 2),
        "store.read": ("raise", 1),
    }
    with pytest.raises(ValueError, match=r"'write\.after_fragment=kill@2'.*commit\.after_group"):
        parse("write.after_fragment=kill@2")
    with pytest.raises(ValueError, match="N >= 1"):
        parse("store.read=kill@0")


def test_a_wait_holds_the_point_until_the_test_lets_it_go(monkeypatch, tmp_path):
    import threading
    import time

    monkeypatch.setenv(FAULTS_ENV, "store.read=wait@1")
    monkeypatch.setenv(FAULTS_DIR_ENV, str(tmp_path))
    passed = threading.Event()
    held = threading.Thread(target=lambda: (fault_point("store.read"), passed.set()))
    held.start()
    time.sleep(0.5)
    assert not passed.is_set()
    (tmp_path / "store.read.go").touch()
    assert passed.wait(5)
    held.join()
