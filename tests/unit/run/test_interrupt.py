"""SIGTERM to the driver: outside a commit it ends the run at once; during one, after it."""

import os
import signal

import pytest

from pipeline.errors import RunInterrupted
from pipeline.run.interrupt import Interrupt, on_sigterm

pytestmark = pytest.mark.unit


def test_sigterm_outside_a_commit_interrupts_at_once_and_names_the_signal():
    with pytest.raises(RunInterrupted, match="SIGTERM"), on_sigterm():
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the signal did not interrupt")


def test_sigterm_during_a_commit_lets_it_finish_then_interrupts():
    finished = []
    with pytest.raises(RunInterrupted), on_sigterm() as interrupt, interrupt.committing():
        os.kill(os.getpid(), signal.SIGTERM)
        finished.append("commit")
    assert finished == ["commit"]


def test_a_run_without_the_signal_is_not_interrupted():
    interrupt = Interrupt()
    with interrupt.committing():
        pass
    interrupt.check()
    assert interrupt.reason is None


def test_the_previous_handler_is_back_after_the_run():
    before = signal.getsignal(signal.SIGTERM)
    with on_sigterm():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
