"""Alert rules on table-driven scenarios: each fires exactly when it should, once per episode."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from scoring.alerts import AlertParameters, alert_id, evaluate, fell_by_time
from scoring.bgnbd import BgNbdParameters
from scoring.contract import (
    Event,
    InvoiceIssued,
    PaymentFailed,
    PaymentSucceeded,
    PurchaseCompleted,
    SubscriptionCancelled,
    SubscriptionUpdated,
    UsageSession,
)
from scoring.health import HealthScore, ScoringParameters
from scoring.pipeline import step, sweep
from scoring.state import DAY_MS, new_state

T0 = 1_790_000_000_000 // DAY_MS * DAY_MS
#: The scenarios below are written for band edges at 70 and 40.
SCORING = ScoringParameters(healthy_min=70.0, at_risk_min=40.0)
ONLY = {rule: False for rule in ("band_downgrade", "sharp_drop", "purchase_activity", "payment_trouble", "cancellation", "silence", "detractor")}


def rules(**enabled) -> AlertParameters:
    """Only the rules named; the per-customer budget the scenarios were written for (2 in 30 days)."""
    return AlertParameters(**{**ONLY, "max_alerts_per_customer_30d": 2, **enabled})


def ev(event_id: str, at: int, data) -> Event:
    return Event(event_id=event_id, type="x", customer_id="acme", occurred_at_ms=at, data=data)


def fake_score(score: float, at: int) -> HealthScore:
    from scoring.health import band_for

    return HealthScore(score=score, band=band_for(score, SCORING), churn_risk=0.1, components={}, as_of_ms=at, confidence=1.0)


@pytest.mark.parametrize(
    ("scores", "fired"),
    [
        ([80, 75, 71], []),  # stays healthy
        ([80, 65], ["at_risk"]),
        ([80, 65, 30], ["at_risk", "critical"]),
        ([80, 30], ["critical"]),  # straight down two bands: one alert, for the band reached
        ([30, 20], []),  # first score sets the baseline: no transition, no alert
        ([80, 69, 71, 69, 71, 69], ["at_risk"]),  # wobbling on the edge: hysteresis, no flapping
        ([80, 69, 76, 69], ["at_risk", "at_risk"]),  # cleared 70 + 5: back to healthy, a new episode
        ([80, 35, 42, 38, 46, 39], ["critical", "critical"]),  # 46 clears 40 + 5: up to at_risk, then down again
    ],
)
def test_band_downgrade_with_hysteresis(scores: list[float], fired: list[str]) -> None:
    state = new_state("acme")
    parameters = rules(band_downgrade=True, cooldown_hours=0)
    raised = []
    for index, score in enumerate(scores):
        decision = evaluate(state, fake_score(score, T0 + index * DAY_MS), T0 + index * DAY_MS, SCORING, parameters)
        raised += [alert.band for alert in decision.raised]
    assert raised == fired


@pytest.mark.parametrize(
    ("scores", "fired"),
    [
        ([(0, 90), (3, 74)], 1),  # 16 points in 3 days
        ([(0, 90), (3, 76)], 0),  # 14 points: not enough
        ([(0, 90), (9, 70)], 0),  # 20 points but over 9 days
        ([(0, 90), (1, 70), (2, 65), (3, 60)], 1),  # one episode while it stays down
        ([(0, 90), (1, 70), (2, 85), (3, 60)], 2),  # recovered, then a second drop
    ],
)
def test_sharp_drop_within_the_window(scores: list[tuple[int, float]], fired: int) -> None:
    state = new_state("acme")
    parameters = rules(sharp_drop=True, cooldown_hours=0)
    count = 0
    for day, score in scores:
        count += len(evaluate(state, fake_score(score, T0 + day * DAY_MS), T0 + day * DAY_MS, SCORING, parameters).raised)
    assert count == fired


def test_cancellation_alerts_at_once_and_critical_only_once() -> None:
    state = new_state("acme")
    parameters = rules(cancellation=True)
    first = step(state, ev("c", T0, SubscriptionCancelled("price")), SCORING, 32, rules=parameters)
    assert [(a.rule, a.severity) for a in first.alerts.raised] == [("cancellation", "critical")]
    assert first.alerts.raised[0].alert_id == alert_id("acme", "cancellation", str(T0))
    later = step(state, ev("u", T0 + 1000, UsageSession("u", 5)), SCORING, 32, rules=parameters)
    assert later.alerts.raised == []


def test_payment_trouble_after_two_failures_in_30_days() -> None:
    state = new_state("acme")
    parameters = rules(payment_trouble=True)
    assert step(state, ev("f1", T0, PaymentFailed("i", 9.0)), SCORING, 32, rules=parameters).alerts.raised == []
    second = step(state, ev("f2", T0 + DAY_MS, PaymentFailed("i", 9.0)), SCORING, 32, rules=parameters).alerts.raised
    assert [a.rule for a in second] == ["payment_trouble"] and "2 failed payments" in second[0].detail
    assert step(state, ev("f3", T0 + 2 * DAY_MS, PaymentFailed("i", 9.0)), SCORING, 32, rules=parameters).alerts.raised == []


def test_payment_trouble_when_an_invoice_is_overdue_too_long() -> None:
    state = new_state("acme")
    parameters = rules(payment_trouble=True, payment_overdue_days=7)
    step(state, ev("i", T0, InvoiceIssued("inv", 99.0, T0 + DAY_MS)), SCORING, 32, rules=parameters)
    assert sweep(state, T0 + 8 * DAY_MS, SCORING, parameters).alerts.raised == []  # 7 days overdue: not more than 7
    overdue = sweep(state, T0 + 9 * DAY_MS, SCORING, parameters).alerts.raised
    assert [a.rule for a in overdue] == ["payment_trouble"] and "8 days overdue" in overdue[0].detail
    step(state, ev("p", T0 + 10 * DAY_MS, PaymentSucceeded("inv", 99.0)), SCORING, 32, rules=parameters)
    assert "payment_trouble" not in state.alert_episodes


def subscriber_active_every(days_between: int, active_days: int):
    state = new_state("acme")
    step(state, ev("m", T0, SubscriptionUpdated(99.0)), SCORING, 32)
    for index in range(active_days):
        step(state, ev(f"s{index}", T0 + index * days_between * DAY_MS, UsageSession("u", 60)), SCORING, 32)
    return state


@pytest.mark.parametrize(
    ("days_between", "silent_days", "fires"),
    [
        (1, 2.5, False),  # daily user, 2.5 days silent: under the 3-day minimum
        (1, 3.5, True),
        (5, 10, False),  # usually every 5 days: 15 days is the limit
        (5, 16, True),
    ],
)
def test_silence_relative_to_the_customers_own_usual_gap(days_between: int, silent_days: float, fires: bool) -> None:
    state = subscriber_active_every(days_between, 6)
    last = state.last_event_ms
    result = sweep(state, last + int(silent_days * DAY_MS), SCORING, rules(silence=True, silence_gap_multiplier=3.0))
    assert [a.rule for a in result.alerts.raised] == (["silence"] if fires else [])


def test_silence_needs_a_live_subscription() -> None:
    state = subscriber_active_every(1, 6)
    step(state, ev("c", state.last_event_ms, SubscriptionCancelled()), SCORING, 32)
    assert sweep(state, state.last_event_ms + 10 * DAY_MS, SCORING, rules(silence=True)).alerts.raised == []


def test_purchase_activity_for_buyers_without_a_contract() -> None:
    scoring = replace(SCORING, bgnbd=BgNbdParameters(0.243, 4.414, 0.793, 2.426), bgnbd_time_unit_days=7.0)
    parameters = rules(purchase_activity=True, purchase_activity_min_expected=0.2)
    state = new_state("acme")
    for week in range(4):
        step(state, ev(f"p{week}", T0 + week * 7 * DAY_MS, PurchaseCompleted("o", 10.0, "EUR")), scoring, 32, rules=parameters)
    assert state.alert_episodes.get("purchase_activity") is None
    quiet = sweep(state, state.last_event_ms + 200 * DAY_MS, scoring, parameters).alerts.raised
    assert [a.rule for a in quiet] == ["purchase_activity"] and "expected purchases" in quiet[0].detail


def test_a_second_episode_inside_the_cooldown_is_suppressed_and_reported() -> None:
    state = new_state("acme")
    parameters = rules(band_downgrade=True, cooldown_hours=24)
    outcomes = []
    for hours, score in [(0, 80), (1, 65), (2, 80), (3, 65), (30, 80), (31, 65)]:
        decision = evaluate(state, fake_score(score, T0 + hours * 3_600_000), T0 + hours * 3_600_000, SCORING, parameters)
        outcomes.append((len(decision.raised), len(decision.suppressed)))
    assert outcomes == [(0, 0), (1, 0), (0, 0), (0, 1), (0, 0), (1, 0)]


def test_every_rule_can_be_switched_off() -> None:
    state = new_state("acme")
    step(state, ev("c", T0, SubscriptionCancelled()), SCORING, 32, rules=rules())
    assert sweep(state, T0 + 30 * DAY_MS, SCORING, rules()).alerts.raised == []


def test_reprocessing_the_same_events_yields_the_same_alert_ids() -> None:
    def run() -> list[str]:
        state = new_state("acme")
        ids = []
        for index, data in enumerate([UsageSession("u", 60), PaymentFailed("i", 5.0), PaymentFailed("i", 5.0), SubscriptionCancelled()]):
            result = step(state, ev(f"e{index}", T0 + index * 3_600_000, data), SCORING, 32, rules=AlertParameters())
            ids += [alert.alert_id for alert in result.alerts.raised]
        return ids

    first = run()
    assert first and first == run()


def test_an_alert_says_why() -> None:
    state = subscriber_active_every(1, 10)
    parameters = AlertParameters()
    sweep(state, state.last_event_ms, SCORING, parameters)
    result = step(state, ev("c", state.last_event_ms + 1, SubscriptionCancelled()), SCORING, 32, rules=parameters)
    alert = next(a for a in result.alerts.raised if a.rule == "cancellation")
    assert alert.reasons and alert.reasons[0].component == "payments" and alert.reasons[0].change < 0
    assert alert.previous_score is not None and alert.score < alert.previous_score


def test_purchase_activity_uses_the_expectation_computed_for_the_score() -> None:
    """BG/NBD is computed once per event: the score carries it and the rule reads it from there."""
    from msgspec.structs import replace as replace_struct

    from scoring.health import expected_purchases_next, score_state
    from scoring.state import decode_state, encode_state

    scoring = replace(SCORING, bgnbd=BgNbdParameters(0.243, 4.414, 0.793, 2.426), bgnbd_time_unit_days=7.0)
    parameters = rules(purchase_activity=True, purchase_activity_min_expected=0.2)
    state = new_state("acme")
    for week in range(4):
        step(state, ev(f"p{week}", T0 + week * 7 * DAY_MS, PurchaseCompleted("o", 10.0, "EUR")), scoring, 32)
    at = state.last_event_ms
    health = score_state(state, at, scoring)
    assert health is not None and health.expected_purchases == expected_purchases_next(state, at, scoring) > 0.2
    assert evaluate(decode_state(encode_state(state)), health, at, scoring, parameters).raised == []
    told_quiet = replace_struct(health, expected_purchases=0.01)
    assert [a.rule for a in evaluate(decode_state(encode_state(state)), told_quiet, at, scoring, parameters).raised] == ["purchase_activity"]


def score_with_changes(score: float, at: int, changes: dict[str, float]) -> HealthScore:
    from msgspec.structs import replace as replace_struct

    return replace_struct(fake_score(score, at), changes=changes)


@pytest.mark.parametrize(
    ("changes", "by_time"),
    [
        ({"usage": -10.0, "support": -3.0}, True),  # mostly decay: time
        ({"support": -10.0, "usage": -3.0}, False),  # an urgent ticket: events
        ({"usage": -4.0, "sentiment": -4.0, "payments": -7.0}, True),  # decay 8 against 7
        ({"payments": -20.0, "usage": 5.0}, False),
        ({}, False),
    ],
)
def test_a_fall_is_put_down_to_time_when_decay_outweighs_events(changes: dict[str, float], by_time: bool) -> None:
    assert fell_by_time(score_with_changes(50, T0, changes)) is by_time


def test_time_alone_moves_a_customer_through_a_band_edge_once_and_says_so() -> None:
    """A daily user goes quiet: its score decays below 70 on the sixth day, but the band alert
    waits until the silence is unusual for it (here 10 x its usual gap of a day), names the
    silence, comes once however long the silence lasts, and no sweep raises a sharp drop."""
    state = subscriber_active_every(1, 20)
    parameters = rules(band_downgrade=True, sharp_drop=True, cooldown_hours=0, max_alerts_per_customer_30d=0, time_band_gap_multiplier=10.0)
    last = state.last_event_ms
    sweep(state, last, SCORING, parameters)  # scored at its last event: healthy
    assert state.alert_band == "healthy"
    seen = []
    for hours in range(6, 24 * 40, 6):
        result = sweep(state, last + hours * 3_600_000, SCORING, parameters, min_change=0.0)
        seen += [(hours, alert.rule, alert.band, alert.detail) for alert in result.alerts.raised]
        if hours == 7 * 24:
            assert result.publish is not None and result.publish.band == "at_risk" and state.alert_band == "healthy"
    assert [(hours, rule, band) for hours, rule, band, _ in seen] == [(10 * 24 + 6, "band_downgrade", "at_risk")]
    assert seen[0][3] == "band fell from healthy to at_risk: no activity for 10 days, usually every 1.0"


def test_a_band_fall_that_events_caused_alerts_at_once() -> None:
    state = new_state("acme")
    parameters = rules(band_downgrade=True, cooldown_hours=0)
    evaluate(state, score_with_changes(80, T0, {}), T0, SCORING, parameters)
    fell = evaluate(state, score_with_changes(60, T0 + 1000, {"support": -15.0, "usage": -5.0}), T0 + 1000, SCORING, parameters)
    assert [(a.rule, a.detail) for a in fell.raised] == [("band_downgrade", "band fell from healthy to at_risk")]


def test_a_sharp_drop_needs_events_to_make_the_score_fall() -> None:
    parameters = rules(sharp_drop=True, cooldown_hours=0)
    by_decay, by_events = new_state("acme"), new_state("acme")
    for state in (by_decay, by_events):
        evaluate(state, score_with_changes(90, T0, {}), T0, SCORING, parameters)
    assert evaluate(by_decay, score_with_changes(70, T0 + DAY_MS, {"usage": -20.0}), T0 + DAY_MS, SCORING, parameters).raised == []
    raised = evaluate(by_events, score_with_changes(70, T0 + DAY_MS, {"payments": -20.0}), T0 + DAY_MS, SCORING, parameters).raised
    assert [a.rule for a in raised] == ["sharp_drop"]


def test_a_wobbling_score_raises_at_most_one_alert_per_cooldown_and_the_budget_caps_the_month() -> None:
    """Events push the score across the edge and back every hour for 30 days (clearing the
    hysteresis each time): one alert per 24-hour cooldown at most, and two in 30 days in all."""
    wobble = [80.0 if hour % 2 == 0 else 60.0 for hour in range(24 * 30)]
    for budget, most in ((0, 30), (2, 2)):
        state = new_state("acme")
        parameters = rules(band_downgrade=True, cooldown_hours=24, max_alerts_per_customer_30d=budget)
        times = []
        for hour, score in enumerate(wobble):
            at = T0 + hour * 3_600_000
            times += [at for _ in evaluate(state, score_with_changes(score, at, {"support": score - 80.0}), at, SCORING, parameters).raised]
        assert 0 < len(times) <= most
        assert all(later - earlier >= 24 * 3_600_000 for earlier, later in zip(times, times[1:]))


def test_the_budget_keeps_the_most_severe_of_simultaneous_alerts_and_counts_the_rest() -> None:
    state = new_state("acme")
    parameters = rules(band_downgrade=True, cancellation=True, cooldown_hours=0, max_alerts_per_customer_30d=1)
    evaluate(state, score_with_changes(80, T0, {}), T0, SCORING, parameters)
    state.cancelled_ms = T0 + 1000
    both = evaluate(state, score_with_changes(60, T0 + 1000, {"payments": -20.0}), T0 + 1000, SCORING, parameters)
    assert [(a.rule, a.severity) for a in both.raised] == [("cancellation", "critical")]
    assert both.suppressed == [("band_downgrade", "warning")]
    # 30 days later the budget has room again.
    state.cancelled_ms = 0
    evaluate(state, score_with_changes(80, T0 + 2000, {}), T0 + 2000, SCORING, parameters)
    later = T0 + 31 * DAY_MS
    assert [a.rule for a in evaluate(state, score_with_changes(60, later, {"support": -20.0}), later, SCORING, parameters).raised] == ["band_downgrade"]


def test_digest_rules_are_summarised_per_customer_per_day_outside_the_budget() -> None:
    state = new_state("acme")
    parameters = rules(band_downgrade=True, sharp_drop=True, cancellation=True, cooldown_hours=0, max_alerts_per_customer_30d=1, digest_rules=("sharp_drop", "band_downgrade"))
    day = T0 + 3_600_000  # 01:00 UTC
    evaluate(state, score_with_changes(90, day, {}), day, SCORING, parameters)
    first = evaluate(state, score_with_changes(60, day + 1000, {"support": -30.0}), day + 1000, SCORING, parameters)
    assert first.raised == [] and len(state.alert_digest) == 2  # a band fall and a sharp drop: waiting for the day's summary
    state.cancelled_ms = day + 2000
    cancelled = evaluate(state, score_with_changes(30, day + 2000, {"payments": -30.0}), day + 2000, SCORING, parameters)
    assert [a.rule for a in cancelled.raised] == ["cancellation"]  # the budget's one alert: the digest did not use it
    state.cancelled_ms = 0
    next_day = T0 + DAY_MS + 60_000
    summary = evaluate(state, score_with_changes(31, next_day, {}), next_day, SCORING, parameters).raised
    assert [(a.rule, a.severity) for a in summary] == [("digest", "digest")]
    date = time.strftime("%Y-%m-%d", time.gmtime(T0 // 1000))
    assert summary[0].detail.startswith(f"3 alert(s) on {date}: band_downgrade: band fell from healthy to at_risk; sharp_drop: score fell 30.0 points")
    assert "band_downgrade: band fell from at_risk to critical" in summary[0].detail
    assert summary[0].alert_id == alert_id("acme", "digest", str(T0 // DAY_MS)) and state.alert_digest == []
    assert evaluate(state, score_with_changes(31, next_day + 1000, {}), next_day + 1000, SCORING, parameters).raised == []


# --- Detractors, lapsed buyers, actions ---------------------------------------------------


def test_a_detractor_is_alerted_once_per_answer_with_its_comment() -> None:
    from scoring.contract import SurveyAnswered

    state = new_state("acme")
    answers = [
        ("n1", T0, SurveyAnswered("nps", 6, comment="Support never answers")),
        ("n2", T0 + 2 * DAY_MS, SurveyAnswered("nps", 8)),  # passive: nothing
        ("n3", T0 + 4 * DAY_MS, SurveyAnswered("csat", 1)),
        ("n4", T0 + 6 * DAY_MS, SurveyAnswered("csat", 3)),  # neutral: nothing
        ("n5", T0 + 8 * DAY_MS, SurveyAnswered("nps", 6.5, (0.0, 10.0))),
    ]
    raised = []
    for event_id, at, answer in answers:
        raised += step(state, ev(event_id, at, answer), SCORING, 32, rules=rules(detractor=True, max_alerts_per_customer_30d=0)).alerts.raised
    assert [(alert.rule, alert.detail) for alert in raised] == [
        ("detractor", 'NPS answer 6 on 0-10: "Support never answers"'),
        ("detractor", "CSAT answer 1 on 1-5"),
        ("detractor", "NPS answer 6.5 on 0-10"),
    ]
    assert [alert.alert_id for alert in raised] == [alert_id("acme", "detractor", event_id) for event_id in ("n1", "n3", "n5")]
    # Two answers applied at the same moment (their topic read late): both alerted, no cooldown.
    late = new_state("late")
    step(late, ev("u", T0 + 10 * DAY_MS, UsageSession("u1", 60)), SCORING, 32)
    both = [step(late, ev(f"a{n}", T0 + n * DAY_MS, SurveyAnswered("nps", 2)), SCORING, 32, rules=rules(detractor=True, max_alerts_per_customer_30d=0))
            for n in (1, 2)]
    assert [len(result.alerts.raised) for result in both] == [1, 1]
    # The same answer again (a redelivery) is a duplicate: no second alert.
    assert step(state, ev("n1", T0 + 9 * DAY_MS, answers[0][2]), SCORING, 32, rules=rules(detractor=True)).alerts.raised == []


def test_a_buyer_without_a_subscription_lapses_after_four_usual_gaps() -> None:
    state = new_state("shop")
    for week in range(4):  # a purchase a week
        step(state, ev(f"p{week}", T0 + week * 7 * DAY_MS, PurchaseCompleted(f"o{week}", 20.0, "EUR")), SCORING, 32, rules=rules(purchase_activity=True))
    last = T0 + 21 * DAY_MS
    assert sweep(state, last + 27 * DAY_MS, SCORING, rules(purchase_activity=True)).alerts.raised == []  # 27 days < 4 x 7
    lapsed = sweep(state, last + 29 * DAY_MS, SCORING, rules(purchase_activity=True)).alerts.raised
    assert [(alert.rule, alert.detail) for alert in lapsed] == [("purchase_activity", "no purchase for 29 days; usually every 7.0 days")]
    assert sweep(state, last + 35 * DAY_MS, SCORING, rules(purchase_activity=True)).alerts.raised == []  # one episode
    # A subscriber is watched by silence instead.
    subscribed = new_state("saas")
    step(subscribed, ev("m", T0, SubscriptionUpdated(99.0)), SCORING, 32)
    for week in range(4):
        step(subscribed, ev(f"p{week}", T0 + week * 7 * DAY_MS, PurchaseCompleted(f"o{week}", 20.0, "EUR")), SCORING, 32)
    assert sweep(subscribed, last + 40 * DAY_MS, SCORING, rules(purchase_activity=True)).alerts.raised == []


def test_every_alert_carries_the_most_specific_action_of_the_playbook() -> None:
    from scoring.alerts import DEFAULT_ACTIONS, Action, action_for

    assert action_for(DEFAULT_ACTIONS, "band_downgrade", "critical", "critical").due_hours == 48.0
    assert action_for(DEFAULT_ACTIONS, "band_downgrade", "warning", "at_risk").due_hours == 120.0
    playbook = (Action("silence", "any", "csm", 24.0), Action("silence", "at risk", "csm", 12.0, band="at_risk"),
                Action("silence", "warning at risk", "am", 6.0, severity="warning", band="at_risk"))
    assert action_for(playbook, "silence", "warning", "at_risk").action == "warning at risk"
    assert action_for(playbook, "silence", "warning", "critical").action == "any"
    assert action_for(playbook, "cancellation", "critical", "critical") is None
    state = new_state("acme")
    step(state, ev("m", T0, SubscriptionUpdated(99.0)), SCORING, 32)
    cancelled = step(state, ev("c", T0 + DAY_MS, SubscriptionCancelled("competitor")), SCORING, 32, rules=rules(cancellation=True)).alerts.raised
    assert [(alert.detail, alert.action_owner, alert.action_due_hours) for alert in cancelled] == [("subscription cancelled: competitor", "csm", 72.0)]
    assert cancelled[0].recommended_action.startswith("Hold an exit interview")
