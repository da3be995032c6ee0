"""The ``customer-health`` message (docs/events.md), built from a score."""

from __future__ import annotations

import time
from math import floor

import msgspec

from scoring.alerts import Alert
from scoring.health import HealthScore
from scoring.structs import ComponentMessage, HealthMessage

_encoder = msgspec.json.Encoder()


_day_text: dict[int, str] = {}
_MINUTES = [f"{minute // 60:02d}:{minute % 60:02d}:" for minute in range(1440)]
_SECONDS = [f"{second:02d}." for second in range(60)]
_MILLISECONDS = [f"{millisecond:03d}Z" for millisecond in range(1000)]


def rfc3339(epoch_ms: int) -> str:
    """UTC with milliseconds and a Z. Formatting dominated the message cost, so each
    day's date is remembered and the time of day is put together from tables."""
    seconds, millisecond = divmod(epoch_ms, 1000)
    day, second_of_day = divmod(seconds, 86400)
    text = _day_text.get(day)
    if text is None:
        if len(_day_text) >= 4096:
            _day_text.clear()
        text = _day_text[day] = time.strftime("%Y-%m-%dT", time.gmtime(day * 86400))
    minute, second = divmod(second_of_day, 60)
    return text + _MINUTES[minute] + _SECONDS[second] + _MILLISECONDS[millisecond]


# Message values are rounded half up to the published precision with floor(x·10^n + 0.5)/10^n:
# the same as round() except within a rounding error of an exact tie, and five times
# cheaper (a score message has twenty of them).


def health_message(
    customer_id: str,
    health: HealthScore,
    computed_at_ms: int,
    model_version: str,
    trigger_event_id: str | None,
) -> HealthMessage:
    as_of = rfc3339(health.as_of_ms)
    return HealthMessage(
        customer_id,
        health.score,
        health.band,
        health.churn_risk,
        {
            name: ComponentMessage(
                floor(c.score * 100.0 + 0.5) / 100.0,
                floor(c.weight * 10_000.0 + 0.5) / 10_000.0,
                floor(c.contribution * 100.0 + 0.5) / 100.0,
            )
            for name, c in health.components.items()
        },
        floor(health.confidence * 10_000.0 + 0.5) / 10_000.0,
        health.previous_score,
        {name: floor(delta * 100.0 + 0.5) / 100.0 for name, delta in health.changes.items()},
        as_of,
        as_of if computed_at_ms == health.as_of_ms else rfc3339(computed_at_ms),
        model_version,
        trigger_event_id,
        health.cancelled_ms != 0,
        rfc3339(health.cancelled_ms) if health.cancelled_ms else None,
        health.cancellation_reason,
        health.mrr,
        None if health.usage_growth is None else floor(health.usage_growth * 10_000.0 + 0.5) / 10_000.0,
        health.churn_risk_horizon_days,
        health.needs_fresh_pulse,
    )


def encode_json(message: dict | HealthMessage) -> bytes:
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
        "plan": alert.plan,
        "recommended_action": alert.recommended_action,
        "action_owner": alert.action_owner,
        "action_due_at": None if alert.action_due_hours is None else rfc3339(raised_at_ms + int(alert.action_due_hours * 3_600_000)),
    }


def score_line(customer_id: str, health: HealthScore, trigger_event_id: str | None, model_version: str) -> bytes:
    """A replay's line for a changed score: ``{"kind":"score",`` then the message's own fields,
    stamped at the score's own moment (the Rust kernel writes the same bytes)."""
    message = _encoder.encode(health_message(customer_id, health, health.as_of_ms, model_version, trigger_event_id))
    return b'{"kind":"score",' + message[1:] + b"\n"


def alert_line(alert: Alert, model_version: str) -> bytes:
    """A replay's line for a raised alert, raised at its own moment."""
    return _encoder.encode({"kind": "alert", **alert_message(alert, alert.occurred_at_ms, model_version)}) + b"\n"
