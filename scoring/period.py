"""The fleet's KPIs over one period, from the events themselves (``healthscore kpis``).

The worker's fleet metrics are trailing windows read off state records; an analyst asks
about a given month or year of history, with the articles' definitions. Here every KPI is
computed from the events' own dates, so a figure can be windowed exactly (a ticket solved
before the period does not count in its resolution time). Pure: the period and the events
come in, numbers go out; ``None`` where the data does not allow a figure.

Aggregation shape: ``PeriodKpis(period)``, ``add(customer_events)`` once per customer (its
events in any order), ``result()``. Definitions (docs/model.md, "KPIs of a period"):

- a customer **at a time t** has had an event before t, is not cancelled at t, and either
  pays a subscription at t or had an event in the period-long window before t;
- **retained**: a customer at the start who is still one at the end having had an event in
  the period, or still subscribed; **lost**: at the start, not retained; **new**: first event
  in the period; **returning**: neither at the start nor new, but a customer at the end (came
  back after a gap). Retention = retained / at start, never above 100 %: returning customers
  count at the end, not as retained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

from scoring import kpis
from scoring.contract import (
    CheckoutAbandoned,
    CsmPulse,
    EmailClicked,
    EmailEvent,
    EmailOpened,
    EmailSent,
    EmailUnsubscribed,
    Event,
    PurchaseCompleted,
    SubscriptionCancelled,
    SubscriptionUpdated,
    SurveyAnswered,
    SurveySent,
    TicketOpened,
    TicketReopened,
    TicketResolved,
    UsageFeature,
    UsageSession,
    DEFAULT_SURVEY_SCALES,
)
from scoring.structs import SurveyResponse

DAY_MS = 86_400_000


@dataclass(frozen=True)
class Period:
    """[start_ms, end_ms): the first day's start to the day after the last day."""

    start_ms: int
    end_ms: int
    acquisition_spend: float | None = None
    #: A survey sent and not answered within this many days is missed (scoring.survey_response_days).
    survey_response_days: float = 14.0

    def __post_init__(self) -> None:
        if self.end_ms <= self.start_ms:
            raise ValueError("the period must end after it starts")
        if self.acquisition_spend is not None and not (math.isfinite(self.acquisition_spend) and self.acquisition_spend >= 0):
            raise ValueError(f"acquisition spend must be a non-negative amount, got {self.acquisition_spend}")

    @property
    def length_ms(self) -> int:
        return self.end_ms - self.start_ms


@dataclass
class _Subscription:
    """MRR over time: (time, mrr) steps, a cancellation being a step to 0."""

    steps: list[tuple[int, float, bool]] = field(default_factory=list)

    def at(self, at_ms: int) -> tuple[float, bool]:
        """(MRR, cancelled) just before ``at_ms``."""
        mrr, cancelled = 0.0, False
        for when, value, is_cancellation in self.steps:
            if when >= at_ms:
                break
            mrr, cancelled = value, is_cancellation
        return mrr, cancelled


def _customer_at(times: list[int], subscription: _Subscription, at_ms: int, window_ms: int) -> bool:
    mrr, cancelled = subscription.at(at_ms)
    if cancelled or not times or times[0] >= at_ms:
        return False
    return mrr > 0 or any(at_ms - window_ms <= t < at_ms for t in times)


@dataclass
class PeriodKpis:
    period: Period
    customers_at_start: int = 0
    customers_at_end: int = 0
    new_customers: int = 0
    retained: int = 0
    returning_customers: int = 0
    active_in_period: int = 0
    activated: int = 0
    buyers: int = 0
    repeat_buyers: int = 0
    regular_customers: int = 0
    existing_buyers: int = 0
    upsold: int = 0
    orders: int = 0
    revenue: float = 0.0
    abandoned: int = 0
    frequency_sum: float = 0.0
    mrr_start: float = 0.0
    mrr_end: float = 0.0
    mrr_end_existing: float = 0.0
    mrr_new: float = 0.0
    mrr_expansion: float = 0.0
    mrr_contraction: float = 0.0
    mrr_churned: float = 0.0
    answers: dict[str, list[SurveyResponse]] = field(default_factory=lambda: {"nps": [], "csat": [], "ces": [], "cli": []})
    csi_answered: int = 0
    csi_secure: int = 0
    participants: int = 0
    invitations_answered: int = 0
    invitations_missed: int = 0
    emails_sent: int = 0
    emails_opened: int = 0
    emails_clicked: int = 0
    customers_emailed: int = 0
    customers_unsubscribed: int = 0
    resolution_hours: list[float] = field(default_factory=list)
    #: CSAT answers that name the touchpoint they rate: touchpoint → [satisfied, answers].
    csat_by_touchpoint: dict[str, list[int]] = field(default_factory=dict)
    users_by_last_day: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, events: Iterable[Event]) -> None:
        """One customer's events (any order; repeated event ids count once)."""
        unique = {event.event_id: event for event in events}
        ordered = sorted(unique.values(), key=lambda event: (event.occurred_at_ms, event.event_id))
        if not ordered:
            return
        start, end, window = self.period.start_ms, self.period.end_ms, self.period.length_ms
        subscription = _Subscription()
        for event in ordered:
            if isinstance(event.data, SubscriptionUpdated):
                subscription.steps.append((event.occurred_at_ms, event.data.mrr, False))
            elif isinstance(event.data, SubscriptionCancelled):
                subscription.steps.append((event.occurred_at_ms, 0.0, True))
        # Surveys sent and CSM pulses are the company's acts: they do not make a customer active.
        own = [event for event in ordered if not isinstance(event.data, (SurveySent, CsmPulse, EmailEvent))]
        self._add_emails(ordered)
        if not own:
            self._add_invitations(ordered)
            return
        times = [event.occurred_at_ms for event in own]
        in_period = [event for event in own if start <= event.occurred_at_ms < end]
        at_start = _customer_at(times, subscription, start, window)
        at_end = _customer_at(times, subscription, end, window)
        new = start <= times[0] < end
        self.customers_at_start += at_start
        self.customers_at_end += at_end
        self.new_customers += new
        self.retained += at_start and at_end
        self.returning_customers += at_end and not at_start and not new
        self.active_in_period += bool(in_period)
        self._add_purchases(ordered, in_period, new)
        self._add_revenue(subscription, at_start, at_end)
        self._add_answers(own[0].customer_id, in_period)
        self._add_invitations(ordered)
        self._add_resolutions(ordered)

    def _add_purchases(self, ordered: list[Event], in_period: list[Event], new: bool) -> None:
        start = self.period.start_ms
        purchases = [event for event in in_period if isinstance(event.data, PurchaseCompleted)]
        earlier = [event for event in ordered if isinstance(event.data, PurchaseCompleted) and event.occurred_at_ms < start]
        purchase_days = {event.occurred_at_ms // DAY_MS for event in purchases}
        self.orders += len(purchases)
        self.revenue += sum(event.data.amount for event in purchases)  # type: ignore[union-attr]
        self.abandoned += sum(1 for event in in_period if isinstance(event.data, CheckoutAbandoned))
        self.activated += new and bool(purchases or any(isinstance(e.data, SubscriptionUpdated) and e.data.mrr > 0 for e in in_period))
        if not purchases:
            return
        self.buyers += 1
        self.frequency_sum += len(purchases)
        self.repeat_buyers += len(purchase_days) >= 2
        # The articles' regular customers: existing ones who bought again, new ones who bought more than once.
        self.regular_customers += bool(earlier) or len(purchase_days) >= 2
        if earlier:
            self.existing_buyers += 1
            before = {item.category for event in earlier for item in event.data.items if item.category}  # type: ignore[union-attr]
            now = {item.category for event in purchases for item in event.data.items if item.category}  # type: ignore[union-attr]
            self.upsold += bool(now - before)

    def _add_revenue(self, subscription: _Subscription, at_start: bool, at_end: bool) -> None:
        mrr_start, _ = subscription.at(self.period.start_ms)
        mrr_end, cancelled_end = subscription.at(self.period.end_ms)
        mrr_end = 0.0 if cancelled_end else mrr_end
        mrr_start = mrr_start if at_start else 0.0
        self.mrr_start += mrr_start
        self.mrr_end += mrr_end
        if mrr_start > 0:
            self.mrr_end_existing += mrr_end
            if mrr_end == 0:
                self.mrr_churned += mrr_start
            else:
                self.mrr_expansion += max(0.0, mrr_end - mrr_start)
                self.mrr_contraction += max(0.0, mrr_start - mrr_end)
        else:
            self.mrr_new += mrr_end

    def _add_answers(self, customer_id: str, in_period: list[Event]) -> None:
        responses = []
        for event in in_period:
            data = event.data
            if isinstance(data, SurveyAnswered):
                low, high = data.scale or DEFAULT_SURVEY_SCALES[data.survey]
                kind = f"csi.{data.question}" if data.survey == "csi" else data.survey
                responses.append(SurveyResponse(kind, data.score, low, high, event.occurred_at_ms))
                if data.survey == "csat" and data.touchpoint:
                    counts = self.csat_by_touchpoint.setdefault(data.touchpoint, [0, 0])
                    counts[0] += kpis.as_csat(responses[-1]) >= 4
                    counts[1] += 1
            elif isinstance(data, (UsageSession, UsageFeature)):
                key = (customer_id, data.user_id)
                self.users_by_last_day[key] = max(self.users_by_last_day.get(key, 0), event.occurred_at_ms // DAY_MS)
        self.participants += bool(responses)
        answers, secure = kpis.recent_answers(responses, self.period.start_ms, self.period.end_ms - 1)
        for survey, given in answers.items():
            self.answers[survey].extend(given)
        status = kpis.customer_secure(secure)
        if status is not None:
            self.csi_answered += 1
            self.csi_secure += status

    def _add_emails(self, ordered: list[Event]) -> None:
        """E-mails of the period: sent, opened, clicked; whether the customer was e-mailed, unsubscribed."""
        start, end = self.period.start_ms, self.period.end_ms
        in_period = [event.data for event in ordered if isinstance(event.data, EmailEvent) and start <= event.occurred_at_ms < end]
        sent = sum(1 for data in in_period if isinstance(data, EmailSent))
        self.emails_sent += sent
        self.emails_opened += sum(1 for data in in_period if isinstance(data, EmailOpened))
        self.emails_clicked += sum(1 for data in in_period if isinstance(data, EmailClicked))
        self.customers_emailed += sent > 0
        self.customers_unsubscribed += any(isinstance(data, EmailUnsubscribed) for data in in_period)

    def _add_invitations(self, ordered: list[Event]) -> None:
        """Surveys sent in the period: answered in time, or missed by the period's end."""
        invites = [(event.occurred_at_ms, event.data.survey) for event in ordered if isinstance(event.data, SurveySent)]
        if not invites:
            return
        answers = []
        for event in ordered:
            data = event.data
            if isinstance(data, SurveyAnswered):
                answers.append(SurveyResponse(data.survey, data.score, 0.0, 1.0, event.occurred_at_ms))
        answered, missed = kpis.invitation_outcomes(invites, answers, self.period.start_ms, self.period.end_ms - 1, self.period.survey_response_days)
        self.invitations_answered += answered
        self.invitations_missed += missed

    def _add_resolutions(self, ordered: list[Event]) -> None:
        """Open → resolved times of the tickets resolved in the period (a reopened ticket
        counts again from its reopening, as the worker counts it)."""
        opened: dict[str, int] = {}
        for event in ordered:
            data = event.data
            if isinstance(data, (TicketOpened, TicketReopened)):
                opened.setdefault(data.ticket_id, event.occurred_at_ms)
            elif isinstance(data, TicketResolved) and data.ticket_id in opened:
                opened_ms = opened.pop(data.ticket_id)
                if self.period.start_ms <= event.occurred_at_ms < self.period.end_ms:
                    self.resolution_hours.append((event.occurred_at_ms - opened_ms) / 3_600_000)

    def result(self) -> dict[str, float | int | None]:
        return _result(self)


def _rate(part: float, whole: float) -> float | None:
    return None if whole == 0 else part / whole * 100


def _result(k: PeriodKpis) -> dict[str, float | int | None]:
    churn = _rate(k.customers_at_start - k.retained, k.customers_at_start)
    lifetime = kpis.customer_lifetime(churn)
    lifetime = None if lifetime is None or math.isinf(lifetime) else lifetime
    basket = kpis.average_basket(k.revenue, k.orders)
    frequency = k.frequency_sum / k.buyers if k.buyers else None
    ltv = basket * frequency * lifetime if basket is not None and frequency is not None and lifetime is not None else None
    spend = k.period.acquisition_spend
    cac = spend / k.new_customers if spend is not None and k.new_customers else None
    end_day = (k.period.end_ms - 1) // DAY_MS
    dau, wau, mau = (sum(1 for day in k.users_by_last_day.values() if end_day - days < day <= end_day) for days in (1, 7, 30))
    answers = k.answers
    return {
        "customers_at_start": k.customers_at_start,
        "customers_at_end": k.customers_at_end,
        "new_customers": k.new_customers,
        "lost_customers": k.customers_at_start - k.retained,
        "returning_customers": k.returning_customers,
        "retention_rate": _rate(k.retained, k.customers_at_start),
        "churn_rate": churn,
        "customer_lifetime_periods": lifetime,
        "repurchase_rate": _rate(k.repeat_buyers, k.buyers),
        "repurchase_rate_per_customer": _rate(k.repeat_buyers, k.active_in_period),
        "loyal_customer_rate": _rate(k.regular_customers, k.active_in_period),
        "average_basket": basket,
        "average_spend_per_customer": k.revenue / k.buyers if k.buyers else None,
        "upsell_rate": _rate(k.upsold, k.existing_buyers),
        "upsell_rate_per_customer": _rate(k.upsold, k.active_in_period),
        "checkout_abandonment_rate": kpis.checkout_abandonment_rate(k.abandoned, k.orders),
        "ltv": ltv,
        "cac": cac,
        "ltv_to_cac": kpis.ltv_to_cac(ltv, cac) if ltv is not None and cac else None,
        "acquisition_rate": _rate(k.new_customers, k.customers_at_start),
        "activation_rate": _rate(k.activated, k.new_customers),
        "mrr_start": k.mrr_start,
        "mrr_end": k.mrr_end,
        "mrr_growth_rate": kpis.growth_rate(k.mrr_start, k.mrr_end_existing),
        "mrr_new": k.mrr_new,
        "mrr_expansion": k.mrr_expansion,
        "mrr_contraction": k.mrr_contraction,
        "mrr_churned": k.mrr_churned,
        "nps": _nps(answers["nps"]),
        "csat": kpis.csat([kpis.as_csat(r) for r in answers["csat"]]),
        "ces": kpis.customer_effort_score([1 + 6 * kpis.answer_share(r) for r in answers["ces"]]),
        "customer_loyalty_index": kpis.mean([kpis.loyalty_points(r.score, r.scale_min, r.scale_max) for r in answers["cli"]]),
        "customer_secure_rate": kpis.customer_secure_rate(k.csi_secure, k.csi_answered),
        "participation_rate": _rate(k.participants, k.active_in_period),
        "survey_response_rate": _rate(k.invitations_answered, k.invitations_answered + k.invitations_missed),
        "csat_by_touchpoint": _csat_by_touchpoint(k.csat_by_touchpoint),
        "email_open_rate": kpis.share(k.emails_opened, k.emails_sent),
        "email_click_rate": kpis.share(k.emails_clicked, k.emails_sent),
        "email_reactivity_rate": kpis.share(k.emails_clicked, k.emails_opened),
        "email_unsubscribe_rate": kpis.share(k.customers_unsubscribed, k.customers_emailed),
        "solicitations_per_customer": k.emails_sent / k.customers_emailed if k.customers_emailed else None,
        "mean_time_to_resolution_hours": kpis.mean(k.resolution_hours),
        "dau": dau,
        "wau": wau,
        "mau": mau,
        "stickiness": dau / mau if mau else None,
    }


#: Touchpoints shown by name in ``csat_by_touchpoint`` (the most answered); the rest are ``other``.
MAX_TOUCHPOINTS = 20


def _csat_by_touchpoint(counts: dict[str, list[int]]) -> dict[str, dict[str, float | int]] | None:
    """CSAT (%) and answers per touchpoint rated (``survey.answered`` ``touchpoint``), the
    MAX_TOUCHPOINTS most answered by name; None when no answer names one."""
    if not counts:
        return None
    ranked = sorted(counts.items(), key=lambda item: (-item[1][1], item[0]))
    shown: dict[str, list[int]] = {name: list(value) for name, value in ranked[:MAX_TOUCHPOINTS]}
    for _, (satisfied, answers) in ranked[MAX_TOUCHPOINTS:]:
        other = shown.setdefault("other", [0, 0])
        other[0] += satisfied
        other[1] += answers
    return {name: {"csat": satisfied / answers * 100, "answers": answers} for name, (satisfied, answers) in shown.items()}


def _nps(responses: list[SurveyResponse]) -> float | None:
    known = [r for r in responses if (int(r.scale_min), int(r.scale_max)) in kpis.NPS_SCALES]
    categories = [kpis.nps_category(r.score, (r.scale_min, r.scale_max)) for r in known]
    return (categories.count("promoter") - categories.count("detractor")) / len(categories) * 100 if categories else None
