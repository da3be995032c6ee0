"""From a customer's record to an explained 0-100 health score, at a given time.

This is the first, simple model (docs/model.md): five components, each a
monotone function onto 0-100, combined by configured weights. A component with
no data for the customer is left out and its weight spread over the others.
Time is always a parameter, so decay applies when no event arrives.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field

from scoring.state import DAY_MS, CustomerState, window

MODEL_REVISION = "simple-1"
COMPONENTS = ("usage", "purchases", "support", "sentiment", "payments")


@dataclass(frozen=True)
class ScoringParameters:
    """Plain parameters the scoring needs; the worker builds them from its settings."""

    weights: dict[str, float] = field(
        default_factory=lambda: {"usage": 0.30, "purchases": 0.20, "support": 0.15, "sentiment": 0.15, "payments": 0.20}
    )
    healthy_min: float = 70.0
    at_risk_min: float = 40.0
    usage_half_life_days: float = 7.0
    purchase_half_life_days: float = 45.0

    @property
    def model_version(self) -> str:
        """Changes whenever the model revision or any parameter changes."""
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]
        return f"{MODEL_REVISION}+{digest}"


@dataclass(frozen=True)
class ComponentScore:
    score: float
    weight: float
    contribution: float


@dataclass(frozen=True)
class HealthScore:
    score: float
    band: str
    churn_risk: float
    components: dict[str, ComponentScore]
    as_of_ms: int
    confidence: float


def _decay(elapsed_ms: float, half_life_days: float) -> float:
    """1 right after the last activity, halving every half-life."""
    return 0.5 ** (max(0.0, elapsed_ms) / (half_life_days * DAY_MS))


def usage_score(state: CustomerState, at_ms: int, parameters: ScoringParameters) -> float | None:
    """Recency of product use, times the last 7 days' activity against the 90-day weekly baseline."""
    if not state.last_usage_ms:
        return None
    recency = _decay(at_ms - state.last_usage_ms, parameters.usage_half_life_days)
    last_week = sum(b.sessions + b.feature_uses for b in window(state, at_ms, 7))
    quarter = sum(b.sessions + b.feature_uses for b in window(state, at_ms, 90))
    baseline_week = quarter / (90 / 7)
    trend = 1.0 if baseline_week <= 0 else min(1.0, last_week / baseline_week)
    return 100.0 * recency * (0.5 + 0.5 * trend)


def purchase_score(state: CustomerState, at_ms: int, parameters: ScoringParameters) -> float | None:
    """Purchase recency, decaying with a 45-day half-life."""
    if not state.last_purchase_ms:
        return None
    return 100.0 * _decay(at_ms - state.last_purchase_ms, parameters.purchase_half_life_days)


def support_score(state: CustomerState, at_ms: int) -> float | None:
    """Falls with open tickets, more for urgent ones, and with reopens."""
    if not state.open_tickets and not state.tickets_resolved and not state.tickets_reopened:
        return None
    penalty = sum(8.0 + 8.0 * ticket.priority for ticket in state.open_tickets)
    penalty += 10.0 * state.tickets_reopened / max(1, state.tickets_resolved + state.tickets_reopened)
    return max(0.0, 100.0 - penalty)


def sentiment_score(state: CustomerState, at_ms: int) -> float | None:
    """Mean of the survey answers of the last 90 days, each rescaled onto 0-100."""
    recent = [s for s in state.surveys if at_ms - s.answered_ms <= 90 * DAY_MS]
    if not recent:
        return None
    return sum(100.0 * (s.score - s.scale_min) / (s.scale_max - s.scale_min) for s in recent) / len(recent)


def payment_score(state: CustomerState, at_ms: int) -> float | None:
    """Zero once cancelled; otherwise falls with failed payments in 30 days and overdue invoices."""
    if not state.has_billing:
        return None
    if state.cancelled_ms and state.cancelled_ms <= at_ms:
        return 0.0
    failed = sum(b.payments_failed for b in window(state, at_ms, 30))
    overdue = sum(1 for invoice in state.unpaid_invoices if invoice.due_ms < at_ms)
    contraction = 10.0 if state.previous_mrr > state.mrr else 0.0
    return max(0.0, 100.0 - 25.0 * failed - 20.0 * overdue - contraction)


def band_for(score: float, parameters: ScoringParameters) -> str:
    if score >= parameters.healthy_min:
        return "healthy"
    if score >= parameters.at_risk_min:
        return "at_risk"
    return "critical"


def churn_risk_for(score: float) -> float:
    """Logistic in the score: 0.5 at 45 points, about 0.05 at 75, 0.95 at 15."""
    return 1.0 / (1.0 + math.exp((score - 45.0) / 10.2))


def score_state(state: CustomerState, at_ms: int, parameters: ScoringParameters) -> HealthScore | None:
    """The customer's health at ``at_ms``; None while no component has data."""
    raw = {
        "usage": usage_score(state, at_ms, parameters),
        "purchases": purchase_score(state, at_ms, parameters),
        "support": support_score(state, at_ms),
        "sentiment": sentiment_score(state, at_ms),
        "payments": payment_score(state, at_ms),
    }
    present = {name: value for name, value in raw.items() if value is not None and parameters.weights.get(name, 0) > 0}
    if not present:
        return None
    total_weight = sum(parameters.weights[name] for name in present)
    components: dict[str, ComponentScore] = {}
    composite = 0.0
    for name, value in present.items():
        weight = parameters.weights[name] / total_weight
        contribution = weight * value
        composite += contribution
        components[name] = ComponentScore(round(value, 2), round(weight, 4), round(contribution, 2))
    composite = min(100.0, max(0.0, composite))
    if state.cancelled_ms and state.cancelled_ms <= at_ms:
        composite = min(composite, parameters.at_risk_min - 0.01)
    all_weight = sum(parameters.weights.get(name, 0) for name in COMPONENTS)
    return HealthScore(
        score=round(composite, 2),
        band=band_for(composite, parameters),
        churn_risk=round(churn_risk_for(composite), 4),
        components=components,
        as_of_ms=at_ms,
        confidence=round(total_weight / all_weight, 4) if all_weight else 0.0,
    )


def has_changed(previous_score: float | None, previous_band: str | None, current: HealthScore) -> bool:
    """A score is republished when its rounded value or its band moves."""
    return previous_score is None or previous_score != current.score or previous_band != current.band
