"""The ``customer-health`` message (docs/events.md), built from a score."""

from __future__ import annotations

from datetime import datetime, timezone

import msgspec

from scoring.alerts import Alert
from scoring.health import HealthScore

_encoder = msgspec.json.Encoder()


def rfc3339(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def health_message(
    customer_id: str,
    health: HealthScore,
    computed_at_ms: int,
    model_version: str,
    trigger_event_id: str | None,
) -> dict:
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
        "as_of": rfc3339(health.as_of_ms),
        "computed_at": rfc3339(computed_at_ms),
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
