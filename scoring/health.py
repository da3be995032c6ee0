"""From a customer's record to an explained 0-100 health score, at a given time.

Five components (usage, purchases, support, sentiment, payments), each a
documented function onto 0-100 that is monotone in its drivers, combined with
configured weights (per customer segment if configured). A component with no
data for the customer is left out and its weight spread over the others. Time
is always a parameter, so decay applies when no event arrives. docs/model.md
explains every formula and default.
"""

from __future__ import annotations

import hashlib
import json
import math
from bisect import bisect_left, bisect_right
from dataclasses import asdict, dataclass, field
from typing import Final, Mapping

from scoring.bgnbd import BgNbdParameters, PurchaseHistory, expected_purchases
from scoring.churn import ChurnModel, churn_features, churn_probability
from scoring.state import DAY_MS, DEFAULT_USER_HASH_KEY, CustomerState, SurveyResponse
from scoring.structs import ActivitySums, ComponentScore, HealthScore

__all__ = ["ActivitySums", "ComponentScore", "HealthScore"]

MODEL_REVISION: Final = "6"
COMPONENTS: Final = ("usage", "purchases", "support", "sentiment", "payments", "relationship")
DEFAULT_WEIGHTS: dict[str, float] = {
    "usage": 0.30, "purchases": 0.20, "support": 0.15, "sentiment": 0.15, "payments": 0.20, "relationship": 0.10,
}
#: Penalty in points per open ticket, by priority (low, normal, high, urgent).
OPEN_TICKET_PENALTY: Final = (4.0, 8.0, 15.0, 25.0)


@dataclass(frozen=True)
class ScoringParameters:
    """Plain parameters the scoring needs; the worker builds them from its settings."""

    # dicts, not Mappings: the compiled model reads them with direct dict lookups
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    #: plan name → weights for customers on that plan (from ``subscription.updated`` data.plan).
    segment_weights: dict[str, dict[str, float]] = field(default_factory=dict)
    healthy_min: float = 50.0
    at_risk_min: float = 35.0
    #: A customer with events on fewer distinct days than this is held below ``healthy_min``:
    #: thin evidence cannot make a customer healthy; confidence grows with those days up to
    #: it (docs/model.md, "Confidence"). 0: no such rule.
    healthy_min_active_days: int = 3
    usage_half_life_days: float = 7.0
    key_features: tuple[str, ...] = ()
    purchase_half_life_days: float = 45.0
    bgnbd: BgNbdParameters | None = None
    bgnbd_time_unit_days: float = 1.0
    purchase_outlook_days: float = 30.0
    #: Expected purchases in the outlook period at which the purchase-activity signal is 0.5.
    expected_purchases_midpoint: float = 1.0
    support_target_resolution_hours: float = 48.0
    sentiment_half_life_days: float = 90.0
    #: A survey sent and not answered within this many days counts as an answer of
    #: ``unanswered_survey_points`` in sentiment, from then on (docs/model.md, "sentiment").
    survey_response_days: float = 14.0
    unanswered_survey_points: float = 25.0
    #: Half-life of a CSM touchpoint's weight in the relationship component.
    relationship_half_life_days: float = 30.0
    #: The secret of the users' keyed fingerprints in the record (privacy.hash_key).
    user_hash_key: bytes = DEFAULT_USER_HASH_KEY
    #: A churn model fitted by `healthscore calibrate` ([scoring.churn_risk]); None: the prior.
    churn_model: ChurnModel | None = None

    @property
    def model_version(self) -> str:
        """Changes whenever the model revision or any parameter but the secret changes."""
        fields = asdict(self)
        del fields["user_hash_key"]
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:10]
        return f"{MODEL_REVISION}+{digest}"

    def weights_for(self, plan: str | None) -> dict[str, float]:
        return self.segment_weights.get(plan, self.weights) if plan else self.weights


def activity_sums(state: CustomerState, at_ms: int) -> ActivitySums:
    """One pass over the day buckets of the last 90 days (a loop the compiled module runs in C)."""
    counts = state.counts
    days = counts.days
    today = at_ms // DAY_MS
    end = bisect_right(days, today)
    sessions, features, purchases, failed = counts.sessions, counts.feature_uses, counts.purchases, counts.payments_failed
    activity_7d = activity_30d = activity_60d = activity_90d = orders_30d = orders_90d = failed_30d = 0
    for index in range(bisect_left(days, today - 89, 0, end), end):
        activity = sessions[index] + features[index]
        orders = purchases[index]
        activity_90d += activity
        orders_90d += orders
        age = today - days[index]
        if age < 60:
            activity_60d += activity
            if age < 30:
                activity_30d += activity
                orders_30d += orders
                failed_30d += failed[index]
                if age < 7:
                    activity_7d += activity
    return ActivitySums(
        activity_7d=activity_7d,
        activity_30d=activity_30d,
        activity_60d=activity_60d,
        activity_90d=activity_90d,
        orders_30d=orders_30d,
        orders_90d=orders_90d,
        failed_payments_30d=failed_30d,
    )


def decay(elapsed_ms: float, half_life_days: float) -> float:
    """1 right after the last activity, halving every half-life."""
    if elapsed_ms <= 0:
        return 1.0
    return 0.5 ** (elapsed_ms / (half_life_days * DAY_MS))


def usage_score(state: CustomerState, at_ms: int, sums: ActivitySums, parameters: ScoringParameters) -> float | None:
    """100 × recency × (0.3 + 0.7 × mean of trend, breadth and key-feature adoption)."""
    if not state.last_usage_ms:
        return None
    recency = decay(at_ms - state.last_usage_ms, parameters.usage_half_life_days)
    baseline_week = (sums.activity_90d - sums.activity_7d) / (83 / 7)
    trend = 1.0 if baseline_week <= 0 else min(1.0, sums.activity_7d / baseline_week)
    today = at_ms // DAY_MS
    weekly = monthly = 0
    for last_day in state.users_last_day.values():
        age = today - last_day
        if 0 <= age < 30:
            monthly += 1
            if age < 7:
                weekly += 1
    breadth = weekly / monthly if monthly else 0.0
    if parameters.key_features:
        used = sum(1 for f in parameters.key_features if 0 <= today - state.features_last_day.get(f, -(10**9)) < 30)
        mean = 0.5 * trend + 0.25 * breadth + 0.25 * used / len(parameters.key_features)
    else:
        mean = (0.5 * trend + 0.25 * breadth) / 0.75
    return 100.0 * recency * (0.3 + 0.7 * mean)


def purchase_history(state: CustomerState, at_ms: int, time_unit_days: float) -> PurchaseHistory:
    """BG/NBD statistics from the record: purchase days after the first, recency and age."""
    unit_ms = time_unit_days * DAY_MS
    first_day = state.first_purchase_ms // DAY_MS
    last_day = state.last_purchase_ms // DAY_MS
    repeat = max(0, state.purchase_days - 1)
    t_x = (last_day - first_day) * DAY_MS / unit_ms if repeat else 0.0
    age = max(t_x, (at_ms - first_day * DAY_MS) / unit_ms)
    return PurchaseHistory(repeat, t_x, age)


def expected_purchases_next(state: CustomerState, at_ms: int, parameters: ScoringParameters) -> float | None:
    """BG/NBD expected purchases in the outlook period, for customers without a subscription."""
    if parameters.bgnbd is None or not state.last_purchase_ms or state.mrr > 0:
        return None
    history = purchase_history(state, at_ms, parameters.bgnbd_time_unit_days)
    return expected_purchases(parameters.bgnbd, history, parameters.purchase_outlook_days / parameters.bgnbd_time_unit_days)


def purchase_score(
    state: CustomerState, at_ms: int, sums: ActivitySums, parameters: ScoringParameters, expected: float | None
) -> float | None:
    """100 × weighted mean of recency (0.5), frequency trend (0.25) and expected purchases
    (0.25), ``expected`` being ``expected_purchases_next`` at ``at_ms``."""
    if not state.last_purchase_ms:
        return None
    recency = decay(at_ms - state.last_purchase_ms, parameters.purchase_half_life_days)
    monthly_baseline = sums.orders_90d / 3
    frequency = 0.0 if monthly_baseline == 0 else min(1.0, sums.orders_30d / monthly_baseline)
    if expected is None:
        return 100.0 * (0.5 * recency + 0.25 * frequency) / 0.75
    activity = expected / (expected + parameters.expected_purchases_midpoint)
    return 100.0 * (0.5 * recency + 0.25 * frequency + 0.25 * activity)


def support_score(state: CustomerState, parameters: ScoringParameters) -> float | None:
    """100 − open-ticket load by priority − slow resolution (up to 20) − reopens (up to 20)."""
    handled = state.tickets_resolved + state.tickets_reopened
    if not state.open_tickets and not handled:
        return None
    load = sum(OPEN_TICKET_PENALTY[ticket.priority] for ticket in state.open_tickets)
    slow = 0.0
    if state.resolution_seconds:
        mean_hours = sum(state.resolution_seconds) / len(state.resolution_seconds) / 3600
        slow = 20.0 * min(1.0, mean_hours / (3 * parameters.support_target_resolution_hours))
    reopens = 20.0 * (state.tickets_reopened / handled if handled else 0.0)
    return max(0.0, 100.0 - load - slow - reopens)


def nps_rating(answer: SurveyResponse) -> float:
    """An NPS answer on the 0-10 scale (its own scale, if another was sent, mapped onto it)."""
    return 10.0 * (answer.score - answer.scale_min) / (answer.scale_max - answer.scale_min)


def answer_points(answer: SurveyResponse) -> float:
    """One answer on 0-100. NPS by category, as the NPS itself counts it (promoter 9-10: 100,
    passive 7-8: 50, detractor 0-6: 0); a loyalty-index (cli) answer by the articles' table,
    its scale reversed (1: 100 ... 6: 0); CSAT, CES and CSI linearly on their scale."""
    if answer.survey == "nps":
        rating = nps_rating(answer)
        return 100.0 if rating >= 9.0 else 50.0 if rating >= 7.0 else 0.0
    if answer.survey == "cli":
        return 100.0 * (answer.scale_max - answer.score) / (answer.scale_max - answer.scale_min)
    return 100.0 * (answer.score - answer.scale_min) / (answer.scale_max - answer.scale_min)


def is_detractor(answer: SurveyResponse) -> bool:
    """NPS 0-6, or CSAT 1-2 of 5 (the lowest quarter of its scale): the customers to contact first."""
    if answer.survey == "nps":
        return nps_rating(answer) < 7.0
    if answer.survey == "csat":
        return (answer.score - answer.scale_min) / (answer.scale_max - answer.scale_min) <= 0.25
    return False


def sentiment_score(state: CustomerState, at_ms: int, parameters: ScoringParameters) -> float | None:
    """Recency-weighted mean of survey answers on 0-100, pulled toward a neutral 50 as they age.

    Answers lose half their weight every ``sentiment_half_life_days``; a fixed
    prior of weight 0.25 at 50 points means a customer who stops answering
    drifts back to neutral: silence is not praise.
    """
    answers = [s for s in state.surveys if s.answered_ms <= at_ms]
    missed = unanswered_deadlines(state, at_ms, parameters)
    if not answers and not missed:
        return None
    total = 0.25 * 50.0
    weights = 0.25
    for answer in answers:
        weight = decay(at_ms - answer.answered_ms, parameters.sentiment_half_life_days)
        total += weight * answer_points(answer)
        weights += weight
    for deadline in missed:  # a survey left unanswered: disengagement, counted from its deadline
        weight = decay(at_ms - deadline, parameters.sentiment_half_life_days)
        total += weight * parameters.unanswered_survey_points
        weights += weight
    return total / weights


def survey_kind(response: SurveyResponse) -> str:
    """The survey an answer belongs to (a CSI answer is kept as ``csi.<question>``)."""
    return response.survey.partition(".")[0]


def unanswered_deadlines(state: CustomerState, at_ms: int, parameters: ScoringParameters) -> list[int]:
    """The response deadlines passed by ``at_ms`` of the surveys sent and not answered within
    them (an answer of the same survey between sending and deadline), oldest first."""
    window = int(parameters.survey_response_days * DAY_MS)
    deadlines = []
    for sent_ms, kind in state.survey_invites:
        deadline = sent_ms + window
        if deadline > at_ms:
            continue
        answered = False
        for answer in state.surveys:
            if sent_ms <= answer.answered_ms <= deadline and survey_kind(answer) == kind:
                answered = True
                break
        if not answered:
            deadlines.append(deadline)
    return deadlines


def relationship_score(state: CustomerState, at_ms: int, parameters: ScoringParameters) -> float | None:
    """The customer-success relationship: 100 × the recency of the last CSM touchpoint not
    marked negative (halving every ``relationship_half_life_days``), at most 50 when a negative
    one came after it; with a valid pulse, the mean of that and the pulse (1: 0 ... 5: 100).
    None without a touchpoint or a valid pulse: an expired pulse only flags the customer."""
    valid_pulse = state.pulse_rating > 0 and at_ms < state.pulse_expires_ms
    if not (state.contact_ms or state.negative_contact_ms or valid_pulse):
        return None
    contact = 100.0 * decay(at_ms - state.contact_ms, parameters.relationship_half_life_days) if state.contact_ms else 0.0
    if state.negative_contact_ms > state.contact_ms:
        contact = min(contact, 50.0)
    if valid_pulse:
        return 0.5 * contact + 0.5 * 25.0 * (state.pulse_rating - 1)
    return contact


def needs_fresh_pulse(state: CustomerState, at_ms: int) -> bool:
    """A CSM pulse was given and has expired: the account needs a fresh one."""
    return state.pulse_rating > 0 and at_ms >= state.pulse_expires_ms


def payment_score(state: CustomerState, at_ms: int, sums: ActivitySums) -> float | None:
    """0 once cancelled; else 100 − failures (20 each, up to 60) − overdue (up to 40) − MRR contraction (up to 30)."""
    if not state.has_billing:
        return None
    if state.cancelled_ms and state.cancelled_ms <= at_ms:
        return 0.0
    failures = min(60.0, 20.0 * sums.failed_payments_30d)
    overdue = 0.0
    for invoice in state.unpaid_invoices:
        if invoice.due_ms < at_ms:
            overdue += 10.0 + (at_ms - invoice.due_ms) / DAY_MS
    contraction = 0.0
    if state.previous_mrr > state.mrr:
        contraction = 30.0 * (state.previous_mrr - state.mrr) / state.previous_mrr
    return max(0.0, 100.0 - failures - min(40.0, overdue) - contraction)


def band_for(score: float, parameters: ScoringParameters) -> str:
    if score >= parameters.healthy_min:
        return "healthy"
    if score >= parameters.at_risk_min:
        return "at_risk"
    return "critical"


def churn_risk_for(score: float, weakest_component: float = 100.0) -> float:
    """Logistic in the score, raised by the weakest component.

    z = (45 − score) / 10.2 + 1.5 × (1 − weakest / 100) − 0.75. With every
    component strong, 0.5 is reached near 37 points; one collapsed component
    adds up to 1.5 to the log-odds. Falls as the score or the weakest component rises.
    """
    z = (45.0 - score) / 10.2 + 1.5 * (1.0 - weakest_component / 100.0) - 0.75
    return 1.0 / (1.0 + math.exp(-z))


def days_with_events(state: CustomerState, at_ms: int) -> int:
    """Days with counted events in the 90 days ending at ``at_ms``: the same whatever order the
    events arrived in (``active_days`` counts a day only when it comes after the last one)."""
    days = state.counts.days
    today = at_ms // DAY_MS
    end = bisect_right(days, today)
    return end - bisect_left(days, today - 89, 0, end)


def usage_growth(sums: ActivitySums) -> float | None:
    """Activity of the last 30 days over the 30 days before, minus 1 (None without activity then)."""
    before = sums.activity_60d - sums.activity_30d
    # float() first, as the kernel converts: exact below 2**53, and rounded the same way above
    return float(sums.activity_30d) / float(before) - 1.0 if before > 0 else None


def _component_values(
    state: CustomerState, at_ms: int, parameters: ScoringParameters, expected: float | None, sums: ActivitySums
) -> tuple[float | None, ...]:
    """Each component's score (None without data), in the order of COMPONENTS."""
    return (
        usage_score(state, at_ms, sums, parameters),
        purchase_score(state, at_ms, sums, parameters, expected),
        support_score(state, parameters),
        sentiment_score(state, at_ms, parameters),
        payment_score(state, at_ms, sums),
        relationship_score(state, at_ms, parameters),
    )


def component_scores(state: CustomerState, at_ms: int, parameters: ScoringParameters) -> dict[str, float | None]:
    expected = expected_purchases_next(state, at_ms, parameters)
    return dict(zip(COMPONENTS, _component_values(state, at_ms, parameters, expected, activity_sums(state, at_ms))))


def _weighted_components(
    state: CustomerState, at_ms: int, parameters: ScoringParameters
) -> tuple[list[tuple[str, float, float]], float, float, float | None, ActivitySums]:
    """The components with data as (name, score, weight), their total weight, the weight of
    every component that counts toward confidence, BG/NBD's expectation and the activity sums:
    what ``score_state`` and the due search's ``composite_at`` share."""
    weights = parameters.weights_for(state.plan)
    expected = expected_purchases_next(state, at_ms, parameters)
    sums = activity_sums(state, at_ms)
    values = _component_values(state, at_ms, parameters, expected, sums)
    present: list[tuple[str, float, float]] = []
    total_weight = 0.0
    all_weights = 0.0
    managed = bool(state.contact_ms or state.negative_contact_ms or state.pulse_rating)
    for name, value in zip(COMPONENTS, values):
        weight = weights.get(name, 0)
        if name == "relationship" and not managed:
            continue  # an account no CSM has touched lacks no evidence: its confidence is as before
        all_weights += weight
        if value is not None and weight > 0:
            present.append((name, value, weight))
            total_weight += weight
    return present, total_weight, all_weights, expected, sums


def capped(state: CustomerState, composite: float, at_ms: int, parameters: ScoringParameters) -> float:
    """The composite clamped to 0-100 and capped: below healthy on thin evidence (fewer than
    healthy_min_active_days active days), below at-risk once a cancellation takes effect."""
    composite = min(100.0, max(0.0, composite))
    if state.active_days < parameters.healthy_min_active_days:
        composite = min(composite, parameters.healthy_min - 0.01)
    if state.cancelled_ms and state.cancelled_ms <= at_ms:
        composite = min(composite, parameters.at_risk_min - 0.01)
    return composite


#: What the due search reads of a score: each component's (score, share of the weight), the
#: score as published (capped, rounded) and BG/NBD's expected purchases.
Composite = tuple[dict[str, tuple[float, float]], float, float | None]


def composite_at(state: CustomerState, at_ms: int, parameters: ScoringParameters) -> Composite | None:
    """``score_state``'s components and score at ``at_ms`` without what only a published score
    needs (explanation, churn risk, confidence): the due search probes a customer several times
    (scoring/due.py). None while no component has data."""
    present, total_weight, _all_weights, expected, _sums = _weighted_components(state, at_ms, parameters)
    if not present:
        return None
    shares: dict[str, tuple[float, float]] = {}
    composite = 0.0
    for name, value, weight in present:
        share = weight / total_weight
        composite += share * value  # summed as score_state sums: the same float
        shares[name] = (value, share)
    return shares, round(capped(state, composite, at_ms, parameters), 2), expected


def score_state(
    state: CustomerState,
    at_ms: int,
    parameters: ScoringParameters,
    previous_contributions: dict[str, float] | None = None,
    previous_score: float | None = None,
) -> HealthScore | None:
    """The customer's health at ``at_ms``; None while no component has data.

    With the previous score's contributions, the result also carries the change
    of each component since then (see ``explain``).
    """
    present, total_weight, all_weights, expected, sums = _weighted_components(state, at_ms, parameters)
    if not present:
        return None
    components: dict[str, ComponentScore] = {}
    changes: list[tuple[float, str, float]] = []
    before = previous_contributions or {}
    composite = 0.0
    weakest = 100.0
    for name, value, weight in present:
        share = weight / total_weight
        contribution = share * value
        composite += contribution
        components[name] = ComponentScore(value, share, contribution)
        change = contribution - before.get(name, 0.0)
        changes.append((-abs(change), name, change))
        if value < weakest:
            weakest = value
    for name, contribution in before.items():
        if name not in components:
            changes.append((-abs(contribution), name, -contribution))
    composite = capped(state, composite, at_ms, parameters)
    confidence = total_weight / all_weights
    if state.active_days < parameters.healthy_min_active_days:  # thin evidence
        confidence *= state.active_days / parameters.healthy_min_active_days
    cancelled = bool(state.cancelled_ms) and state.cancelled_ms <= at_ms
    score = round(composite, 2)
    model = parameters.churn_model
    if model is None:
        risk = churn_risk_for(composite, weakest)
    else:
        features = churn_features(score, components, confidence, at_ms - state.last_event_ms, days_with_events(state, at_ms))
        risk = churn_probability(model, features)
    return HealthScore(
        score=score,
        band=band_for(score, parameters),  # the score shown: 49.999... is 50.0, and healthy (revision 6)
        churn_risk=round(risk, 4),
        components=components,
        as_of_ms=at_ms,
        confidence=confidence,
        changes=_largest_first(changes),
        previous_score=previous_score,
        expected_purchases=expected,
        cancelled_ms=state.cancelled_ms if cancelled else 0,
        cancellation_reason=state.cancellation_reason if cancelled else None,
        mrr=state.mrr,
        usage_growth=usage_growth(sums) if state.last_usage_ms else None,
        churn_risk_horizon_days=model.horizon_days if model is not None else None,
        needs_fresh_pulse=needs_fresh_pulse(state, at_ms),
    )


def explain(previous_contributions: Mapping[str, float] | None, current: HealthScore) -> dict[str, float]:
    """Each component's change in points of the total since the previous score, largest first.

    A component that appeared counts from 0; one that disappeared counts to 0.
    """
    return _changes(previous_contributions, current.components)


def _changes(before: Mapping[str, float] | None, components: Mapping[str, ComponentScore]) -> dict[str, float]:
    before = before or {}
    changes: list[tuple[float, str, float]] = []
    for name, component in components.items():
        change = component.contribution - before.get(name, 0.0)
        changes.append((-abs(change), name, change))
    for name, contribution in before.items():
        if name not in components:
            changes.append((-abs(contribution), name, -contribution))
    return _largest_first(changes)


def _largest_first(changes: list[tuple[float, str, float]]) -> dict[str, float]:
    """(−|change|, component, change) entries → component: change, largest first (ties by name)."""
    changes.sort()
    return {name: change for _, name, change in changes}


def has_changed(
    previous_score: float | None,
    previous_band: str | None,
    current: HealthScore,
    previous_components: Mapping[str, float] | None = None,
) -> bool:
    """A score is republished when its rounded value, its band, the set of components with data,
    or a component's contribution (to the published hundredth) moves: under a cap (thin
    evidence, a cancellation) the score stays put while what it is made of changes."""
    if previous_score is None or previous_score != current.score or previous_band != current.band:
        return True
    if previous_components is None:
        return False
    if previous_components.keys() != current.components.keys():
        return True
    for name, component in current.components.items():
        if round(component.contribution, 2) != round(previous_components[name], 2):
            return True
    return False
