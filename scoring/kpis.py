"""Customer KPIs, with the formulas customer-success and loyalty teams use.

Every function is pure and takes plain numbers (or the state and the time it
evaluates at). Rates are percentages (0-100) where the literature states them
that way. A KPI that is undefined for its inputs (e.g. a rate over zero
customers) returns ``None`` rather than a misleading 0; an input that is invalid
(a negative count, a survey scale that is not in use) raises ``ValueError``
with a message saying what is wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from scoring.contract import CSI_QUESTIONS
from scoring.health import survey_kind
from scoring.state import DAY_MS, MAX_MRR_CHANGES, PRIORITIES, CustomerState, day_total, window_total
from scoring.structs import SurveyResponse


def _counts(**counts: float) -> None:
    for name, value in counts.items():
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"{name} must be a non-negative finite number, got {value}")


# --- Exit reasons ----------------------------------------------------------------------

#: The reason codes counted by default (``cancellation_reasons``); anything else is ``other``.
DEFAULT_CANCELLATION_REASONS = ("price", "missing_feature", "competitor", "support", "no_longer_needed", "business_closed", "technical_issues")


def cancellation_reason_label(reason: str | None, known: Sequence[str]) -> str:
    """The label a cancellation is counted under: its reason code when it is one of ``known``
    (case and surrounding spaces aside, spaces and dashes read as underscores), ``unspecified``
    without a reason, else ``other``: a bounded set of labels whatever producers send."""
    if not reason or not reason.strip():
        return "unspecified"
    code = reason.strip().lower().replace(" ", "_").replace("-", "_")
    return code if code in known else "other"


# --- Customers ready for more ----------------------------------------------------------


def expansion_growth(band: str, confidence: float, usage_growth: float | None, min_confidence: float, min_growth: float) -> float | None:
    """The usage growth that makes a customer an expansion candidate (upsell, cross-sell): a
    healthy customer, scored on enough evidence (``min_confidence``), whose activity of the
    last 30 days is at least ``min_growth`` (0.2: 20 %) above the 30 days before; else None."""
    if band != "healthy" or confidence < min_confidence or usage_growth is None or usage_growth < min_growth:
        return None
    return usage_growth


# --- Customer base, per period -------------------------------------------------------


def retention_rate(customers_at_start: int, customers_at_end: int, new_customers: int) -> float | None:
    """(customers at end − new customers) / customers at start × 100.

    1000 at start, 100 new, 1050 at end → 95 %. None when nobody was a customer at the start.
    """
    _counts(customers_at_start=customers_at_start, customers_at_end=customers_at_end, new_customers=new_customers)
    if new_customers > customers_at_end:
        raise ValueError(f"new_customers ({new_customers}) cannot exceed customers_at_end ({customers_at_end})")
    if customers_at_start == 0:
        return None
    return (customers_at_end - new_customers) / customers_at_start * 100


def churn_rate(customers_lost: int, customers_at_start: int) -> float | None:
    """Customers lost in the period / customers at start × 100 (1000 at start, 50 lost → 5 %)."""
    _counts(customers_lost=customers_lost, customers_at_start=customers_at_start)
    if customers_at_start == 0:
        return None
    if customers_lost > customers_at_start:
        raise ValueError(f"customers_lost ({customers_lost}) cannot exceed customers_at_start ({customers_at_start})")
    return customers_lost / customers_at_start * 100


def customer_lifetime(churn_rate_percent: float | None) -> float | None:
    """Expected lifetime in periods = 1 / churn rate (5 % a period → 20 periods); infinite with no churn."""
    if churn_rate_percent is None:
        return None
    _counts(churn_rate_percent=churn_rate_percent)
    return math.inf if churn_rate_percent == 0 else 100.0 / churn_rate_percent


def net_change(customers_at_start: int, customers_at_end: int) -> int:
    return customers_at_end - customers_at_start


def repurchase_rate(customers_with_two_or_more: int, customers_with_one_or_more: int) -> float | None:
    """Share (%) of buying customers who bought at least twice in the period."""
    _counts(two_or_more=customers_with_two_or_more, one_or_more=customers_with_one_or_more)
    if customers_with_two_or_more > customers_with_one_or_more:
        raise ValueError("customers with two or more purchases cannot outnumber customers with one or more")
    if customers_with_one_or_more == 0:
        return None
    return customers_with_two_or_more / customers_with_one_or_more * 100


def average_basket(revenue: float, orders: int) -> float | None:
    """Revenue / number of orders."""
    _counts(revenue=revenue, orders=orders)
    return None if orders == 0 else revenue / orders


def upsell_rate(customers_buying_a_new_category: int, buying_customers: int) -> float | None:
    """Share (%) of buying customers who bought a product category they had not bought before."""
    _counts(new_category=customers_buying_a_new_category, buying_customers=buying_customers)
    if buying_customers == 0:
        return None
    return customers_buying_a_new_category / buying_customers * 100


def lifetime_value(average_purchase_value: float, purchases_per_period: float, expected_lifetime_periods: float) -> float:
    """Average purchase value × purchase frequency × expected lifetime (50 € × 3/year × 5 years = 750 €)."""
    _counts(value=average_purchase_value, frequency=purchases_per_period, lifetime=expected_lifetime_periods)
    return average_purchase_value * purchases_per_period * expected_lifetime_periods


def lifetime_value_from_margin(average_margin_per_period: float, lifetime_periods: float) -> float:
    """Margin form: average margin per period × lifetime in periods."""
    _counts(lifetime_periods=lifetime_periods)
    if not math.isfinite(average_margin_per_period):
        raise ValueError("average_margin_per_period must be finite")
    return average_margin_per_period * lifetime_periods


def ltv_to_cac(lifetime_value_amount: float, acquisition_cost: float | None) -> float | None:
    """LTV / CAC; None when no acquisition cost is configured."""
    if acquisition_cost is None:
        return None
    if acquisition_cost <= 0:
        raise ValueError(f"acquisition_cost must be positive, got {acquisition_cost}")
    return lifetime_value_amount / acquisition_cost


def growth_rate(previous: float, current: float) -> float | None:
    """(current − previous) / previous × 100, e.g. MRR growth between periods."""
    _counts(previous=previous, current=current)
    return None if previous == 0 else (current - previous) / previous * 100


def revenue_from_active_customers(revenue_by_customer: dict[str, float], active_customers: Iterable[str]) -> float:
    """Revenue counted only for customers who are active (not churned) in the period."""
    active = set(active_customers)
    return sum(amount for customer, amount in revenue_by_customer.items() if customer in active)


def checkout_abandonment_rate(abandoned: int, completed: int) -> float | None:
    """Abandoned / (abandoned + completed) × 100."""
    _counts(abandoned=abandoned, completed=completed)
    total = abandoned + completed
    return None if total == 0 else abandoned / total * 100


# --- Surveys --------------------------------------------------------------------------

#: NPS scale (min, max) → (highest detractor answer, highest passive answer); above is a promoter.
NPS_SCALES: dict[tuple[int, int], tuple[int, int]] = {
    (0, 10): (6, 8),
    (1, 10): (6, 8),
    (1, 7): (5, 6),
    (1, 5): (3, 4),
}


def _nps_bands(scale: tuple[float, float]) -> tuple[int, int]:
    key = (int(scale[0]), int(scale[1]))
    if key != tuple(scale) or key not in NPS_SCALES:
        supported = ", ".join(f"{low}-{high}" for low, high in NPS_SCALES)
        raise ValueError(f"NPS scale {scale[0]}-{scale[1]} is not supported; use one of {supported}")
    return NPS_SCALES[key]


def nps_category(score: float, scale: tuple[float, float] = (0, 10)) -> str:
    """promoter, passive or detractor for one answer on a supported scale."""
    detractor_max, passive_max = _nps_bands(scale)
    if not scale[0] <= score <= scale[1]:
        raise ValueError(f"NPS answer {score} is outside its scale {scale[0]}-{scale[1]}")
    if score <= detractor_max:
        return "detractor"
    return "passive" if score <= passive_max else "promoter"


def net_promoter_score(answers: Sequence[float], scale: tuple[float, float] = (0, 10)) -> float | None:
    """% promoters − % detractors, from −100 to 100. None without answers."""
    _nps_bands(scale)
    if not answers:
        return None
    categories = [nps_category(answer, scale) for answer in answers]
    return (categories.count("promoter") - categories.count("detractor")) / len(answers) * 100


def csat(answers: Sequence[float]) -> float | None:
    """Share (%) of answers of 4 or 5 on a 1-5 scale."""
    for answer in answers:
        if not 1 <= answer <= 5:
            raise ValueError(f"CSAT answer {answer} is outside 1-5")
    return None if not answers else sum(1 for a in answers if a >= 4) / len(answers) * 100


def customer_effort_score(answers: Sequence[float]) -> float | None:
    """Mean answer on 1-7, higher is easier."""
    for answer in answers:
        if not 1 <= answer <= 7:
            raise ValueError(f"CES answer {answer} is outside 1-7")
    return None if not answers else sum(answers) / len(answers)


def loyalty_points(score: float, scale_min: float = 1.0, scale_max: float = 6.0) -> float:
    """One Customer Loyalty Index answer in points: the articles' table on 1-6 (1: 100, 2: 80
    ... 6: 0), and the same straight line on another scale (its best end first)."""
    if not scale_min <= score <= scale_max or scale_min >= scale_max:
        raise ValueError(f"loyalty answer {score} is outside its scale {scale_min}-{scale_max}")
    return 100.0 * (scale_max - score) / (scale_max - scale_min)


def customer_secure(answers: dict[str, float]) -> bool | None:
    """The Customer Secure Index for one customer: secure when the answers to all three
    questions (satisfied, would buy again, would recommend; each as a share 0-1 of its scale)
    are positive (above the middle of the scale); None until all three are answered."""
    if any(question not in answers for question in CSI_QUESTIONS):
        return None
    return all(answers[question] > 0.5 for question in CSI_QUESTIONS)


def customer_secure_rate(secure: int, answered: int) -> float | None:
    """Secure customers / customers who answered all three CSI questions × 100."""
    _counts(secure=secure, answered=answered)
    if secure > answered:
        raise ValueError(f"secure customers ({secure}) cannot outnumber those who answered ({answered})")
    return None if answered == 0 else secure / answered * 100


def customer_loyalty_index(answers: Sequence[int]) -> float | None:
    """Each answer on 1-6 maps to 100, 80, 60, 40, 20, 0 points; the index is the mean."""
    points = []
    for answer in answers:
        if answer not in (1, 2, 3, 4, 5, 6):
            raise ValueError(f"loyalty answer {answer} is not one of 1-6")
        points.append(100 - 20 * (answer - 1))
    return None if not points else sum(points) / len(points)


# --- Per customer, from the state record ------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Linear-interpolated percentile (fraction 0.9 = p90)."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class CustomerKpis:
    daily_active_users: int
    weekly_active_users: int
    monthly_active_users: int
    stickiness: float | None  # DAU / MAU
    key_feature_adoption: float | None  # share of configured key features used in 30 days
    sessions_7d: int
    sessions_30d: int
    orders_30d: int
    revenue_30d: float
    average_basket_30d: float | None
    checkout_abandonment_30d: float | None
    days_since_last_purchase: float | None
    open_tickets: int
    urgent_open_tickets: int
    mean_resolution_hours: float | None
    p90_resolution_hours: float | None
    reopen_rate: float | None
    nps: float | None
    csat: float | None
    ces: float | None
    customer_loyalty_index: float | None
    customer_secure: bool | None
    #: Surveys sent in the last 90 days answered in time, of those answered or missed (None: none sent).
    survey_response_rate: float | None
    #: The customer-success relationship: days since the last CSM touchpoint (None: never),
    #: the latest pulse's rating while valid (None: none or expired), whether it needs a fresh one.
    days_since_csm_contact: float | None
    csm_pulse: int | None
    needs_fresh_pulse: bool
    #: E-mails of the last 90 days: sent, opened / sent, clicked / sent, clicked / opened (the
    #: articles' reactivity), and whether the customer unsubscribed.
    emails_sent_90d: int
    email_open_rate: float | None
    email_click_rate: float | None
    email_reactivity: float | None
    email_unsubscribed: bool
    failed_payments_30d: int
    overdue_invoices: int
    max_days_overdue: float
    mrr: float
    mrr_growth: float | None
    #: Revenue of the last 90 days; the articles' LTV for this customer: average basket ×
    #: orders per 30 days (both over 90 days) × expected lifetime in 30-day periods, 1 / its
    #: churn risk (at most MAX_LIFETIME_PERIODS; None without orders or a score).
    revenue_90d: float = 0.0
    ltv: float | None = None
    #: Upsell: categories first bought in the last 30 days, and whether the customer had
    #: bought before those 30 days and bought a category new to it in them.
    new_categories_30d: int = 0
    upsell_30d: bool = False
    #: Did our action help: the published score now minus the one just before the latest CSM
    #: touchpoint not marked negative (None: no such touchpoint, or no score then or now).
    score_change_since_csm_contact: float | None = None


#: The expected lifetime an LTV assumes at most (ten years of 30-day periods).
MAX_LIFETIME_PERIODS = 120.0


def customer_lifetime_value(revenue: float, orders: int, window_days: int, churn_risk: float | None) -> float | None:
    """Average basket × orders per 30 days × expected lifetime in 30-day periods (1 / churn risk)."""
    if orders <= 0 or churn_risk is None:
        return None
    lifetime = MAX_LIFETIME_PERIODS if churn_risk <= 1 / MAX_LIFETIME_PERIODS else 1 / churn_risk
    return revenue / orders * (orders * 30 / window_days) * lifetime


def new_categories(state: CustomerState, since_ms: int, at_ms: int) -> int:
    """Categories first bought in [since_ms, at_ms] (an older record's categories, without their time, are not)."""
    return sum(1 for first in state.category_first_ms if first and since_ms <= first <= at_ms)


def _active_users(state: CustomerState, at_ms: int, days: int) -> int:
    today = at_ms // DAY_MS
    return sum(1 for last_day in state.users_last_day.values() if today - days < last_day <= today)


def resolutions_between(state: CustomerState, first_day: int, last_day: int) -> list[float]:
    """Resolution times (seconds) of the tickets resolved on the UTC days first_day..last_day;
    those an older record kept without their day are left out."""
    dated = list(zip(reversed(state.resolution_seconds), reversed(state.resolution_days)))
    return [seconds for seconds, day in reversed(dated) if first_day <= day <= last_day]


def email_totals(state: CustomerState, since_ms: int, at_ms: int) -> tuple[int, int, int]:
    """E-mails sent, opened and clicked on the days of [since_ms, at_ms]."""
    first, last = since_ms // DAY_MS, at_ms // DAY_MS
    sent = opened = clicked = 0
    for day, day_sent, day_opened, day_clicked in state.email_days:
        if first <= day <= last:
            sent += day_sent
            opened += day_opened
            clicked += day_clicked
    return sent, opened, clicked


def share(part: float, whole: float) -> float | None:
    """part / whole × 100, capped at 100 (an e-mail opened twice, or one sent before the window); None over 0."""
    return None if whole == 0 else min(100.0, part / whole * 100)


def _email_kpis(sent: int, opened: int, clicked: int, unsubscribed_ms: int) -> dict:
    return {
        "emails_sent_90d": sent,
        "email_open_rate": share(opened, sent),
        "email_click_rate": share(clicked, sent),
        "email_reactivity": share(clicked, opened),
        "email_unsubscribed": bool(unsubscribed_ms),
    }


def _rate_or_none(part: int, other: int) -> float | None:
    """part / (part + other) × 100; None when both are 0."""
    return None if part + other == 0 else part / (part + other) * 100


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def answer_share(response: SurveyResponse) -> float:
    """Where an answer sits on its scale, 0 (lowest) to 1 (highest)."""
    return (response.score - response.scale_min) / (response.scale_max - response.scale_min)


def as_csat(response: SurveyResponse) -> float:
    """A CSAT answer on 1-5, whatever scale it was sent on (4-5 is satisfied)."""
    return 1 + 4 * answer_share(response)


def recent_answers(surveys: Sequence[SurveyResponse], since_ms: int, at_ms: int) -> tuple[dict[str, list[SurveyResponse]], dict[str, float]]:
    """The answers given in [since_ms, at_ms] by survey (nps, csat, ces, cli), and each CSI
    question's latest answer as a share of its scale (the record keeps them as ``csi.<question>``)."""
    answers: dict[str, list[SurveyResponse]] = {"nps": [], "csat": [], "ces": [], "cli": []}
    secure: dict[str, float] = {}
    for response in sorted(surveys, key=lambda r: r.answered_ms):
        if not since_ms <= response.answered_ms <= at_ms:
            continue
        if response.survey.startswith("csi."):
            secure[response.survey[4:]] = answer_share(response)
        elif response.survey in answers:
            answers[response.survey].append(response)
    return answers, secure


def invitation_outcomes(
    invites: Sequence[tuple[int, str]], answers: Sequence[SurveyResponse], since_ms: int, at_ms: int, response_days: float
) -> tuple[int, int]:
    """(answered, missed) of the surveys sent in [since_ms, at_ms]: answered when an answer of
    the same survey came within ``response_days`` of sending, missed once that deadline passed
    by ``at_ms`` without one (still open ones count in neither)."""
    window = int(response_days * DAY_MS)
    answered = missed = 0
    for sent_ms, kind in invites:
        if not since_ms <= sent_ms <= at_ms:
            continue
        deadline = sent_ms + window
        if any(sent_ms <= a.answered_ms <= min(deadline, at_ms) and survey_kind(a) == kind for a in answers):
            answered += 1
        elif deadline <= at_ms:
            missed += 1
    return answered, missed


def customer_kpis(
    state: CustomerState, at_ms: int, key_features: Sequence[str] = (), survey_response_days: float = 14.0, churn_risk: float | None = None
) -> CustomerKpis:
    """Everything a customer-success manager reads about one customer, at ``at_ms``; ``churn_risk``
    (its score's, at ``at_ms``) gives the LTV its expected lifetime."""
    today = at_ms // DAY_MS
    dau, wau, mau = (_active_users(state, at_ms, days) for days in (1, 7, 30))
    orders = window_total(state, "purchases", at_ms, 30)
    revenue = window_total(state, "revenue_cents", at_ms, 30) / 100
    adoption = None
    if key_features:
        used = sum(1 for f in key_features if today - 30 < state.features_last_day.get(f, -(10**9)) <= today)
        adoption = used / len(key_features)
    answers, secure_answers = recent_answers(state.surveys, at_ms - 90 * DAY_MS, at_ms)
    nps_value = None
    if answers["nps"]:
        # Answers on different NPS scales are put on 0-10 before categorizing.
        categories = [
            nps_category(r.score, (r.scale_min, r.scale_max)) if (int(r.scale_min), int(r.scale_max)) in NPS_SCALES else None
            for r in answers["nps"]
        ]
        known = [c for c in categories if c]
        if known:
            nps_value = (known.count("promoter") - known.count("detractor")) / len(known) * 100
    csat_answers = [as_csat(r) for r in answers["csat"]]
    ces_answers = [1 + 6 * (r.score - r.scale_min) / (r.scale_max - r.scale_min) for r in answers["ces"]]
    resolutions_hours = [seconds / 3600 for seconds in resolutions_between(state, today - 29, today)]
    handled = state.tickets_resolved + state.tickets_reopened
    overdue = [invoice for invoice in state.unpaid_invoices if invoice.due_ms < at_ms]
    return CustomerKpis(
        daily_active_users=dau,
        weekly_active_users=wau,
        monthly_active_users=mau,
        stickiness=dau / mau if mau else None,
        key_feature_adoption=adoption,
        sessions_7d=window_total(state, "sessions", at_ms, 7),
        sessions_30d=window_total(state, "sessions", at_ms, 30),
        orders_30d=orders,
        revenue_30d=revenue,
        average_basket_30d=average_basket(revenue, orders),
        checkout_abandonment_30d=checkout_abandonment_rate(window_total(state, "abandoned_checkouts", at_ms, 30), orders),
        days_since_last_purchase=(at_ms - state.last_purchase_ms) / DAY_MS if state.last_purchase_ms else None,
        open_tickets=len(state.open_tickets),
        urgent_open_tickets=sum(1 for t in state.open_tickets if t.priority == PRIORITIES.index("urgent")),
        mean_resolution_hours=sum(resolutions_hours) / len(resolutions_hours) if resolutions_hours else None,
        p90_resolution_hours=percentile(resolutions_hours, 0.9),
        reopen_rate=state.tickets_reopened / handled * 100 if handled else None,
        nps=nps_value,
        csat=csat(csat_answers),
        ces=customer_effort_score(ces_answers),
        customer_loyalty_index=mean([loyalty_points(r.score, r.scale_min, r.scale_max) for r in answers["cli"]]),
        customer_secure=customer_secure(secure_answers),
        survey_response_rate=_rate_or_none(*invitation_outcomes(state.survey_invites, state.surveys, at_ms - 90 * DAY_MS, at_ms, survey_response_days)),
        days_since_csm_contact=(at_ms - last_contact) / DAY_MS if (last_contact := max(state.contact_ms, state.negative_contact_ms)) else None,
        csm_pulse=state.pulse_rating if state.pulse_rating and at_ms < state.pulse_expires_ms else None,
        needs_fresh_pulse=bool(state.pulse_rating) and at_ms >= state.pulse_expires_ms,
        **_email_kpis(*email_totals(state, at_ms - 90 * DAY_MS, at_ms), state.email_unsubscribed_ms),
        failed_payments_30d=window_total(state, "payments_failed", at_ms, 30),
        overdue_invoices=len(overdue),
        max_days_overdue=max(((at_ms - i.due_ms) / DAY_MS for i in overdue), default=0.0),
        mrr=state.mrr,
        mrr_growth=growth_rate(state.previous_mrr, state.mrr) if state.previous_mrr else None,
        revenue_90d=(revenue_90d := window_total(state, "revenue_cents", at_ms, 90) / 100),
        ltv=customer_lifetime_value(revenue_90d, window_total(state, "purchases", at_ms, 90), 90, churn_risk),
        new_categories_30d=(fresh := new_categories(state, at_ms - 30 * DAY_MS, at_ms)),
        upsell_30d=fresh > 0 and 0 < state.first_purchase_ms < at_ms - 30 * DAY_MS,
        score_change_since_csm_contact=score_change_since_contact(state),
    )


def score_change_since_contact(state: CustomerState) -> float | None:
    """The published score minus the one just before the latest positive or neutral CSM touchpoint."""
    if state.contact_score < 0 or state.published is None:
        return None
    return round(state.published.score - state.contact_score, 2)


# --- The fleet, per period: counts and sums that add up across workers ----------------

MRR_MOVEMENTS: tuple[str, ...] = ("start", "existing_end", "new", "expansion", "contraction", "churned")
COUNTERS_FOR_ACTIVITY: tuple[str, ...] = ("sessions", "feature_uses", "purchases", "tickets_opened", "payments_failed")


@dataclass
class FleetTotals:
    """Counts and sums over the customers one worker owns, for the trailing period.

    Each worker exports its part; Prometheus sums the parts and the dashboards
    compute the ratios (churn rate = lost / active at period start, and so on), so
    several workers add up correctly. Aggregation shape: ``FleetTotals(at, days)``,
    then ``add(state)`` per customer.
    """

    at_ms: int
    period_days: int = 30
    survey_response_days: float = 14.0
    customers: int = 0
    active: int = 0
    active_at_period_start: int = 0
    new_in_period: int = 0
    lost_in_period: int = 0
    buyers: int = 0
    repeat_buyers: int = 0
    bands: dict[str, int] = field(default_factory=lambda: {"healthy": 0, "at_risk": 0, "critical": 0})
    nps: dict[str, int] = field(default_factory=lambda: {"promoter": 0, "passive": 0, "detractor": 0})
    csat_satisfied: int = 0
    csat_answers: int = 0
    ces_sum: float = 0.0
    ces_answers: int = 0
    #: Customer Loyalty Index: points (0-100) of the answers, and how many.
    cli_points_sum: float = 0.0
    cli_answers: int = 0
    #: Customer Secure Index: customers who answered all three questions, and of them the secure.
    csi_answered: int = 0
    csi_secure: int = 0
    resolution_seconds_sum: float = 0.0
    resolutions: int = 0
    mrr: float = 0.0
    #: Orders, revenue and abandoned checkouts in the period (average basket, abandonment, LTV).
    orders: int = 0
    revenue: float = 0.0
    abandoned_checkouts: int = 0
    #: The articles' regular customers: bought in the period, and bought before it or on two days in it.
    regular_customers: int = 0
    #: Customers who answered at least one survey in the period (participation).
    survey_participants: int = 0
    #: MRR movement over the period (the articles' MRR growth: customers paying at its start
    #: only, new customers' revenue apart): start, existing_end, new, expansion, contraction, churned.
    mrr_movement: dict[str, float] = field(default_factory=lambda: dict.fromkeys(MRR_MOVEMENTS, 0.0))
    #: E-mails in the period: sent, opened, clicked; customers e-mailed; customers who unsubscribed.
    emails: dict[str, int] = field(default_factory=lambda: {"sent": 0, "opened": 0, "clicked": 0})
    customers_emailed: int = 0
    customers_unsubscribed: int = 0
    #: Surveys sent in the period answered in time, and missed (their deadline passed unanswered).
    invitations_answered: int = 0
    invitations_missed: int = 0
    #: Upsell: buyers in the period who had bought before it, and of them those who bought a
    #: category new to them in it.
    existing_buyers: int = 0
    upsold: int = 0
    #: Customers whose latest CSM touchpoint (not negative) fell in the period, with a score then,
    #: and the sum of their score changes since (points): did our actions help?
    csm_touched: int = 0
    score_change_since_touchpoint_sum: float = 0.0
    #: Distinct users active in the last 1, 7 and 30 days, summed over customers (DAU, WAU, MAU).
    active_users: dict[str, int] = field(default_factory=lambda: {"1d": 0, "7d": 0, "30d": 0})

    def add(self, state: CustomerState) -> None:
        at = self.at_ms
        period_ms = self.period_days * DAY_MS
        start = at - period_ms
        today = at // DAY_MS
        start_day = start // DAY_MS
        self.customers += 1
        active_now = state.last_event_ms >= start
        cancelled_in_period = bool(state.cancelled_ms) and start <= state.cancelled_ms <= at
        counts = state.counts
        was_active_before = state.first_event_ms < start and (
            any(day_total(counts, name, start_day - self.period_days, start_day - 1) for name in COUNTERS_FOR_ACTIVITY)
            or start - period_ms <= state.last_event_ms < start
        )
        self.active += active_now and not (state.cancelled_ms and state.cancelled_ms <= at)
        self.new_in_period += state.first_event_ms >= start
        if was_active_before:
            self.active_at_period_start += 1
            self.lost_in_period += (not active_now) or cancelled_in_period
        orders = day_total(counts, "purchases", start_day + 1, today)
        self.buyers += orders >= 1
        self.repeat_buyers += orders >= 2
        self.orders += orders
        self.revenue += day_total(counts, "revenue_cents", start_day + 1, today) / 100
        self.abandoned_checkouts += day_total(counts, "abandoned_checkouts", start_day + 1, today)
        bought_before = bool(state.first_purchase_ms) and state.first_purchase_ms < start
        purchase_days_in_period = sum(1 for day, count in zip(counts.days, counts.purchases) if start_day < day <= today and count)
        self.regular_customers += orders >= 1 and (bought_before or purchase_days_in_period >= 2)
        existing = orders >= 1 and bought_before
        self.existing_buyers += existing
        self.upsold += existing and new_categories(state, start, at) > 0
        change = score_change_since_contact(state)
        if change is not None and start <= state.contact_ms <= at:
            self.csm_touched += 1
            self.score_change_since_touchpoint_sum += change
        self.survey_participants += any(start <= response.answered_ms <= at for response in state.surveys)
        answered, missed = invitation_outcomes(state.survey_invites, state.surveys, start, at, self.survey_response_days)
        sent, opened, clicked = email_totals(state, start, at)
        self.emails["sent"] += sent
        self.emails["opened"] += opened
        self.emails["clicked"] += clicked
        self.customers_emailed += sent > 0
        self.customers_unsubscribed += start <= state.email_unsubscribed_ms <= at
        self.invitations_answered += answered
        self.invitations_missed += missed
        for window, days in (("1d", 1), ("7d", 7), ("30d", 30)):
            self.active_users[window] += _active_users(state, at, days)
        if state.published is not None:
            self.bands[state.published.band] = self.bands.get(state.published.band, 0) + 1
        self._add_answers(state, start, at)
        resolved = resolutions_between(state, start_day + 1, today)
        self.resolution_seconds_sum += sum(resolved)
        self.resolutions += len(resolved)
        end_mrr = state.mrr if state.mrr > 0 and not (state.cancelled_ms and state.cancelled_ms <= at) else 0.0
        self.mrr += end_mrr
        self._add_mrr_movement(state, start, end_mrr)


    def _add_mrr_movement(self, state: CustomerState, start: int, end_mrr: float) -> None:
        start_mrr = mrr_at(state, start)
        if start_mrr is None:
            return
        movement = self.mrr_movement
        if start_mrr <= 0:
            movement["new"] += end_mrr
            return
        movement["start"] += start_mrr
        movement["existing_end"] += end_mrr
        if end_mrr == 0:
            movement["churned"] += start_mrr
        elif end_mrr > start_mrr:
            movement["expansion"] += end_mrr - start_mrr
        else:
            movement["contraction"] += start_mrr - end_mrr

    def _add_answers(self, state: CustomerState, start: int, at: int) -> None:
        answers, secure_answers = recent_answers(state.surveys, start, at)
        for response in answers["nps"]:
            scale = (response.scale_min, response.scale_max)
            if (int(scale[0]), int(scale[1])) in NPS_SCALES:
                self.nps[nps_category(response.score, scale)] += 1
        for response in answers["csat"]:
            self.csat_answers += 1
            self.csat_satisfied += as_csat(response) >= 4
        for response in answers["ces"]:
            self.ces_answers += 1
            self.ces_sum += 1 + 6 * answer_share(response)
        for response in answers["cli"]:
            self.cli_answers += 1
            self.cli_points_sum += loyalty_points(response.score, response.scale_min, response.scale_max)
        secure = customer_secure(secure_answers)
        if secure is not None:
            self.csi_answered += 1
            self.csi_secure += secure




def mrr_at(state: CustomerState, at_ms: int) -> float | None:
    """The customer's MRR just before ``at_ms`` from its recorded changes (a cancellation is 0);
    0 before its first change; None when older changes were dropped from the record (its last
    MAX_MRR_CHANGES) and none is left before ``at_ms``. A record written before the changes
    were kept (layout 3 or older) has none: its current MRR stands for the whole period."""
    changes = state.mrr_changes
    if not changes:
        return 0.0 if state.cancelled_ms else state.mrr
    value = None
    for when, mrr in changes:
        if when >= at_ms:
            break
        value = mrr
    if value is None:
        return None if len(changes) >= MAX_MRR_CHANGES else 0.0
    return value
