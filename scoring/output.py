"""The ``customer-health`` message (docs/events.md), built from a score."""

from __future__ import annotations

from datetime import datetime, timezone

import msgspec

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
