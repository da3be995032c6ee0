"""One step of the per-customer pipeline, shared by the stream worker and replays.

``step`` applies one event and decides whether a new score must be published;
the caller only moves bytes. Keeping this here means the worker and a replay of
the same events give the same scores.
"""

from __future__ import annotations

from dataclasses import dataclass

from scoring.contract import Event, TopicKind
from scoring.health import HealthScore, ScoringParameters, has_changed, score_state
from scoring.state import CustomerState, Outcome, PublishedScore, apply_event


@dataclass(frozen=True)
class Step:
    outcome: Outcome
    #: A score that changed and must be published, or None.
    publish: HealthScore | None


def rescore(state: CustomerState, at_ms: int, parameters: ScoringParameters) -> HealthScore | None:
    """Scores the customer at ``at_ms``; returns the score if it changed (and records it as published)."""
    previous = state.published
    if previous is None:
        health = score_state(state, at_ms, parameters)
    else:
        health = score_state(state, at_ms, parameters, previous.contributions, previous.score)
    if health is None or not has_changed(previous and previous.score, previous and previous.band, health):
        return None
    state.published = PublishedScore(
        health.score, health.band, health.as_of_ms, {name: c.contribution for name, c in health.components.items()}
    )
    return health


def step(
    state: CustomerState,
    event: Event,
    parameters: ScoringParameters,
    dedup_capacity: int,
    source: tuple[TopicKind, int, int] | None = None,
) -> Step:
    """Applies one event, then rescores at the customer's newest event time.

    ``source`` is the message's (stream, partition, offset) when it came from Kafka.
    """
    outcome = apply_event(state, event, dedup_capacity, source)
    if outcome is not Outcome.APPLIED:
        return Step(outcome, None)
    return Step(outcome, rescore(state, state.last_event_ms, parameters))
