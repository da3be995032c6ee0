"""Churn-risk alert rules: timely, explained, never twice for one episode.

Each rule watches a condition on the customer's score and state. A rule whose
condition becomes true opens an *episode*; the alert for it has an id derived
from (customer, rule, episode start), so reprocessing the same events yields
the same id. While the condition stays true no new alert is raised; when it
clears, the episode closes. A new episode within the cooldown of the rule's
last alert is suppressed (and counted). All of it lives in the customer's
record, so it is restored with the state after a crash or a rebalance.
"""

from __future__ import annotations

import hashlib
import time
from bisect import bisect_left
from dataclasses import dataclass
from typing import Final

import msgspec

from scoring.contract import DEFAULT_SURVEY_SCALES, Event, SurveyAnswered
from scoring.health import HealthScore, ScoringParameters, band_for, expected_purchases_next, is_detractor
from scoring.state import DAY_MS, CustomerState, SurveyResponse, window_total
from scoring.structs import NO_DECISION, Alert, AlertDecision, Reason

__all__ = ["NO_DECISION", "Alert", "AlertDecision", "Reason"]

RULES: Final = ("band_downgrade", "sharp_drop", "purchase_activity", "payment_trouble", "cancellation", "silence", "detractor")
BAND_RANK: Final = {"healthy": 0, "at_risk": 1, "critical": 2}
HOUR_MS: Final = 3_600_000
BUDGET_WINDOW_MS: Final = 30 * DAY_MS
#: Rules with one alert per event (each answer its own episode): the cooldown does not hold them back.
PER_EVENT_RULES: Final = ("detractor",)
#: Alerts raised at the same moment are taken in this order when the budget has room for only some.
SEVERITY_RANK: Final = {"critical": 0, "warning": 1}


@dataclass(frozen=True)
class Action:
    """A playbook's step ([alerts.actions]): for alerts of ``rule`` (and, when set, of this
    severity and band), what to do, who does it, and within how many hours."""

    rule: str
    action: str
    owner: str
    due_hours: float
    severity: str | None = None
    band: str | None = None


#: The defaults, from the source articles' action plans (docs/alerts.md, "Actions").
DEFAULT_ACTIONS: Final = (
    Action("detractor", "Contact the customer about their answer: thank them, ask what went wrong and agree on a fix", "csm", 48.0),
    Action("silence", "Call the customer: their usage stopped; find out why and help them back to the product", "csm", 72.0),
    Action("band_downgrade", "Review what moved the score and plan an action with the customer", "csm", 120.0),
    Action("band_downgrade", "Call the customer this week: review what moved the score and agree on a rescue plan", "csm", 48.0, severity="critical"),
    Action("payment_trouble", "Check billing with the customer: failed or overdue payments, card and invoice details", "billing", 48.0),
    Action("cancellation", "Hold an exit interview: ask why they left and what would bring them back", "csm", 72.0),
    Action("purchase_activity", "Reach out with an offer that fits their past purchases", "marketing", 120.0),
    Action("sharp_drop", "Look at what changed (tickets, payments, answers) and contact the customer", "csm", 48.0),
    Action("digest", "Read the day's summary and act on what needs it", "csm", 24.0),
)


def action_for(actions: tuple[Action, ...], rule: str, severity: str, band: str) -> Action | None:
    """The most specific action for an alert (rule, then severity and band if set); the first of equals."""
    chosen = None
    best = -1
    for action in actions:
        if action.rule != rule or action.severity not in (None, severity) or action.band not in (None, band):
            continue
        specificity = (action.severity is not None) + (action.band is not None)
        if specificity > best:
            chosen, best = action, specificity
    return chosen


@dataclass(frozen=True)
class AlertParameters:
    """Thresholds of the rules; each rule can be switched off."""

    band_downgrade: bool = True
    #: Going back up a band needs the score to clear the band edge by this many points.
    hysteresis_points: float = 5.0
    sharp_drop: bool = False
    sharp_drop_points: float = 15.0
    sharp_drop_window_days: float = 7.0
    purchase_activity: bool = True
    #: Alert when BG/NBD expects fewer purchases than this in the outlook period.
    purchase_activity_min_expected: float = 0.2
    #: Without BG/NBD: a customer without a subscription lapses when it has not bought for longer
    #: than this many times its usual gap between purchase days (and ``purchase_lapse_min_days``),
    #: once it has ``purchase_lapse_min_purchases`` purchase days.
    purchase_lapse_gap_multiplier: float = 4.0
    purchase_lapse_min_days: float = 14.0
    purchase_lapse_min_purchases: int = 3
    payment_trouble: bool = False
    payment_failures_30d: int = 2
    payment_overdue_days: float = 7.0
    cancellation: bool = True
    #: A band fall that time alone caused is alerted once the customer has been silent for
    #: longer than this many times its usual gap between active days (and ``silence_min_days``).
    time_band_gap_multiplier: float = 2.0
    silence: bool = True
    #: Silent for longer than this many times the customer's usual gap between active days (over
    #: the 90 days before its last event)...
    silence_gap_multiplier: float = 4.0
    #: ...and at least this many days...
    silence_min_days: float = 3.0
    #: ...once the customer has this many active days of history.
    silence_min_active_days: int = 3
    #: A new episode of a rule within this long of the rule's last alert for the customer is suppressed.
    cooldown_hours: float = 24.0
    #: At most this many alerts per customer in any 30 days (0: no limit); simultaneous ones
    #: are taken critical first, the rest suppressed.
    max_alerts_per_customer_30d: int = 1
    #: Rules whose alerts are not sent one by one but summarised per customer per day, in one
    #: alert of rule and severity ``digest`` (outside the budget).
    digest_rules: tuple[str, ...] = ()
    #: An NPS answer of 0-6 or a CSAT of 1-2 (of 5): one alert per answer.
    detractor: bool = True
    #: The recommended action of each alert (the first, most specific match).
    actions: tuple[Action, ...] = DEFAULT_ACTIONS

    def enabled(self, rule: str) -> bool:
        return bool(getattr(self, rule))


def alert_id(customer_id: str, rule: str, episode: str) -> str:
    """Deterministic per episode of one rule for one customer."""
    return hashlib.sha256(f"{customer_id}\x1f{rule}\x1f{episode}".encode()).hexdigest()[:32]


#: When a lasting condition holds: its severity, and its detail as a template and values,
#: formatted only when an episode opens (a condition usually holds for many events).
Holding = tuple[str, str, tuple]

#: The components time lowers without any event (recency and answers fading); the others fall through events.
DECAYING_COMPONENTS: Final = ("usage", "purchases", "sentiment", "relationship")


def fell_by_time(health: HealthScore) -> bool:
    """Whether the fall since the previous score came more from decay than from events."""
    decayed = fell = 0.0
    for name, change in health.changes.items():
        if change < 0:
            if name in DECAYING_COMPONENTS:
                decayed -= change
            else:
                fell -= change
    return decayed > fell


def baseline_gap_days(state: CustomerState) -> float | None:
    """The customer's mean gap between active days over the 90 days before its last event (or
    its history, if shorter): a long baseline, so a customer slowly going quiet does not
    lower its own bar as it goes."""
    last_day = state.last_event_ms // DAY_MS
    first_day = max(last_day - 89, state.first_event_ms // DAY_MS)
    days = state.counts.days
    active = len(days) - bisect_left(days, first_day)
    if active < 2:
        return None
    return (last_day - first_day + 1) / active


def unusual_silence(state: CustomerState, at_ms: int, rules: AlertParameters, multiplier: float) -> tuple[float, float] | None:
    """(days without an event, usual gap in days) when the customer has been silent for longer
    than ``multiplier`` times its own usual gap (and at least ``silence_min_days``)."""
    gap = baseline_gap_days(state)
    if gap is None or state.active_days < rules.silence_min_active_days:
        return None
    silent_days = (at_ms - state.last_event_ms) / DAY_MS
    if silent_days > max(rules.silence_min_days, multiplier * gap):
        return silent_days, gap
    return None


def _sharp_drop(state: CustomerState, health: HealthScore, at_ms: int, rules: AlertParameters) -> Holding | None:
    """The score fell ``sharp_drop_points`` below its peak of the window, and events made it fall."""
    since = at_ms - rules.sharp_drop_window_days * DAY_MS
    peak = None
    for day_ms, score in state.recent_scores:
        if day_ms >= since and (peak is None or score > peak):
            peak = score
    if peak is None or peak - health.score < rules.sharp_drop_points or fell_by_time(health):
        return None
    return ("warning", "score fell {:.1f} points from {:.1f} within {:g} days", (peak - health.score, peak, rules.sharp_drop_window_days))


def purchase_lapse(state: CustomerState, at_ms: int, rules: AlertParameters) -> tuple[float, float] | None:
    """(days without a purchase, usual gap in days) when a customer without a subscription has not
    bought for longer than ``purchase_lapse_gap_multiplier`` times its usual gap between purchase
    days (and at least ``purchase_lapse_min_days``)."""
    if state.mrr > 0 or state.cancelled_ms or state.purchase_days < rules.purchase_lapse_min_purchases:
        return None
    gap = (state.last_purchase_ms // DAY_MS - state.first_purchase_ms // DAY_MS) / (state.purchase_days - 1)
    silent_days = (at_ms - state.last_purchase_ms) / DAY_MS
    if silent_days > max(rules.purchase_lapse_min_days, rules.purchase_lapse_gap_multiplier * gap):
        return silent_days, gap
    return None


def _payment_trouble(state: CustomerState, at_ms: int, rules: AlertParameters) -> Holding | None:
    if not state.has_billing:  # no payment events: nothing to check
        return None
    failures = window_total(state, "payments_failed", at_ms, 30)
    overdue_days = (at_ms - min(invoice.due_ms for invoice in state.unpaid_invoices)) / DAY_MS if state.unpaid_invoices else 0.0
    failing = failures >= rules.payment_failures_30d
    overdue = overdue_days > rules.payment_overdue_days
    if failing and overdue:
        return ("warning", "{} failed payments in 30 days and an invoice {:.0f} days overdue", (failures, overdue_days))
    if failing:
        return ("warning", "{} failed payments in 30 days", (failures,))
    if overdue:
        return ("warning", "an invoice {:.0f} days overdue", (overdue_days,))
    return None


def _conditions(
    state: CustomerState,
    health: HealthScore | None,
    expected: float | None,
    at_ms: int,
    scoring: ScoringParameters,
    rules: AlertParameters,
    by_time: bool,
) -> dict[str, Holding | None]:
    """rule → (severity, detail template, values) when its lasting condition holds now, else None.
    ``expected``: BG/NBD's expected purchases at ``at_ms`` (None without BG/NBD). A sharp drop
    is about events: time alone (``by_time``, a sweep) leaves its episode as it is."""
    found: dict[str, Holding | None] = {}
    if rules.sharp_drop and not by_time and health is not None:
        found["sharp_drop"] = _sharp_drop(state, health, at_ms, rules)
    if rules.purchase_activity:
        if expected is not None:
            found["purchase_activity"] = (
                ("warning", "expected purchases in the next {:g} days: {:.2f}", (scoring.purchase_outlook_days, expected))
                if expected < rules.purchase_activity_min_expected
                else None
            )
        else:  # no BG/NBD: the customer's own purchase rhythm
            lapse = purchase_lapse(state, at_ms, rules)
            found["purchase_activity"] = ("warning", "no purchase for {:.0f} days; usually every {:.1f} days", lapse) if lapse else None
    if rules.payment_trouble:
        found["payment_trouble"] = _payment_trouble(state, at_ms, rules)
    if rules.silence:
        subscribed = state.mrr > 0 and not (state.cancelled_ms and state.cancelled_ms <= at_ms)
        silence = unusual_silence(state, at_ms, rules, rules.silence_gap_multiplier) if subscribed else None
        found["silence"] = ("warning", "no events for {:.1f} days; usually every {:.1f} days", silence) if silence is not None else None
    return found


def conditions_holding(
    state: CustomerState, expected: float | None, at_ms: int, scoring: ScoringParameters, rules: AlertParameters
) -> frozenset[str]:
    """The lasting conditions (purchase activity, payment trouble, silence) holding at ``at_ms``
    as a sweep sees them; ``expected``: BG/NBD's expected purchases then (scoring/due.py)."""
    return frozenset(rule for rule, holds in _conditions(state, None, expected, at_ms, scoring, rules, True).items() if holds is not None)


#: An alert about to be raised: (rule, episode, severity, detail).
Opened = tuple[str, str, str, str]


def _cancellation(state: CustomerState, at_ms: int) -> Opened | None:
    if state.cancelled_ms and state.cancelled_ms <= at_ms:
        if state.alert_episodes.get("cancellation") != state.cancelled_ms:
            state.alert_episodes["cancellation"] = state.cancelled_ms
            reason = f": {state.cancellation_reason}" if state.cancellation_reason else ""
            return ("cancellation", str(state.cancelled_ms), "critical", "subscription cancelled" + reason)
    elif "cancellation" in state.alert_episodes and not state.cancelled_ms:
        del state.alert_episodes["cancellation"]
    return None


def number_text(value: float) -> str:
    """A survey number as people write it: 6, not 6.0; else its shortest form (6.5)."""
    value = float(value)  # an int from a caller: the same text as the float the contract reads
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return msgspec.json.encode(value).decode()


def _detractor(event: Event) -> Opened | None:
    """A detractor's answer (NPS 0-6, CSAT 1-2 of 5): one alert per answer, the event its episode."""
    data = event.data
    if not isinstance(data, SurveyAnswered):
        return None
    low, high = data.scale or DEFAULT_SURVEY_SCALES[data.survey]
    if not is_detractor(SurveyResponse(data.survey, data.score, low, high, event.occurred_at_ms)):
        return None
    detail = f"{data.survey.upper()} answer {number_text(data.score)} on {number_text(low)}-{number_text(high)}"
    if data.comment:
        detail += f': "{data.comment}"'
    return ("detractor", event.event_id, "warning", detail)


def _band_downgrade(
    state: CustomerState, health: HealthScore, at_ms: int, scoring: ScoringParameters, rules: AlertParameters, by_time: bool
) -> Opened | None:
    """A fall of the band as alerting sees it. A fall that time alone caused (a sweep, or decay
    outweighing what events took) counts only once the silence is unusual for the customer, and
    says so; until then the band as alerting sees it stays where it was."""
    current = state.alert_band
    if current is None:
        state.alert_band = health.band
    elif BAND_RANK[health.band] > BAND_RANK[current]:
        time_only = by_time or fell_by_time(health)
        silence = unusual_silence(state, at_ms, rules, rules.time_band_gap_multiplier) if time_only else None
        if time_only and silence is None:
            return None
        state.alert_band = health.band
        severity = "critical" if health.band == "critical" else "warning"
        detail = f"band fell from {current} to {health.band}"
        if silence is not None:
            detail += ": no activity for {:.0f} days, usually every {:.1f}".format(*silence)
        return ("band_downgrade", f"{health.band}@{at_ms}", severity, detail)
    elif BAND_RANK[health.band] < BAND_RANK[current]:
        # Hysteresis: only move up as far as the score clears the band edge by the margin.
        cleared = band_for(health.score - rules.hysteresis_points, scoring)
        if BAND_RANK[cleared] < BAND_RANK[current]:
            state.alert_band = cleared
    return None


def evaluate(
    state: CustomerState,
    health: HealthScore,
    at_ms: int,
    scoring: ScoringParameters,
    rules: AlertParameters,
    by_time: bool = False,
    event: Event | None = None,
) -> AlertDecision:
    """Checks every enabled rule for the customer at ``at_ms`` and updates the record's alert state.
    ``by_time``: a rescoring without an event (the sweep), where only time moved the score;
    ``event``: the event just applied (the detractor rule reads its answer)."""
    opened: list[Opened] = []
    if rules.detractor and event is not None:
        answer = _detractor(event)
        if answer is not None:
            opened.append(answer)
    if rules.cancellation:
        cancelled = _cancellation(state, at_ms)
        if cancelled is not None:
            opened.append(cancelled)
    if rules.band_downgrade:
        downgrade = _band_downgrade(state, health, at_ms, scoring, rules, by_time)
        if downgrade is not None:
            opened.append(downgrade)
    # Scoring computed BG/NBD's expectation for the same moment (it costs several µs a call).
    expected = health.expected_purchases if health.as_of_ms == at_ms or not rules.purchase_activity else expected_purchases_next(state, at_ms, scoring)
    for rule, holds in _conditions(state, health, expected, at_ms, scoring, rules, by_time).items():
        if holds is None:
            state.alert_episodes.pop(rule, None)
        elif rule not in state.alert_episodes:
            state.alert_episodes[rule] = at_ms
            severity, template, values = holds
            opened.append((rule, str(at_ms), severity, template.format(*values)))
    if not by_time:  # the sharp-drop peak is a score at an event: a sweep changes no record it need not
        _remember_score(state, health, at_ms, rules)
    digest = _due_digest(state, health, at_ms, rules)
    if not opened and digest is None:
        return NO_DECISION
    decision = _raise(state, health, at_ms, rules, opened)
    if digest is None:
        return decision
    return AlertDecision([digest, *decision.raised], decision.suppressed)


def _alert(
    state: CustomerState, health: HealthScore, at_ms: int, rule: str, episode: str, severity: str, detail: str, rules: AlertParameters
) -> Alert:
    action = action_for(rules.actions, rule, severity, health.band)
    return Alert(
        alert_id=alert_id(state.customer_id, rule, episode),
        customer_id=state.customer_id,
        rule=rule,
        severity=severity,
        score=health.score,
        previous_score=health.previous_score,
        band=health.band,
        churn_risk=health.churn_risk,
        reasons=[Reason(name, round(change, 2)) for name, change in list(health.changes.items())[:3]],
        occurred_at_ms=at_ms,
        detail=detail,
        plan=state.plan,
        recommended_action=action.action if action else None,
        action_owner=action.owner if action else None,
        action_due_hours=action.due_hours if action else None,
    )


def _due_digest(state: CustomerState, health: HealthScore, at_ms: int, rules: AlertParameters) -> Alert | None:
    """The summary of an earlier day's digest alerts, at the customer's first rescoring of a later day."""
    if not state.alert_digest or state.alert_digest[0][0] // DAY_MS >= at_ms // DAY_MS:
        return None
    day = state.alert_digest[0][0] // DAY_MS
    items = "; ".join(f"{rule}: {detail}" for _, rule, detail in state.alert_digest)
    detail = f"{len(state.alert_digest)} alert(s) on {time.strftime('%Y-%m-%d', time.gmtime(day * 86_400))}: {items}"
    state.alert_digest = []
    return _alert(state, health, at_ms, "digest", str(day), "digest", detail, rules)


def _raise(state: CustomerState, health: HealthScore, at_ms: int, rules: AlertParameters, opened: list[Opened]) -> AlertDecision:
    """The opened episodes' alerts, critical first, unless the rule's cooldown or the customer's
    budget holds them back (then they count as suppressed); those of digest rules wait for the
    day's summary."""
    raised: list[Alert] = []
    suppressed: list[tuple[str, str]] = []
    cooldown_ms = rules.cooldown_hours * HOUR_MS
    budget = rules.max_alerts_per_customer_30d
    if budget:
        state.alert_times = [at for at in state.alert_times if at_ms - at < BUDGET_WINDOW_MS]
    opened.sort(key=lambda entry: SEVERITY_RANK[entry[2]])
    for rule, episode, severity, detail in opened:
        last = state.alert_last_raised.get(rule)
        digested = rule in rules.digest_rules
        cooling = last is not None and 0 <= at_ms - last < cooldown_ms and rule not in PER_EVENT_RULES
        if cooling or (not digested and budget and len(state.alert_times) >= budget):
            suppressed.append((rule, severity))
            continue
        state.alert_last_raised[rule] = at_ms
        if digested:  # summarised with the day's others, later
            state.alert_digest.append((at_ms, rule, detail))
            continue
        if budget:
            state.alert_times.append(at_ms)
        raised.append(_alert(state, health, at_ms, rule, episode, severity, detail, rules))
    return AlertDecision(raised, suppressed)


def _remember_score(state: CustomerState, health: HealthScore, at_ms: int, rules: AlertParameters) -> None:
    """Keeps the highest score of each day within the sharp-drop window."""
    day_start = at_ms // DAY_MS * DAY_MS
    recent = state.recent_scores
    if recent and recent[-1][0] == day_start:  # the usual case: another score that day
        if health.score > recent[-1][1]:
            recent[-1] = (day_start, health.score)
        return
    since = at_ms - rules.sharp_drop_window_days * DAY_MS
    recent = [entry for entry in recent if entry[0] >= since]
    recent.append((day_start, health.score))
    state.recent_scores = recent[-16:]
