"""A feeder's view of the engines: order of tries, bounds on a call, engines down for a while or gone."""

import pytest

from pipeline.run.ray.engine_calls import CALL_SLACK, DOWN_FOR_S, RATE_WEIGHT, EngineRoster

pytestmark = pytest.mark.unit


def roster(engines: int = 3, first: int = 1) -> EngineRoster:
    return EngineRoster(engines=engines, first=first, floor_s=120.0, start_allowance_s=1200.0)


def test_each_feeder_tries_its_own_engine_first_then_the_others_in_turn():
    assert roster(first=1).order(now=0.0) == [1, 2, 0]
    assert roster(first=0).order(now=0.0) == [0, 1, 2]


def test_an_unavailable_engine_is_left_for_a_while_then_tried_again():
    r = roster(first=1)
    r.unavailable(1, now=100.0)
    assert r.order(now=100.0) == [2, 0]
    assert r.next_try_s(now=100.0) == pytest.approx(DOWN_FOR_S)
    assert r.order(now=100.0 + DOWN_FOR_S) == [1, 2, 0]
    assert 1 not in r.answering


def test_an_answer_brings_an_engine_back_at_once():
    r = roster(first=1)
    r.unavailable(1, now=100.0)
    r.answered(1, tokens=1000, seconds=1.0)
    assert r.order(now=100.0) == [1, 2, 0] and 1 in r.answering


def test_a_lost_engine_is_never_tried_again_and_all_lost_ends_the_feed():
    r = roster(engines=2, first=0)
    r.lost(0)
    assert r.order(now=1e9) == [1] and not r.all_gone
    r.lost(1)
    assert r.order(now=0.0) == [] and r.all_gone
    assert r.next_try_s(now=0.0) == 0.0


def test_a_call_is_bounded_by_the_floor_until_the_engine_has_a_rate():
    r = roster()
    assert r.bound_s(0, tokens=8000) == 120.0
    assert r.bound_s(0, tokens=8000, starting=True) == 120.0 + 1200.0


def test_a_call_may_take_slack_times_its_tokens_at_the_engines_rate_on_top_of_the_floor():
    r = roster()
    r.answered(0, tokens=4000, seconds=2.0)  # 2,000 tokens/s
    assert r.bound_s(0, tokens=8000) == pytest.approx(120.0 + CALL_SLACK * 8000 / 2000)
    assert r.bound_s(1, tokens=8000) == 120.0  # another engine's rate is its own


def test_the_rate_follows_recent_calls():
    r = roster()
    r.answered(0, tokens=1000, seconds=1.0)
    r.answered(0, tokens=3000, seconds=1.0)
    assert r.rate[0] == pytest.approx((1 - RATE_WEIGHT) * 1000 + RATE_WEIGHT * 3000)
    r.answered(0, tokens=0, seconds=0.0)  # an empty call says nothing of the rate
    assert r.rate[0] == pytest.approx((1 - RATE_WEIGHT) * 1000 + RATE_WEIGHT * 3000)


def test_a_restarting_engine_is_asked_about_before_its_next_call():
    r = roster()
    r.answered(2, tokens=10, seconds=0.1)
    r.restarting(2)
    assert 2 not in r.answering and 2 in r.order(now=0.0)
