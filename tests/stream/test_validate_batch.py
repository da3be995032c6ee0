"""The agent validates a whole batch before applying any of it (stream.processing.events.validate_batch)."""

from __future__ import annotations

import pytest
from aiokafka.structs import ConsumerRecord

import stream.processing.events
from scoring.contract import Event, Rejection, RejectReason, TopicKind
from stream.processing.events import validate_batch

NOW_MS = 1_790_000_000_000
KINDS = {"usage": TopicKind.USAGE, "payments": TopicKind.PAYMENTS}


def session(customer: str, event_id: str) -> bytes:
    return (
        '{"event_id":"%s","type":"usage.session","customer_id":"%s","occurred_at":%d,'
        '"data":{"user_id":"u1","duration_seconds":60}}' % (event_id, customer, NOW_MS - 1000)
    ).encode()


def message(topic: str, offset: int, key: bytes | None, value: bytes) -> ConsumerRecord:
    return ConsumerRecord(topic, 0, offset, 0, 0, key, value, None, len(key or b""), len(value), [])


def test_each_message_gets_its_event_its_reason_or_none_in_order() -> None:
    batch = [
        message("usage", 0, b"acme", session("acme", "e1")),
        message("sweep", 1, None, b'{"at_ms": 1, "started_at": 0.0}'),
        message("usage", 2, b"acme", b"not json"),
        message("usage", 3, b"globex", session("acme", "e2")),  # key and customer disagree
        message("usage", 4, None, session("initech", "e3")),  # keyless: valid, rekeyed by the agent
    ]
    validated = validate_batch(batch, KINDS, NOW_MS, 300_000)
    assert len(validated) == len(batch)
    assert isinstance(validated[0], Event) and validated[0].event_id == "e1"
    assert validated[1] is None
    assert isinstance(validated[2], Rejection) and validated[2].reason is RejectReason.NOT_JSON
    assert isinstance(validated[3], Rejection) and validated[3].reason is RejectReason.KEY_MISMATCH
    assert isinstance(validated[4], Event) and validated[4].customer_id == "initech"


def test_a_bug_in_validation_parks_that_message_and_keeps_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    real = stream.processing.events.decode_event

    def failing_for_e2(key, value, kind, now_ms, max_skew_ms):
        if b'"e2"' in value:
            raise KeyError("boom")
        return real(key, value, kind, now_ms, max_skew_ms)

    monkeypatch.setattr(stream.processing.events, "decode_event", failing_for_e2)
    batch = [message("usage", offset, b"acme", session("acme", f"e{offset}")) for offset in (1, 2, 3)]
    validated = validate_batch(batch, KINDS, NOW_MS, 300_000)
    assert [type(item) for item in validated] == [Event, Rejection, Event]
    assert validated[1].reason is RejectReason.PROCESSING_ERROR
    assert "KeyError" in validated[1].detail
