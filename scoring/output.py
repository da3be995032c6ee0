"""The ``customer-health`` message (docs/events.md), built from a score."""

from __future__ import annotations

import time

import msgspec

from scoring.alerts import Alert
from scoring.health import HealthScore

_encoder = msgspec.json.Encoder()


_seconds_text: dict[int, str] = {}


def rfc3339(epoch_ms: int) -> str:
    """UTC with milliseconds and a Z. Formatting dominated the message cost, so each second's
    text is remembered (a worker formats the same few seconds over and over)."""
    seconds, milliseconds = divmod(epoch_ms, 1000)
    text = _seconds_text.get(seconds)
    if text is None:
        if len(_seconds_text) >= 4096:
            _seconds_text.clear()
        text = _seconds_text[seconds] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{text}.{milliseconds:03d}Z"


def health_message(
    customer_id: str,
    health: HealthScore,
    computed_at_ms: int,
    model_version: str,
    trigger_event_id: str | None,
) -> dict:
    as_of = rfc3339(health.as_of_ms)
    return {
        "customer_id": customer_id,
        "score": health.score,
        "band": health.band,
        "churn_risk": health.churn_risk,
        "components": {
            name: {"score": round(c.score, 2), "weight": round(c.weight, 4), "contribution": round(c.contribution, 2)}
            for name, c in health.components.items()
        },
        "confidence": round(health.confidence, 4),
        "previous_score": health.previous_score,
        "changes": {name: round(delta, 2) for name, delta in health.changes.items()},
        "as_of": as_of,
        "computed_at": as_of if computed_at_ms == health.as_of_ms else rfc3339(computed_at_ms),
        "model_version": model_version,
        "trigger_event_id": trigger_event_id,
    }


def encode_json(message: dict) -> bytes:
    return _encoder.encode(message)


def alert_message(alert: Alert, raised_at_ms: int, model_version: str) -> dict:
    """The ``churn-alerts`` message (docs/events.md)."""
    return {
        "alert_id": alert.alert_id,
        "customer_id": alert.customer_id,
        "rule": alert.rule,
        "severity": alert.severity,
        "score": alert.score,
        "previous_score": alert.previous_score,
        "band": alert.band,
        "churn_risk": alert.churn_risk,
        "reasons": [{"component": r.component, "change": r.change} for r in alert.reasons],
        "detail": alert.detail,
        "occurred_at": rfc3339(alert.occurred_at_ms),
        "raised_at": rfc3339(raised_at_ms),
        "model_version": model_version,
    }
