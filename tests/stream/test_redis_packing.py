"""The latest-score flush packs its script call by hand (stream/sinks/redis_cache.py): it must
be byte for byte what redis-py itself sends for the same arguments."""

from __future__ import annotations

import json

from redis.connection import Connection

from stream.sinks.redis_cache import (
    _KPIS_MANY_SCRIPT_SHA, _WRITE_SCRIPT_SHA, DEFAULT_EXPANSION, RECENT_ALERTS, _kpis_call, _script_call, _stored_values,
)


def _message(score: float, **fields: object) -> bytes:
    message = {
        "customer_id": "c-1", "score": score, "band": "healthy" if score >= 50 else "critical", "churn_risk": 0.14,
        "components": {"usage": {"score": 41.2, "weight": 0.375, "contribution": 15.45}}, "confidence": 0.8,
        "previous_score": None, "changes": {"usage": -6.1}, "as_of": "2026-11-20T09:30:00.000Z",
        "computed_at": "2026-11-20T09:30:00.112Z", "model_version": "3+5c0e1d9a77", "trigger_event_id": "e-1",
        "cancelled": False, "cancelled_at": None, "cancellation_reason": None, "mrr": 99.0, "usage_growth": 0.5,
    }
    message.update(fields)
    return json.dumps(message).encode()


def test_the_hand_packed_script_call_is_what_redis_py_packs_for_the_same_arguments() -> None:
    scores = {
        "c-1": _message(63.4),
        "c-é": _message(12.0, cancelled=True, cancelled_at="2026-11-19T08:00:00Z", cancellation_reason="r" * 70_000),
        "c-" + "x" * 300: _message(99.99, usage_growth=None),
    }
    alerts = [("c-1", b'{"alert_id": "a-1"}'), ("c-2", b"{}" * 40_000)]
    packed = b"".join(_script_call("hs", alerts, scores, DEFAULT_EXPANSION))

    arguments: list[bytes | str | int] = ["EVALSHA", _WRITE_SCRIPT_SHA, 0, "hs", RECENT_ALERTS, len(alerts)]
    for customer_id, alert in alerts:
        arguments += [customer_id, alert]
    for customer_id, encoded in scores.items():
        arguments += [customer_id, *_stored_values(encoded, DEFAULT_EXPANSION)]
    assert packed == b"".join(Connection().pack_command(*arguments))
    # Twice: lengths met before come from the kept headers.
    assert b"".join(_script_call("hs", alerts, scores, DEFAULT_EXPANSION)) == packed


def test_the_hand_packed_kpis_call_is_what_redis_py_packs_for_the_same_arguments() -> None:
    rows = [("c-1", b'{"nps": 30.0}'), ("c-\u00e9", b'{"nps": 0.0}'), ("c-2", b"x" * 70_000)]
    packed = b"".join(_kpis_call("hs", rows))
    expected = Connection().pack_command("EVALSHA", _KPIS_MANY_SCRIPT_SHA, 0, "hs", *[part for row in rows for part in row])
    assert packed == b"".join(expected)
