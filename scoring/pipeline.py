"""One step of the per-customer pipeline, shared by the stream worker and replays.

``step`` applies one event; ``sweep`` rescores a customer at a later time with
no event (inactivity decay, silence). Both decide whether a new score must be
published and which alerts are raised; the caller only moves bytes. Keeping
this here means the worker and a replay of the same events give the same
scores and alerts.
"""

from __future__ import annotations

from scoring.alerts import AlertDecision, AlertParameters, evaluate
from scoring.contract import Event, TopicKind
from scoring.health import HealthScore, ScoringParameters, has_changed, score_state
from scoring.state import CustomerState, Outcome, PublishedScore, apply_event
from scoring.structs import NO_DECISION, Step

__all__ = ["Step"]

NO_ALERTS = NO_DECISION


def _score_and_alert(
    state: CustomerState,
    at_ms: int,
    parameters: ScoringParameters,
    rules: AlertParameters | None,
    min_change: float = 0.0,
    by_time: bool = False,
    event: Event | None = None,
) -> tuple[HealthScore | None, AlertDecision]:
    previous = state.published
    if previous is None:
        health = score_state(state, at_ms, parameters)
    else:
        health = score_state(state, at_ms, parameters, previous.contributions, previous.score)
    if health is None:
        return None, NO_ALERTS
    alerts = evaluate(state, health, at_ms, parameters, rules, by_time, event) if rules is not None else NO_ALERTS
    if previous is not None and not has_changed(previous.score, previous.band, health, previous.contributions):
        return None, alerts
    if previous is not None and previous.band == health.band and abs(health.score - previous.score) < min_change:
        return None, alerts
    state.published = PublishedScore(
        health.score, health.band, health.as_of_ms, {name: c.contribution for name, c in health.components.items()}
    )
    return health, alerts


def rescore(state: CustomerState, at_ms: int, parameters: ScoringParameters) -> HealthScore | None:
    """Scores the customer at ``at_ms``; returns the score if it changed (and records it as published)."""
    return _score_and_alert(state, at_ms, parameters, None)[0]


def step(
    state: CustomerState,
    event: Event,
    parameters: ScoringParameters,
    dedup_capacity: int,
    source: tuple[TopicKind, int, int] | None = None,
    rules: AlertParameters | None = None,
) -> Step:
    """Applies one event, then rescores (and checks the alert rules) at the customer's newest event time.

    ``source`` is the message's (stream, partition, offset) when it came from Kafka.
    """
    outcome = apply_event(state, event, dedup_capacity, source, parameters.user_hash_key)
    if outcome is not Outcome.APPLIED:
        return Step(outcome, None)
    health, alerts = _score_and_alert(state, state.last_event_ms, parameters, rules, event=event)
    return Step(outcome, health, alerts)


def due_for_sweep(state: CustomerState, at_ms: int, silent_for_ms: int) -> bool:
    """A sweep rescores silent customers: those without an event for at least ``silent_for_ms``.

    A customer with a recent event was scored at that event; rescoring it moments
    later (most customers of an active history, every sweep) would cost a full
    rescoring for a change of a fraction of a point.
    """
    return at_ms - state.last_event_ms >= silent_for_ms


def expired(state: CustomerState, at_ms: int, ttl_ms: int) -> bool:
    """A customer without an event for ``ttl_ms`` (state_ttl_days; 0: never) at ``at_ms`` is
    evicted: its record is deleted, not rescored (keep only what is needed)."""
    return ttl_ms > 0 and state.last_event_ms > 0 and at_ms - state.last_event_ms >= ttl_ms


def sweep(
    state: CustomerState,
    at_ms: int,
    parameters: ScoringParameters,
    rules: AlertParameters | None,
    min_change: float = 1.0,
) -> Step:
    """Rescores a customer at ``at_ms`` without an event, so decay and silence show.

    Time alone moves scores a little all the time; a sweep publishes a score only
    when its band changed or it moved by at least ``min_change`` points since the
    last published one (alerts are checked either way).
    """
    health, alerts = _score_and_alert(state, max(at_ms, state.last_event_ms), parameters, rules, min_change, by_time=True)
    return Step(Outcome.APPLIED, health, alerts)
