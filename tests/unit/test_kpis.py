"""KPIs: the literature's worked examples, edge cases, and per-customer KPIs from state."""

from __future__ import annotations

import math

import pytest

from scoring import kpis
from scoring.contract import (
    CheckoutAbandoned,
    Event,
    InvoiceIssued,
    PaymentFailed,
    PurchaseCompleted,
    SubscriptionUpdated,
    SurveyAnswered,
    TicketOpened,
    TicketReopened,
    TicketResolved,
    UsageFeature,
    UsageSession,
)
from scoring.state import DAY_MS, apply_event, new_state

T0 = 1_790_000_000_000 // DAY_MS * DAY_MS + 12 * 3_600_000  # noon UTC


@pytest.mark.parametrize(
    ("function", "arguments", "expected"),
    [
        (kpis.retention_rate, (1000, 1050, 100), 95.0),
        (kpis.retention_rate, (0, 10, 10), None),
        (kpis.retention_rate, (10, 10, 0), 100.0),
        (kpis.churn_rate, (50, 1000), 5.0),
        (kpis.churn_rate, (0, 0), None),
        (kpis.customer_lifetime, (5.0,), 20.0),
        (kpis.customer_lifetime, (0.0,), math.inf),
        (kpis.customer_lifetime, (None,), None),
        (kpis.repurchase_rate, (30, 120), 25.0),
        (kpis.repurchase_rate, (0, 0), None),
        (kpis.average_basket, (1500.0, 30), 50.0),
        (kpis.average_basket, (0.0, 0), None),
        (kpis.upsell_rate, (12, 48), 25.0),
        (kpis.upsell_rate, (0, 0), None),
        (kpis.lifetime_value, (50.0, 3.0, 5.0), 750.0),
        (kpis.lifetime_value_from_margin, (120.0, 24.0), 2880.0),
        (kpis.ltv_to_cac, (750.0, 250.0), 3.0),
        (kpis.ltv_to_cac, (750.0, None), None),
        (kpis.growth_rate, (1000.0, 1100.0), 10.0),
        (kpis.growth_rate, (0.0, 100.0), None),
        (kpis.checkout_abandonment_rate, (30, 70), 30.0),
        (kpis.checkout_abandonment_rate, (0, 0), None),
        (kpis.net_change, (1000, 1050), 50),
    ],
)
def test_kpi_formulas(function, arguments, expected) -> None:
    result = function(*arguments)
    if expected is None or expected == math.inf:
        assert result == expected
    else:
        assert result == pytest.approx(expected)


@pytest.mark.parametrize(
    ("function", "arguments", "message"),
    [
        (kpis.retention_rate, (100, 50, 60), "cannot exceed"),
        (kpis.retention_rate, (-1, 50, 0), "non-negative"),
        (kpis.churn_rate, (60, 50), "cannot exceed"),
        (kpis.repurchase_rate, (5, 4), "cannot outnumber"),
        (kpis.ltv_to_cac, (100.0, 0.0), "positive"),
        (kpis.average_basket, (math.nan, 3), "finite"),
    ],
)
def test_invalid_inputs_raise_a_clear_error(function, arguments, message) -> None:
    with pytest.raises(ValueError, match=message):
        function(*arguments)


def test_revenue_counts_only_active_customers() -> None:
    assert kpis.revenue_from_active_customers({"a": 10.0, "b": 5.0, "c": 1.0}, ["a", "c"]) == 11.0


@pytest.mark.parametrize(
    ("answers", "scale", "expected"),
    [
        ([10, 9, 8, 7, 6, 0], (0, 10), 0.0),
        ([10, 10, 9, 3], (0, 10), 50.0),
        ([0, 1, 2, 3, 4, 5, 6], (0, 10), -100.0),  # all detractors
        ([10] * 5, (0, 10), 100.0),
        ([1, 6, 7, 8, 9, 10], (1, 10), 0.0),
        ([7, 7, 6, 5], (1, 7), 25.0),
        ([7, 7, 7, 1], (1, 7), 50.0),
        ([5, 5, 4, 3], (1, 5), 25.0),
        ([], (0, 10), None),
    ],
)
def test_net_promoter_score_on_every_scale_in_use(answers, scale, expected) -> None:
    assert kpis.net_promoter_score(answers, scale) == expected


@pytest.mark.parametrize("scale", [(0, 5), (1, 100), (0.5, 10)])
def test_an_nps_scale_not_in_use_is_a_clear_error(scale) -> None:
    with pytest.raises(ValueError, match="is not supported; use one of 0-10, 1-10, 1-7, 1-5"):
        kpis.net_promoter_score([3], scale)


def test_nps_answer_outside_its_scale_is_an_error() -> None:
    with pytest.raises(ValueError, match="outside its scale"):
        kpis.nps_category(11, (0, 10))


@pytest.mark.parametrize(
    ("function", "answers", "expected"),
    [
        (kpis.csat, [5, 4, 3, 2], 50.0),
        (kpis.csat, [1, 1], 0.0),
        (kpis.csat, [], None),
        (kpis.customer_effort_score, [7, 5, 3], 5.0),
        (kpis.customer_effort_score, [], None),
        (kpis.customer_loyalty_index, [1, 2, 3, 4, 5, 6], 50.0),
        (kpis.customer_loyalty_index, [1, 1], 100.0),
        (kpis.customer_loyalty_index, [6], 0.0),
        (kpis.customer_loyalty_index, [], None),
    ],
)
def test_survey_scores(function, answers, expected) -> None:
    assert function(answers) == expected


@pytest.mark.parametrize(("function", "answer"), [(kpis.csat, 6), (kpis.customer_effort_score, 0), (kpis.customer_loyalty_index, 7)])
def test_survey_answers_off_the_scale_are_errors(function, answer) -> None:
    with pytest.raises(ValueError, match="outside|not one of"):
        function([answer])


@pytest.mark.parametrize(("values", "fraction", "expected"), [([1, 2, 3, 4, 5], 0.9, 4.6), ([10], 0.9, 10), ([], 0.9, None), ([1, 3], 0.5, 2)])
def test_percentile(values, fraction, expected) -> None:
    assert kpis.percentile(values, fraction) == (pytest.approx(expected) if expected is not None else None)


def ev(event_id: str, at: int, data) -> Event:
    return Event(event_id=event_id, type="x", customer_id="acme", occurred_at_ms=at, data=data)


def test_customer_kpis_from_state() -> None:
    state = new_state("acme")
    events = [
        ev("s1", T0 - 20 * DAY_MS, UsageSession("u1", 60)),
        ev("s2", T0 - 3 * DAY_MS, UsageSession("u2", 60)),
        ev("s3", T0, UsageSession("u3", 60)),
        ev("f1", T0, UsageFeature("u3", "reports")),
        ev("f2", T0 - 40 * DAY_MS, UsageFeature("u1", "alerts")),
        ev("p1", T0 - 10 * DAY_MS, PurchaseCompleted("o1", 30.0, "EUR")),
        ev("p2", T0 - 2 * DAY_MS, PurchaseCompleted("o2", 50.0, "EUR")),
        ev("ab", T0 - 2 * DAY_MS, CheckoutAbandoned(20.0)),
        ev("t1", T0 - 5 * DAY_MS, TicketOpened("t1", "urgent")),
        ev("t2", T0 - 5 * DAY_MS, TicketOpened("t2", "low")),
        ev("r2", T0 - 4 * DAY_MS, TicketResolved("t2")),
        ev("t3", T0 - 5 * DAY_MS, TicketOpened("t3", "normal")),
        ev("r3", T0 - 2 * DAY_MS, TicketResolved("t3")),
        ev("o3", T0 - 1 * DAY_MS, TicketReopened("t3")),
        ev("n1", T0, SurveyAnswered("nps", 10)),
        ev("n2", T0, SurveyAnswered("nps", 3)),
        ev("n3", T0, SurveyAnswered("nps", 7, (1, 7))),
        ev("c1", T0, SurveyAnswered("csat", 5)),
        ev("c2", T0, SurveyAnswered("csat", 2)),
        ev("e1", T0, SurveyAnswered("ces", 6)),
        ev("i1", T0 - 20 * DAY_MS, InvoiceIssued("inv1", 99.0, T0 - 10 * DAY_MS)),
        ev("x1", T0 - 9 * DAY_MS, PaymentFailed("inv1", 99.0)),
        ev("m1", T0 - 30 * DAY_MS, SubscriptionUpdated(100.0)),
        ev("m2", T0 - 1 * DAY_MS, SubscriptionUpdated(120.0)),
    ]
    for event in events:
        apply_event(state, event)
    result = kpis.customer_kpis(state, T0, key_features=("reports", "alerts", "exports", "api"))
    assert (result.daily_active_users, result.weekly_active_users, result.monthly_active_users) == (1, 2, 3)
    assert result.stickiness == pytest.approx(1 / 3)
    assert result.key_feature_adoption == 0.25  # alerts was used 40 days ago: outside 30 days
    assert (result.sessions_7d, result.sessions_30d) == (2, 3)
    assert (result.orders_30d, result.revenue_30d, result.average_basket_30d) == (2, 80.0, 40.0)
    assert result.checkout_abandonment_30d == pytest.approx(100 / 3)
    assert result.days_since_last_purchase == 2.0
    assert (result.open_tickets, result.urgent_open_tickets) == (2, 1)
    assert result.mean_resolution_hours == pytest.approx((24 + 72) / 2)
    assert result.p90_resolution_hours == pytest.approx(24 + 0.9 * 48)
    assert result.reopen_rate == pytest.approx(100 / 3)
    assert result.nps == pytest.approx((2 - 1) / 3 * 100)
    assert result.csat == 50.0 and result.ces == 6.0
    assert (result.failed_payments_30d, result.overdue_invoices, result.max_days_overdue) == (1, 1, 10.0)
    assert (result.mrr, result.mrr_growth) == (120.0, pytest.approx(20.0))


def test_fleet_totals_count_the_period() -> None:
    at = T0
    fleet = kpis.FleetTotals(at_ms=at, period_days=30)
    steady, lost, new, cancelled = (new_state(c) for c in ("steady", "lost", "new", "cancelled"))
    for state, days in ((steady, (45, 10)), (lost, (50, 40)), (new, (5,)), (cancelled, (45, 20))):
        for index, day in enumerate(days):
            apply_event(state, ev(f"{state.customer_id}-{index}", at - day * DAY_MS, UsageSession("u", 60)))
    apply_event(cancelled, ev("m", at - 44 * DAY_MS, SubscriptionUpdated(100.0)))
    apply_event(steady, ev("m2", at - 44 * DAY_MS, SubscriptionUpdated(50.0)))
    from scoring.contract import SubscriptionCancelled

    apply_event(cancelled, ev("c", at - 3 * DAY_MS, SubscriptionCancelled()))
    apply_event(steady, ev("p1", at - 5 * DAY_MS, PurchaseCompleted("o", 5.0, "EUR")))
    apply_event(steady, ev("p2", at - 2 * DAY_MS, PurchaseCompleted("o", 5.0, "EUR")))
    apply_event(new, ev("p3", at - 2 * DAY_MS, PurchaseCompleted("o", 5.0, "EUR")))
    apply_event(steady, ev("n", at - DAY_MS, SurveyAnswered("nps", 10)))
    apply_event(new, ev("n2", at - DAY_MS, SurveyAnswered("nps", 3)))
    apply_event(new, ev("c1", at - DAY_MS, SurveyAnswered("csat", 4)))
    for state in (steady, lost, new, cancelled):
        fleet.add(state)
    assert (fleet.customers, fleet.active, fleet.new_in_period) == (4, 2, 1)
    assert (fleet.active_at_period_start, fleet.lost_in_period) == (3, 2)  # lost went quiet, cancelled cancelled
    # Churn rate 2 / 3, retention (2 active − 1 new) / 3: computed from these in PromQL.
    assert kpis.churn_rate(fleet.lost_in_period, fleet.active_at_period_start) == pytest.approx(200 / 3)
    assert kpis.retention_rate(fleet.active_at_period_start, fleet.active, fleet.new_in_period) == pytest.approx(100 / 3)
    assert (fleet.buyers, fleet.repeat_buyers) == (2, 1)
    assert fleet.nps == {"promoter": 1, "passive": 0, "detractor": 1}
    assert (fleet.csat_satisfied, fleet.csat_answers) == (1, 1)
    assert fleet.mrr == 50.0


@pytest.mark.parametrize(("answer", "points"), [(1, 100.0), (2, 80.0), (3, 60.0), (4, 40.0), (5, 20.0), (6, 0.0)])
def test_each_loyalty_answer_is_worth_the_articles_points(answer: int, points: float) -> None:
    assert kpis.loyalty_points(answer) == points
    assert kpis.customer_loyalty_index([answer]) == points


@pytest.mark.parametrize(
    ("answers", "secure"),
    [
        ({"satisfied": 1.0, "buy_again": 1.0, "recommend": 1.0}, True),
        ({"satisfied": 1.0, "buy_again": 0.0, "recommend": 1.0}, False),
        ({"satisfied": 0.75, "buy_again": 1.0, "recommend": 0.6}, True),
        ({"satisfied": 0.5, "buy_again": 1.0, "recommend": 1.0}, False),  # the middle of the scale is not positive
        ({"satisfied": 1.0, "recommend": 1.0}, None),  # one question unanswered: no status yet
    ],
)
def test_a_customer_is_secure_when_all_three_answers_are_positive(answers: dict, secure: bool | None) -> None:
    assert kpis.customer_secure(answers) is secure


def test_loyalty_and_secure_answers_in_the_customer_and_fleet_kpis() -> None:
    at = T0
    loyal, unsure, silent = new_state("loyal"), new_state("unsure"), new_state("silent")
    for index, answer in enumerate((1, 2, 3)):
        apply_event(loyal, ev(f"l{index}", at - DAY_MS, SurveyAnswered("cli", answer, question=f"q{index}")))
    for question in ("satisfied", "buy_again", "recommend"):
        apply_event(loyal, ev(f"s-{question}", at - DAY_MS, SurveyAnswered("csi", 1, question=question)))
        apply_event(unsure, ev(f"u-{question}", at - 2 * DAY_MS, SurveyAnswered("csi", 1, question=question)))
    apply_event(unsure, ev("u-again", at - DAY_MS, SurveyAnswered("csi", 0, question="buy_again")))  # the latest answer counts
    apply_event(unsure, ev("u-cli", at - DAY_MS, SurveyAnswered("cli", 5, scale=(1, 5))))  # 1-5: its worst end is 0 points
    apply_event(silent, ev("x", at - DAY_MS, UsageSession("u", 60)))
    assert kpis.customer_kpis(loyal, at).customer_loyalty_index == 80.0 and kpis.customer_kpis(loyal, at).customer_secure is True
    assert kpis.customer_kpis(unsure, at).customer_loyalty_index == 0.0 and kpis.customer_kpis(unsure, at).customer_secure is False
    assert kpis.customer_kpis(silent, at).customer_loyalty_index is None and kpis.customer_kpis(silent, at).customer_secure is None
    fleet = kpis.FleetTotals(at_ms=at, period_days=30)
    for state in (loyal, unsure, silent):
        fleet.add(state)
    assert (fleet.cli_answers, fleet.cli_points_sum) == (4, 240.0)
    assert (fleet.csi_answered, fleet.csi_secure) == (2, 1)
    assert kpis.customer_secure_rate(fleet.csi_secure, fleet.csi_answered) == 50.0


def test_fleet_totals_of_baskets_users_loyalty_and_participation() -> None:
    at = T0
    old, newcomer, browser = new_state("old"), new_state("newcomer"), new_state("browser")
    apply_event(old, ev("o0", at - 60 * DAY_MS, PurchaseCompleted("o0", 10.0, "EUR")))  # bought before the period
    apply_event(old, ev("o1", at - 5 * DAY_MS, PurchaseCompleted("o1", 30.0, "EUR")))
    apply_event(newcomer, ev("n1", at - 9 * DAY_MS, PurchaseCompleted("n1", 20.0, "EUR")))
    apply_event(newcomer, ev("n2", at - 9 * DAY_MS, PurchaseCompleted("n2", 40.0, "EUR")))  # one day: not yet regular
    apply_event(newcomer, ev("n3", at - 8 * DAY_MS, CheckoutAbandoned(15.0)))
    apply_event(browser, ev("s1", at, UsageSession("u1", 60)))
    apply_event(browser, ev("s2", at - 3 * DAY_MS, UsageSession("u2", 60)))
    apply_event(browser, ev("s3", at - 20 * DAY_MS, UsageSession("u3", 60)))
    apply_event(browser, ev("a1", at - DAY_MS, SurveyAnswered("csat", 4)))
    fleet = kpis.FleetTotals(at_ms=at, period_days=30)
    for state in (old, newcomer, browser):
        fleet.add(state)
    assert (fleet.orders, fleet.revenue, fleet.abandoned_checkouts) == (3, 90.0, 1)
    assert (fleet.buyers, fleet.regular_customers, fleet.survey_participants) == (2, 1, 1)
    assert fleet.active_users == {"1d": 1, "7d": 2, "30d": 3}
    assert kpis.average_basket(fleet.revenue, fleet.orders) == 30.0


def test_customer_kpis_of_the_relationship_and_the_surveys_sent() -> None:
    from scoring.contract import CsmPulse, CsmTouchpoint, SurveySent

    state = new_state("acme")
    apply_event(state, ev("t", T0 - 10 * DAY_MS, CsmTouchpoint("qbr", "positive")))
    apply_event(state, ev("p", T0 - 10 * DAY_MS, CsmPulse(4, ("adoption",), T0 + DAY_MS)))
    apply_event(state, ev("s1", T0 - 40 * DAY_MS, SurveySent("nps")))
    apply_event(state, ev("a1", T0 - 35 * DAY_MS, SurveyAnswered("nps", 9)))
    apply_event(state, ev("s2", T0 - 30 * DAY_MS, SurveySent("csat")))  # never answered: missed
    apply_event(state, ev("s3", T0 - 2 * DAY_MS, SurveySent("ces")))  # still open
    now = kpis.customer_kpis(state, T0)
    assert (now.survey_response_rate, now.days_since_csm_contact, now.csm_pulse, now.needs_fresh_pulse) == (50.0, 10.0, 4, False)
    later = kpis.customer_kpis(state, T0 + 2 * DAY_MS)
    assert (later.csm_pulse, later.needs_fresh_pulse) == (None, True)
    assert kpis.customer_kpis(new_state("quiet"), T0).survey_response_rate is None


def test_time_to_resolution_counts_the_tickets_resolved_in_the_window_only() -> None:
    state = new_state("acme")
    apply_event(state, ev("o-old", T0 - 300 * DAY_MS, TicketOpened("old", "normal")))
    apply_event(state, ev("r-old", T0 - 297 * DAY_MS, TicketResolved("old")))  # 72 h, 297 days ago
    apply_event(state, ev("o-new", T0 - 3 * DAY_MS, TicketOpened("new", "high")))
    apply_event(state, ev("r-new", T0 - 2 * DAY_MS, TicketResolved("new")))  # 24 h
    assert kpis.customer_kpis(state, T0).mean_resolution_hours == 24.0
    fleet = kpis.FleetTotals(at_ms=T0, period_days=30)
    fleet.add(state)
    assert (fleet.resolutions, fleet.resolution_seconds_sum) == (1, 24 * 3600.0)
    state.resolution_days = state.resolution_days[1:]  # as an older layout kept it: the oldest duration without its day
    assert kpis.customer_kpis(state, T0).mean_resolution_hours == 24.0


def test_fleet_mrr_growth_is_of_customers_paying_at_the_start_with_new_revenue_apart() -> None:
    from scoring.contract import SubscriptionCancelled

    at = T0
    fleet = kpis.FleetTotals(at_ms=at, period_days=30)
    for customer, start_mrr, change in (("grows", 100.0, 120.0), ("shrinks", 100.0, 90.0), ("leaves", 50.0, None), ("joins", None, 500.0)):
        state = new_state(customer)
        apply_event(state, ev(f"{customer}-s", at - 40 * DAY_MS, UsageSession("u", 60)))
        if start_mrr is not None:
            apply_event(state, ev(f"{customer}-m0", at - 40 * DAY_MS, SubscriptionUpdated(start_mrr)))
        if change is None:
            apply_event(state, ev(f"{customer}-c", at - 10 * DAY_MS, SubscriptionCancelled("price")))
        else:
            apply_event(state, ev(f"{customer}-m1", at - 10 * DAY_MS, SubscriptionUpdated(change)))
        fleet.add(state)
    movement = fleet.mrr_movement
    assert (movement["start"], movement["existing_end"]) == (250.0, 210.0)
    assert (movement["new"], movement["expansion"], movement["contraction"], movement["churned"]) == (500.0, 20.0, 10.0, 50.0)
    assert kpis.growth_rate(movement["start"], movement["existing_end"]) == pytest.approx(-16.0)  # the newcomer's 500 left out
    assert fleet.mrr == 710.0


def test_upsell_and_lifetime_value_per_customer_and_for_the_fleet() -> None:
    """Issue 36: upsell (a buyer from before the period buying a category new to it) per
    customer and per fleet, and a customer's LTV by the articles' formula."""
    from scoring.contract import Item

    def order(event_id: str, at: int, amount: float, category: str) -> Event:
        item = Item(sku="s", quantity=1, unit_price=amount, category=category)
        return ev(event_id, at, PurchaseCompleted(event_id, amount, "EUR", (item,)))

    at = T0
    upsold, loyal, newcomer = new_state("upsold"), new_state("loyal"), new_state("newcomer")
    apply_event(upsold, order("u0", at - 80 * DAY_MS, 50.0, "basics"))
    apply_event(upsold, order("u1", at - 40 * DAY_MS, 50.0, "basics"))
    apply_event(upsold, order("u2", at - 5 * DAY_MS, 50.0, "premium"))  # new to it, in the period
    apply_event(loyal, order("l0", at - 70 * DAY_MS, 20.0, "basics"))
    apply_event(loyal, order("l1", at - 3 * DAY_MS, 20.0, "basics"))  # bought again, nothing new
    apply_event(newcomer, order("n0", at - 2 * DAY_MS, 30.0, "premium"))  # new, but no customer before the period
    fleet = kpis.FleetTotals(at_ms=at, period_days=30)
    for state in (upsold, loyal, newcomer):
        fleet.add(state)
    assert (fleet.existing_buyers, fleet.upsold) == (2, 1)
    assert kpis.upsell_rate(fleet.upsold, fleet.existing_buyers) == 50.0

    customer = kpis.customer_kpis(upsold, at, churn_risk=0.05)
    assert (customer.new_categories_30d, customer.upsell_30d) == (1, True)
    assert kpis.customer_kpis(newcomer, at).upsell_30d is False and kpis.customer_kpis(loyal, at).new_categories_30d == 0
    # 150 € over 90 days in 3 orders: a 50 € basket, one order per 30 days, 1 / 0.05 = 20 periods.
    assert customer.revenue_90d == 150.0 and customer.ltv == pytest.approx(1000.0)
    assert kpis.customer_kpis(upsold, at).ltv is None  # no score, no lifetime
    assert kpis.customer_lifetime_value(150.0, 3, 90, 0.0) == pytest.approx(50 * 1 * kpis.MAX_LIFETIME_PERIODS)


def test_the_score_before_the_latest_touchpoint_and_the_change_since() -> None:
    """Did our actions help: the published score just before the latest touchpoint not marked
    negative, whatever order the touchpoints arrive in; per customer and for the fleet."""
    from scoring.contract import CsmTouchpoint
    from scoring.health import ScoringParameters
    from scoring.pipeline import step

    parameters = ScoringParameters()
    state = new_state("acme")
    step(state, ev("s1", T0 - 20 * DAY_MS, UsageSession("u1", 600)), parameters, 32)
    before = state.published.score
    step(state, ev("c1", T0 - 10 * DAY_MS, CsmTouchpoint("call", "positive")), parameters, 32)
    assert state.contact_score == before
    step(state, ev("c0", T0 - 15 * DAY_MS, CsmTouchpoint("call", "positive")), parameters, 32)  # older, arrives late
    step(state, ev("c2", T0 - 9 * DAY_MS, CsmTouchpoint("call", "negative")), parameters, 32)  # negative: not an action that counts
    assert state.contact_score == before
    for day in range(8, 0, -1):
        step(state, ev(f"s-{day}", T0 - day * DAY_MS, UsageSession("u1", 600)), parameters, 32)
    change = kpis.customer_kpis(state, T0).score_change_since_csm_contact
    assert change == round(state.published.score - before, 2) and change != 0
    fleet = kpis.FleetTotals(at_ms=T0, period_days=30)
    fleet.add(state)
    fleet.add(new_state("untouched"))
    assert (fleet.csm_touched, fleet.score_change_since_touchpoint_sum) == (1, change)
    assert kpis.customer_kpis(new_state("untouched"), T0).score_change_since_csm_contact is None
