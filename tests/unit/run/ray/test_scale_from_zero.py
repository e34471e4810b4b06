"""How long a run scaling from zero GPU workers waits, without a cluster: for all of run.gpus, or for the rest a
settle time after the first GPU node joined, or refused when none joined in time. (The request to Ray's
autoscaler itself, as `ray status` shows it: tests/ray/test_gpu_placement.py.)"""

from __future__ import annotations

import pytest

from pipeline.run.ray.cluster import scale_settled

pytestmark = pytest.mark.unit


def test_waits_for_every_gpu_asked_or_a_settle_time_after_the_first():
    assert scale_settled(wanted=16, got=16, waited_s=5, since_first_s=1, timeout_s=600, settle_s=300)
    assert not scale_settled(wanted=16, got=8, waited_s=100, since_first_s=60, timeout_s=600, settle_s=300)
    assert scale_settled(wanted=16, got=8, waited_s=400, since_first_s=300, timeout_s=600, settle_s=300)
    assert not scale_settled(wanted=16, got=0, waited_s=599, since_first_s=None, timeout_s=600, settle_s=300)
    assert scale_settled(wanted=16, got=0, waited_s=600, since_first_s=None, timeout_s=600, settle_s=300)
    # the first node's late arrival does not cut the settle short: it counts from then
    assert not scale_settled(wanted=16, got=1, waited_s=700, since_first_s=10, timeout_s=600, settle_s=300)
