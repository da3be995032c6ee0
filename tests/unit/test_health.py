"""The health score: bands, decay without events, missing data, bounds and monotonicity."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.contract import (
    CsmPulse,
    CsmTouchpoint,
    SurveySent,
    Event,
    PaymentFailed,
    PurchaseCompleted,
    SubscriptionCancelled,
    SubscriptionUpdated,
    SurveyAnswered,
    TicketOpened,
    UsageSession,
)
from dataclasses import replace

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
    [(100, "healthy"), (50, "healthy"), (49.99, "at_risk"), (35, "at_risk"), (34.99, "critical"), (0, "critical")],
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
    health = score_state(active_customer(), T0 + 29 * DAY_MS, replace(PARAMETERS, healthy_min_active_days=0))
    assert set(health.components) == {"usage"}
    assert health.components["usage"].weight == 1.0
    assert health.confidence == pytest.approx(0.30)
    assert health.score == health.components["usage"].score


def test_a_single_short_session_is_not_enough_to_be_healthy() -> None:
    # The customer: one 5-second session scored 100, healthy, confidence 0.30.
    state = new_state("acme")
    apply_event(state, ev("s", T0, UsageSession("u1", 5)))
    health = score_state(state, T0, PARAMETERS)
    assert health.components["usage"].score == 100.0
    assert health.band == "at_risk" and health.score == PARAMETERS.healthy_min - 0.01
    assert health.confidence == pytest.approx(0.30 / 3)  # a third of the days of evidence healthy needs
    # More components the same day: still one day of evidence.
    apply_event(state, ev("u", T0, SubscriptionUpdated(49.0)))
    assert score_state(state, T0, PARAMETERS).band == "at_risk"
    # Events on three distinct days: enough.
    for day in (1, 2):
        apply_event(state, ev(f"s{day}", T0 + day * DAY_MS, UsageSession("u1", 5)))
    health = score_state(state, T0 + 2 * DAY_MS, PARAMETERS)
    assert health.band == "healthy" and health.confidence == pytest.approx(0.5)


@pytest.mark.parametrize(("answer", "points"), [(10, 100.0), (9, 100.0), (8, 50.0), (7, 50.0), (6.99, 0.0), (6, 0.0), (0, 0.0)])
def test_an_nps_answer_counts_by_its_category(answer: float, points: float) -> None:
    from scoring.health import answer_points, is_detractor
    from scoring.state import SurveyResponse

    response = SurveyResponse("nps", answer, 0.0, 10.0, T0)
    assert answer_points(response) == points
    assert is_detractor(response) == (answer < 7)
    # The same answer sent on another scale (0-100) is mapped onto 0-10 first.
    assert answer_points(SurveyResponse("nps", answer * 10, 0.0, 100.0, T0)) == points


@pytest.mark.parametrize(("answer", "detractor"), [(1, True), (2, True), (3, False), (5, False)])
def test_a_csat_of_1_or_2_is_a_detractors_and_counts_linearly(answer: int, detractor: bool) -> None:
    from scoring.health import answer_points, is_detractor
    from scoring.state import SurveyResponse

    response = SurveyResponse("csat", answer, 1.0, 5.0, T0)
    assert is_detractor(response) is detractor
    assert answer_points(response) == 100.0 * (answer - 1) / 4


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
        apply_event(state, ev("m", state.last_event_ms, SubscriptionUpdated(49.0)))  # a subscriber: payments has data
        for index in range(count):
            apply_event(state, ev(f"f{index}", state.last_event_ms, PaymentFailed("i", 5.0)))
        return score_state(state, state.last_event_ms, PARAMETERS).score

    assert score_with(failures + 1) <= score_with(failures)


# --- Explanation, segments, purchase activity, sentiment, monotonicity ------------------


from scoring.bgnbd import BgNbdParameters  # noqa: E402
from scoring.contract import InvoiceIssued, TicketResolved  # noqa: E402
from scoring.health import component_scores, explain  # noqa: E402
from scoring.pipeline import rescore, step  # noqa: E402


def test_each_published_score_says_how_much_each_component_moved_it() -> None:
    state = active_customer()
    at = state.last_event_ms
    PARAMETERS = replace(globals()["PARAMETERS"], healthy_min_active_days=0)  # no cap on thin evidence here
    initial = rescore(state, at, PARAMETERS)
    assert initial.previous_score is None and initial.changes == {"usage": initial.score}
    first = step(state, ev("f", at, PaymentFailed("i1", 10.0)), PARAMETERS, 64).publish
    assert first.previous_score == initial.score
    assert first.changes["payments"] == pytest.approx(first.components["payments"].contribution, abs=0.01)
    assert first.changes["usage"] < 0  # usage now carries less of the weight
    second = step(state, ev("f2", at, PaymentFailed("i1", 10.0)), PARAMETERS, 64).publish
    assert second.previous_score == first.score
    assert list(second.changes)[0] == "payments" and second.changes["payments"] < 0
    # Changes in contributions add up to the change of the score (rounding aside).
    for later, earlier in ((first, initial), (second, first)):
        assert sum(later.changes.values()) == pytest.approx(later.score - earlier.score, abs=0.05)


def test_explain_orders_by_size_and_counts_appearing_and_vanishing_components() -> None:
    health = score_state(active_customer(), T0 + 29 * DAY_MS, PARAMETERS)
    changes = explain({"usage": health.components["usage"].contribution + 9.0, "payments": 18.0}, health)
    assert changes == {"payments": -18.0, "usage": -9.0}


def test_a_score_that_did_not_move_is_not_published_again() -> None:
    state = active_customer()
    assert rescore(state, state.last_event_ms, PARAMETERS) is not None
    assert rescore(state, state.last_event_ms, PARAMETERS) is None


def test_customers_on_a_plan_are_weighted_by_their_segment() -> None:
    parameters = replace(PARAMETERS, segment_weights={"enterprise": {"usage": 0.0, "payments": 1.0}})
    state = active_customer()
    at = state.last_event_ms
    apply_event(state, ev("m", at, SubscriptionUpdated(500.0, plan="enterprise")))
    apply_event(state, ev("f", at, PaymentFailed("i", 1.0)))
    enterprise = score_state(state, at, parameters)
    assert set(enterprise.components) == {"payments"}
    assert enterprise.score == enterprise.components["payments"].score
    state.plan = "starter"
    assert set(score_state(state, at, parameters).components) == {"usage", "payments"}


def test_expected_purchases_feed_the_purchase_component_of_non_contract_buyers() -> None:
    with_model = replace(PARAMETERS, bgnbd=BgNbdParameters(0.243, 4.414, 0.793, 2.426), bgnbd_time_unit_days=7.0)
    frequent, lapsed = new_state("a"), new_state("b")
    for week in range(20):
        apply_event(frequent, ev(f"p{week}", T0 + week * 7 * DAY_MS, PurchaseCompleted("o", 10.0, "EUR")))
    for week in range(3):
        apply_event(lapsed, ev(f"p{week}", T0 + week * 7 * DAY_MS, PurchaseCompleted("o", 10.0, "EUR")))
    at = T0 + 20 * 7 * DAY_MS
    assert component_scores(frequent, at, with_model)["purchases"] > component_scores(lapsed, at, with_model)["purchases"]
    # A subscriber is not a non-contract buyer: no BG/NBD term.
    apply_event(lapsed, ev("m", T0, SubscriptionUpdated(50.0)))
    assert component_scores(lapsed, at, with_model)["purchases"] == component_scores(lapsed, at, PARAMETERS)["purchases"]


def test_a_customer_who_stops_answering_drifts_back_to_neutral_sentiment() -> None:
    state = new_state("acme")
    apply_event(state, ev("n", T0, SurveyAnswered("nps", 10)))
    scores = [component_scores(state, T0 + days * DAY_MS, PARAMETERS)["sentiment"] for days in (0, 90, 365, 1000)]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == 90.0  # one perfect answer against a prior of 50 with a quarter of its weight
    assert 50 < scores[-1] < 55


@pytest.mark.parametrize(("survey", "score", "question", "sentiment"), [
    ("cli", 1, None, 90.0), ("cli", 6, None, 10.0),  # the loyalty index's 1 is its best answer
    ("csi", 1, "recommend", 90.0), ("csi", 0, "buy_again", 10.0),
])
def test_loyalty_and_secure_answers_move_sentiment_their_way(survey: str, score: float, question: str | None, sentiment: float) -> None:
    state = new_state("acme")
    apply_event(state, ev("a", T0, SurveyAnswered(survey, score, question=question)))
    assert component_scores(state, T0, PARAMETERS)["sentiment"] == sentiment


def test_the_relationship_follows_the_last_good_contact_and_a_valid_pulse() -> None:
    state = new_state("acme")
    apply_event(state, ev("s", T0, UsageSession("u", 60)))
    assert "relationship" not in score_state(state, T0, PARAMETERS).components  # no CSM: left out
    confidence_without = score_state(state, T0, replace(PARAMETERS, healthy_min_active_days=0)).confidence
    apply_event(state, ev("c", T0, CsmTouchpoint("call", "positive")))
    relationship = [component_scores(state, T0 + days * DAY_MS, PARAMETERS)["relationship"] for days in (0, 30, 60)]
    assert relationship == [100.0, 50.0, 25.0]  # halving every relationship_half_life_days
    apply_event(state, ev("n", T0 + DAY_MS, CsmTouchpoint("meeting", "negative")))
    assert component_scores(state, T0 + DAY_MS, PARAMETERS)["relationship"] == 50.0  # capped after a bad meeting
    apply_event(state, ev("p", T0 + 2 * DAY_MS, CsmPulse(5, ("expanding",), T0 + 10 * DAY_MS)))
    at = T0 + 2 * DAY_MS
    assert component_scores(state, at, PARAMETERS)["relationship"] == 0.5 * 50.0 + 0.5 * 100.0
    later = T0 + 11 * DAY_MS
    health = score_state(state, later, PARAMETERS)
    assert health.needs_fresh_pulse and not score_state(state, at, PARAMETERS).needs_fresh_pulse
    assert health.components["relationship"].score == 50.0  # the expired pulse no longer counts: the capped contact alone
    assert confidence_without == pytest.approx(0.30)  # a customer no CSM touched: usage's 0.30 of the weights, as before the component
    assert state.last_event_ms == T0 + DAY_MS  # the pulse is the company's act: not the customer's activity


def test_a_pulse_alone_arriving_late_or_early_keeps_the_latest() -> None:
    one, two = new_state("a"), new_state("b")
    older, newer = ev("p1", T0, CsmPulse(2)), ev("p2", T0 + DAY_MS, CsmPulse(4))
    for state, order in ((one, (older, newer)), (two, (newer, older))):
        for event in order:
            apply_event(state, event)
    assert (one.pulse_rating, one.pulse_expires_ms) == (two.pulse_rating, two.pulse_expires_ms) == (4, T0 + 91 * DAY_MS)


def test_surveys_left_unanswered_lower_sentiment_and_an_answer_in_time_does_not() -> None:
    ignored, answered = new_state("ignored"), new_state("answered")
    for state in (ignored, answered):
        apply_event(state, ev(f"{state.customer_id}-s", T0, UsageSession("u", 60)))
        apply_event(state, ev(f"{state.customer_id}-i", T0, SurveySent("nps")))
    apply_event(answered, ev("a", T0 + 5 * DAY_MS, SurveyAnswered("nps", 9)))
    before_deadline = T0 + 13 * DAY_MS
    assert component_scores(ignored, before_deadline, PARAMETERS)["sentiment"] is None  # not yet missed
    after = T0 + 14 * DAY_MS
    assert component_scores(ignored, after, PARAMETERS)["sentiment"] == pytest.approx((12.5 + 25.0) / 1.25)
    assert component_scores(answered, after, PARAMETERS)["sentiment"] > 80  # its answer counts, no penalty
    assert ignored.last_event_ms == T0  # sending a survey is not the customer's activity


def test_slow_resolution_and_reopens_lower_support() -> None:
    def support_with(resolution_hours: float, reopened: bool) -> float:
        state = new_state("acme")
        apply_event(state, ev("o", T0, TicketOpened("t", "normal")))
        apply_event(state, ev("r", T0 + int(resolution_hours * 3_600_000), TicketResolved("t")))
        if reopened:
            apply_event(state, ev("x", T0 + int(resolution_hours * 3_600_000) + 1, TicketOpened("t2", "low")))
            state.tickets_reopened += 1
        return component_scores(state, T0 + 10 * DAY_MS, PARAMETERS)["support"]

    assert support_with(2, False) > support_with(100, False) > support_with(100, True)


def test_overdue_invoices_weigh_more_the_longer_they_are_overdue() -> None:
    state = active_customer()
    at = state.last_event_ms
    apply_event(state, ev("i", at, InvoiceIssued("inv", 99.0, at + DAY_MS)))
    scores = [component_scores(state, at + days * DAY_MS, PARAMETERS)["payments"] for days in (0, 2, 10, 40)]
    assert scores == sorted(scores, reverse=True) and scores[0] == 100 and scores[-1] == 60


DRIVERS = {
    # driver name → (event that worsens it, component it must not raise)
    "failed payment": (lambda i, at: PaymentFailed("i", 5.0), "payments"),
    "open urgent ticket": (lambda i, at: TicketOpened(f"t{i}", "urgent"), "support"),
    "detractor answer": (lambda i, at: SurveyAnswered("nps", 0), "sentiment"),
    "MRR cut": (lambda i, at: SubscriptionUpdated(max(0.0, 100.0 - 10 * (i + 1))), "payments"),
}


@settings(max_examples=60, deadline=None)
@given(
    driver=st.sampled_from(sorted(DRIVERS)),
    before=st.integers(min_value=0, max_value=4),
    sessions=st.integers(min_value=1, max_value=30),
)
def test_worsening_a_driver_never_raises_its_component_or_the_score(driver: str, before: int, sessions: int) -> None:
    make, component = DRIVERS[driver]
    state = new_state("acme")
    for day in range(sessions):
        apply_event(state, ev(f"s{day}", T0 + day * DAY_MS, UsageSession("u", 60)))
    at = state.last_event_ms
    apply_event(state, ev("m0", at - 1, SubscriptionUpdated(100.0)))
    apply_event(state, ev("n0", at - 1, SurveyAnswered("nps", 9)))
    apply_event(state, ev("t0", at - 1, TicketOpened("t-base", "low")))
    for index in range(before):
        apply_event(state, ev(f"d{index}", at, make(index, at)))
    baseline = score_state(state, at, PARAMETERS)
    apply_event(state, ev("worse", at, make(before, at)))
    worse = score_state(state, at, PARAMETERS)
    assert worse.components[component].score <= baseline.components[component].score
    assert worse.score <= baseline.score
    assert worse.churn_risk >= baseline.churn_risk


@settings(max_examples=60, deadline=None)
@given(
    usage=st.floats(min_value=0, max_value=100),
    other=st.floats(min_value=0, max_value=100),
    bump=st.floats(min_value=0, max_value=50),
)
def test_churn_risk_is_monotone_in_score_and_weakest_component(usage: float, other: float, bump: float) -> None:
    score = (usage + other) / 2
    weakest = min(usage, other)
    assert churn_risk_for(min(100, score + bump), weakest) <= churn_risk_for(score, weakest)
    assert churn_risk_for(score, min(100, weakest + bump)) <= churn_risk_for(score, weakest)


def test_model_version_changes_with_any_parameter() -> None:
    versions = {
        PARAMETERS.model_version,
        replace(PARAMETERS, healthy_min=75).model_version,
        replace(PARAMETERS, weights={**PARAMETERS.weights, "usage": 0.5}).model_version,
        replace(PARAMETERS, bgnbd=BgNbdParameters(1, 2, 3, 4)).model_version,
    }
    assert len(versions) == 4
    assert PARAMETERS.model_version == ScoringParameters().model_version
