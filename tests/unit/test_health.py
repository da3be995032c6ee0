"""The health score: bands, decay without events, missing data, bounds and monotonicity."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.contract import (
    Event,
    PaymentFailed,
    PurchaseCompleted,
    SubscriptionCancelled,
    SurveyAnswered,
    TicketOpened,
    UsageSession,
)
from scoring.health import ScoringParameters, band_for, churn_risk_for, has_changed, score_state
from scoring.state import DAY_MS, apply_event, new_state

T0 = 1_790_000_000_000
PARAMETERS = ScoringParameters()


def ev(event_id: str, at: int, data) -> Event:
    return Event(event_id=event_id, type="x", customer_id="acme", occurred_at_ms=at, data=data)


def active_customer(days: int = 30):
    state = new_state("acme")
    for day in range(days):
        apply_event(state, ev(f"s{day}", T0 + day * DAY_MS, UsageSession("u1", 600)))
    return state


@pytest.mark.parametrize(
    ("score", "band"),
    [(100, "healthy"), (70, "healthy"), (69.99, "at_risk"), (40, "at_risk"), (39.99, "critical"), (0, "critical")],
)
def test_default_bands(score: float, band: str) -> None:
    assert band_for(score, PARAMETERS) == band


def test_no_data_means_no_score() -> None:
    assert score_state(new_state("acme"), T0, PARAMETERS) is None


def test_inactivity_lowers_the_score_as_time_passes_without_events() -> None:
    state = active_customer()
    last = state.last_event_ms
    scores = [score_state(state, last + days * DAY_MS, PARAMETERS).components["usage"].score for days in (0, 3, 10, 30, 60)]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1]
    assert len(set(scores)) == len(scores)


def test_missing_components_are_left_out_and_their_weight_spread_over_the_rest() -> None:
    health = score_state(active_customer(), T0 + 29 * DAY_MS, PARAMETERS)
    assert set(health.components) == {"usage"}
    assert health.components["usage"].weight == 1.0
    assert health.confidence == pytest.approx(0.30)
    assert health.score == health.components["usage"].score


def test_contributions_add_up_to_the_score_and_weights_to_one() -> None:
    state = active_customer()
    at = state.last_event_ms
    apply_event(state, ev("p", at, PurchaseCompleted("o", 50.0, "EUR")))
    apply_event(state, ev("t", at, TicketOpened("t1", "urgent")))
    apply_event(state, ev("n", at, SurveyAnswered("nps", 6)))
    apply_event(state, ev("f", at, PaymentFailed("i1", 10.0)))
    health = score_state(state, at, PARAMETERS)
    assert set(health.components) == {"usage", "purchases", "support", "sentiment", "payments"}
    assert health.confidence == 1.0
    assert sum(c.weight for c in health.components.values()) == pytest.approx(1.0, abs=1e-3)
    assert sum(c.contribution for c in health.components.values()) == pytest.approx(health.score, abs=0.05)


def test_a_cancelled_customer_is_never_healthy() -> None:
    state = active_customer()
    apply_event(state, ev("c", state.last_event_ms, SubscriptionCancelled("price")))
    health = score_state(state, state.last_event_ms, PARAMETERS)
    assert health.components["payments"].score == 0
    assert health.band != "healthy"


def test_churn_risk_falls_as_the_score_rises() -> None:
    risks = [churn_risk_for(score) for score in range(0, 101, 5)]
    assert risks == sorted(risks, reverse=True)
    assert 0 < risks[-1] < 0.05 and 0.95 < risks[0] < 1


def test_a_score_is_republished_only_when_score_or_band_moves() -> None:
    health = score_state(active_customer(), T0 + 29 * DAY_MS, PARAMETERS)
    assert has_changed(None, None, health)
    assert not has_changed(health.score, health.band, health)
    assert has_changed(health.score + 0.01, health.band, health)


@settings(max_examples=200, deadline=None)
@given(
    sessions=st.lists(st.integers(min_value=0, max_value=120), max_size=40),
    failures=st.integers(min_value=0, max_value=6),
    open_tickets=st.integers(min_value=0, max_value=10),
    nps=st.lists(st.integers(min_value=0, max_value=10), max_size=5),
    later_days=st.integers(min_value=0, max_value=400),
)
def test_score_stays_within_0_and_100(sessions, failures, open_tickets, nps, later_days) -> None:
    state = new_state("acme")
    for index, day in enumerate(sessions):
        apply_event(state, ev(f"s{index}", T0 + day * DAY_MS, UsageSession("u", 60)))
    for index in range(failures):
        apply_event(state, ev(f"f{index}", T0, PaymentFailed("i", 5.0)))
    for index in range(open_tickets):
        apply_event(state, ev(f"t{index}", T0, TicketOpened(f"t{index}", "urgent")))
    for index, answer in enumerate(nps):
        apply_event(state, ev(f"n{index}", T0, SurveyAnswered("nps", answer)))
    health = score_state(state, max(state.last_event_ms, T0) + later_days * DAY_MS, PARAMETERS)
    if health is not None:
        assert 0 <= health.score <= 100
        assert 0 <= health.churn_risk <= 1
        for component in health.components.values():
            assert 0 <= component.score <= 100


@settings(max_examples=100, deadline=None)
@given(failures=st.integers(min_value=0, max_value=5))
def test_one_more_failed_payment_never_raises_the_score(failures: int) -> None:
    def score_with(count: int) -> float:
        state = active_customer()
        for index in range(count):
            apply_event(state, ev(f"f{index}", state.last_event_ms, PaymentFailed("i", 5.0)))
        return score_state(state, state.last_event_ms, PARAMETERS).score

    assert score_with(failures + 1) <= score_with(failures)
