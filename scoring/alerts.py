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
from dataclasses import dataclass
from typing import Final

from scoring.health import HealthScore, ScoringParameters, band_for, expected_purchases_next
from scoring.state import DAY_MS, CustomerState, window_total
from scoring.structs import NO_DECISION, Alert, AlertDecision, Reason

__all__ = ["NO_DECISION", "Alert", "AlertDecision", "Reason"]

RULES: Final = ("band_downgrade", "sharp_drop", "purchase_activity", "payment_trouble", "cancellation", "silence")
BAND_RANK: Final = {"healthy": 0, "at_risk": 1, "critical": 2}
HOUR_MS: Final = 3_600_000


@dataclass(frozen=True)
class AlertParameters:
    """Thresholds of the rules; each rule can be switched off."""

    band_downgrade: bool = True
    #: Going back up a band needs the score to clear the band edge by this many points.
    hysteresis_points: float = 5.0
    sharp_drop: bool = True
    sharp_drop_points: float = 15.0
    sharp_drop_window_days: float = 7.0
    purchase_activity: bool = True
    #: Alert when BG/NBD expects fewer purchases than this in the outlook period.
    purchase_activity_min_expected: float = 0.2
    payment_trouble: bool = True
    payment_failures_30d: int = 2
    payment_overdue_days: float = 7.0
    cancellation: bool = True
    silence: bool = True
    #: Silent for longer than this many times the customer's usual gap between active days...
    silence_gap_multiplier: float = 3.0
    #: ...and at least this many days...
    silence_min_days: float = 3.0
    #: ...once the customer has this many active days of history.
    silence_min_active_days: int = 3
    cooldown_hours: float = 24.0

    def enabled(self, rule: str) -> bool:
        return bool(getattr(self, rule))


def alert_id(customer_id: str, rule: str, episode: str) -> str:
    """Deterministic per episode of one rule for one customer."""
    return hashlib.sha256(f"{customer_id}\x1f{rule}\x1f{episode}".encode()).hexdigest()[:32]


def usual_gap_days(state: CustomerState) -> float | None:
    """The customer's typical gap between active days, once there is enough history."""
    return state.gap_days_mean if state.active_days >= 2 else None


#: When a lasting condition holds: its severity, and its detail as a template and values,
#: formatted only when an episode opens (a condition usually holds for many events).
Holding = tuple[str, str, tuple]


def _conditions(
    state: CustomerState, health: HealthScore, at_ms: int, scoring: ScoringParameters, rules: AlertParameters
) -> dict[str, Holding | None]:
    """rule → (severity, detail template, values) when its lasting condition holds now, else None."""
    found: dict[str, Holding | None] = {}
    if rules.sharp_drop:
        since = at_ms - rules.sharp_drop_window_days * DAY_MS
        peak = None
        for day_ms, score in state.recent_scores:
            if day_ms >= since and (peak is None or score > peak):
                peak = score
        found["sharp_drop"] = (
            (
                "warning",
                "score fell {:.1f} points from {:.1f} within {:g} days",
                (peak - health.score, peak, rules.sharp_drop_window_days),
            )
            if peak is not None and peak - health.score >= rules.sharp_drop_points
            else None
        )
    if rules.purchase_activity:
        # Scoring computed it for the same moment (BG/NBD costs several µs a call).
        expected = health.expected_purchases if health.as_of_ms == at_ms else expected_purchases_next(state, at_ms, scoring)
        found["purchase_activity"] = (
            ("warning", "expected purchases in the next {:g} days: {:.2f}", (scoring.purchase_outlook_days, expected))
            if expected is not None and expected < rules.purchase_activity_min_expected
            else None
        )
    if rules.payment_trouble and not state.has_billing:  # no payment events: nothing to check
        found["payment_trouble"] = None
    elif rules.payment_trouble:
        failures = window_total(state, "payments_failed", at_ms, 30)
        overdue_days = (
            (at_ms - min(invoice.due_ms for invoice in state.unpaid_invoices)) / DAY_MS if state.unpaid_invoices else 0.0
        )
        failing = failures >= rules.payment_failures_30d
        overdue = overdue_days > rules.payment_overdue_days
        if failing and overdue:
            found["payment_trouble"] = ("warning", "{} failed payments in 30 days and an invoice {:.0f} days overdue", (failures, overdue_days))
        elif failing:
            found["payment_trouble"] = ("warning", "{} failed payments in 30 days", (failures,))
        elif overdue:
            found["payment_trouble"] = ("warning", "an invoice {:.0f} days overdue", (overdue_days,))
        else:
            found["payment_trouble"] = None
    if rules.silence:
        gap = usual_gap_days(state)
        subscribed = state.mrr > 0 and not (state.cancelled_ms and state.cancelled_ms <= at_ms)
        silent_days = (at_ms - state.last_event_ms) / DAY_MS
        limit = max(rules.silence_min_days, rules.silence_gap_multiplier * (gap or 0.0))
        found["silence"] = (
            ("warning", "no events for {:.1f} days; usually every {:.1f} days", (silent_days, gap))
            if gap is not None and state.active_days >= rules.silence_min_active_days and subscribed and silent_days > limit
            else None
        )
    return found


def evaluate(
    state: CustomerState,
    health: HealthScore,
    at_ms: int,
    scoring: ScoringParameters,
    rules: AlertParameters,
) -> AlertDecision:
    """Checks every enabled rule for the customer at ``at_ms`` and updates the record's alert state."""
    opened: list[tuple[str, str, str, str]] = []  # (rule, episode, severity, detail)

    if rules.cancellation and state.cancelled_ms and state.cancelled_ms <= at_ms:
        episode = str(state.cancelled_ms)
        if state.alert_episodes.get("cancellation") != state.cancelled_ms:
            state.alert_episodes["cancellation"] = state.cancelled_ms
            opened.append(("cancellation", episode, "critical", "subscription cancelled"))
    elif "cancellation" in state.alert_episodes and not state.cancelled_ms:
        del state.alert_episodes["cancellation"]

    if rules.band_downgrade:
        current = state.alert_band
        if current is None:
            state.alert_band = health.band
        elif BAND_RANK[health.band] > BAND_RANK[current]:
            state.alert_band = health.band
            severity = "critical" if health.band == "critical" else "warning"
            opened.append(("band_downgrade", f"{health.band}@{at_ms}", severity, f"band fell from {current} to {health.band}"))
        elif BAND_RANK[health.band] < BAND_RANK[current]:
            # Hysteresis: only move up as far as the score clears the band edge by the margin.
            cleared = band_for(health.score - rules.hysteresis_points, scoring)
            if BAND_RANK[cleared] < BAND_RANK[current]:
                state.alert_band = cleared

    for rule, holds in _conditions(state, health, at_ms, scoring, rules).items():
        if holds is None:
            state.alert_episodes.pop(rule, None)
        elif rule not in state.alert_episodes:
            state.alert_episodes[rule] = at_ms
            severity, template, values = holds
            opened.append((rule, str(at_ms), severity, template.format(*values)))

    _remember_score(state, health, at_ms, rules)
    if not opened:
        return NO_DECISION

    raised: list[Alert] = []
    suppressed: list[tuple[str, str]] = []
    cooldown_ms = rules.cooldown_hours * HOUR_MS
    reasons = [Reason(name, round(change, 2)) for name, change in list(health.changes.items())[:3]]
    for rule, episode, severity, detail in opened:
        last = state.alert_last_raised.get(rule)
        if last is not None and 0 <= at_ms - last < cooldown_ms:
            suppressed.append((rule, severity))
            continue
        state.alert_last_raised[rule] = at_ms
        raised.append(
            Alert(
                alert_id=alert_id(state.customer_id, rule, episode),
                customer_id=state.customer_id,
                rule=rule,
                severity=severity,
                score=health.score,
                previous_score=health.previous_score,
                band=health.band,
                churn_risk=health.churn_risk,
                reasons=reasons,
                occurred_at_ms=at_ms,
                detail=detail,
            )
        )
    return AlertDecision(raised, suppressed)


def _remember_score(state: CustomerState, health: HealthScore, at_ms: int, rules: AlertParameters) -> None:
    """Keeps the highest score of each day within the sharp-drop window."""
    day_start = at_ms // DAY_MS * DAY_MS
    recent = state.recent_scores
    if recent and recent[-1][0] == day_start:  # the usual case: another score today
        if health.score > recent[-1][1]:
            recent[-1] = (day_start, health.score)
        return
    since = at_ms - rules.sharp_drop_window_days * DAY_MS
    recent = [entry for entry in recent if entry[0] >= since]
    recent.append((day_start, health.score))
    state.recent_scores = recent[-16:]
