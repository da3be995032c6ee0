"""The wire contract: what is accepted, and the reason for everything that is not."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.contract import (
    EVENT_TYPES,
    Event,
    PurchaseCompleted,
    RejectReason,
    Rejection,
    SurveyAnswered,
    TopicKind,
    UsageFeature,
    _decode_rejected,
    decode_event,
)
from stream.commands.generate import EventSynthesizer

NOW = 1_790_000_000_000  # 2026-09-21
SKEW = 300_000


def raw(**overrides) -> bytes:
    body = {
        "event_id": "e1",
        "type": "purchase.completed",
        "customer_id": "acme",
        "occurred_at": "2026-09-20T10:00:00+02:00",
        "data": {"order_id": "o1", "amount": 12.5, "currency": "EUR"},
    }
    body.update(overrides)
    return json.dumps(body).encode()


def decode(value: bytes, key: bytes | None = b"acme", topic: TopicKind | None = TopicKind.PURCHASES):
    return decode_event(key, value, topic, NOW, SKEW)


def test_valid_purchase_decodes_with_event_time_in_milliseconds() -> None:
    event = decode(raw())
    assert isinstance(event, Event)
    assert event.occurred_at_ms == int(datetime(2026, 9, 20, 8, 0, tzinfo=timezone.utc).timestamp() * 1000)
    assert (event.event_id, event.type, event.customer_id) == ("e1", "purchase.completed", "acme")
    assert isinstance(event.data, PurchaseCompleted) and event.data.amount == 12.5


def test_rfc3339_offset_and_epoch_millis_mean_the_same_instant() -> None:
    with_offset = decode(raw(occurred_at="2026-09-20T10:00:00+02:00"))
    utc = decode(raw(occurred_at="2026-09-20T08:00:00Z"))
    millis = decode(raw(occurred_at=utc.occurred_at_ms))
    assert with_offset.occurred_at_ms == utc.occurred_at_ms == millis.occurred_at_ms


def test_optional_fields_take_their_defaults() -> None:
    feature = decode(
        raw(type="usage.feature", data={"user_id": "u", "feature": "reports"}), topic=TopicKind.USAGE
    )
    assert isinstance(feature.data, UsageFeature) and feature.data.count == 1
    survey = decode(raw(type="survey.answered", data={"survey": "nps", "score": 9}), topic=TopicKind.TICKETS)
    assert isinstance(survey.data, SurveyAnswered) and survey.data.scale is None


def test_keyless_message_is_accepted_when_customer_id_is_present() -> None:
    assert isinstance(decode(raw(), key=None), Event)
    assert isinstance(decode(raw(), key=b""), Event)  # an empty key is no key: rekeyed, not refused


def test_a_tombstone_and_bytes_that_are_not_utf8_are_named_not_raised() -> None:
    assert decode_event(b"acme", None, TopicKind.PURCHASES, NOW, SKEW).reason is RejectReason.TOMBSTONE
    for bad in (raw().replace(b'"EUR"', b'"EU\xff"'), raw().replace(b'"o1"', b'"\xc3\x28"')):
        rejection = decode(bad)
        assert isinstance(rejection, Rejection) and rejection.reason is RejectReason.INVALID_UTF8, (bad, rejection)


@pytest.mark.parametrize(
    ("value", "key", "topic", "reason"),
    [
        (b"{nope", b"acme", TopicKind.PURCHASES, RejectReason.NOT_JSON),
        (b"", b"acme", TopicKind.PURCHASES, RejectReason.NOT_JSON),
        (b"[1, 2]", b"acme", TopicKind.PURCHASES, RejectReason.NOT_OBJECT),
        (b'"text"', b"acme", TopicKind.PURCHASES, RejectReason.NOT_OBJECT),
        (raw(event_id=None), b"acme", TopicKind.PURCHASES, RejectReason.INVALID_FIELD),
        (raw(event_id=""), b"acme", TopicKind.PURCHASES, RejectReason.INVALID_FIELD),
        (raw(customer_id=7), b"acme", TopicKind.PURCHASES, RejectReason.INVALID_FIELD),
        (raw(type="purchase.teleported"), b"acme", TopicKind.PURCHASES, RejectReason.UNKNOWN_TYPE),
        (raw(type="usage.session", data={"user_id": "u", "duration_seconds": 5}), b"acme", TopicKind.PURCHASES, RejectReason.WRONG_TOPIC),
        (raw(), b"globex", TopicKind.PURCHASES, RejectReason.KEY_MISMATCH),
        (raw(data={"order_id": "o1", "amount": -1, "currency": "EUR"}), b"acme", TopicKind.PURCHASES, RejectReason.INVALID_AMOUNT),
        (raw(data={"order_id": "o1", "amount": "12", "currency": "EUR"}), b"acme", TopicKind.PURCHASES, RejectReason.INVALID_AMOUNT),
        (raw().replace(b'"amount": 12.5', b'"amount": 1e999'), b"acme", TopicKind.PURCHASES, RejectReason.INVALID_AMOUNT),
        (raw().replace(b'"amount": 12.5', b'"amount": NaN'), b"acme", TopicKind.PURCHASES, RejectReason.NOT_JSON),
        (raw(data={"order_id": "o1", "currency": "EUR"}), b"acme", TopicKind.PURCHASES, RejectReason.INVALID_FIELD),
        (raw(occurred_at="yesterday"), b"acme", TopicKind.PURCHASES, RejectReason.INVALID_TIMESTAMP),
        (raw(occurred_at="2026-09-20T10:00:00"), b"acme", TopicKind.PURCHASES, RejectReason.INVALID_TIMESTAMP),
        (raw(occurred_at=1_700_000_000), b"acme", TopicKind.PURCHASES, RejectReason.INVALID_TIMESTAMP),
        (raw(occurred_at=True), b"acme", TopicKind.PURCHASES, RejectReason.INVALID_FIELD),
        (raw(occurred_at=NOW + SKEW + 60_000), b"acme", TopicKind.PURCHASES, RejectReason.FUTURE_TIMESTAMP),
        (raw(type="ticket.opened", data={"ticket_id": "t", "priority": "meh"}), b"acme", TopicKind.TICKETS, RejectReason.INVALID_FIELD),
        (raw(type="survey.answered", data={"survey": "nps", "score": 11}), b"acme", TopicKind.TICKETS, RejectReason.INVALID_FIELD),
        (raw(type="survey.answered", data={"survey": "csat", "score": 3, "scale": [5, 1]}), b"acme", TopicKind.TICKETS, RejectReason.INVALID_FIELD),
        (raw(type="survey.answered", data={"survey": "csi", "score": 1}), b"acme", TopicKind.TICKETS, RejectReason.INVALID_FIELD),
        (raw(type="survey.answered", data={"survey": "csi", "score": 1, "question": "happy"}), b"acme", TopicKind.TICKETS, RejectReason.INVALID_FIELD),
        (raw(type="survey.answered", data={"survey": "cli", "score": 7}), b"acme", TopicKind.TICKETS, RejectReason.INVALID_FIELD),
        (raw(type="survey.answered", data={"survey": "cli", "score": 2, "touchpoint": "t" * 257}), b"acme", TopicKind.TICKETS, RejectReason.TOO_LONG),
        (raw(type="invoice.issued", data={"invoice_id": "i", "amount": 5, "due_at": "soon"}), b"acme", TopicKind.PAYMENTS, RejectReason.INVALID_TIMESTAMP),
        (raw(type="subscription.updated", data={"mrr": -5}), b"acme", TopicKind.PAYMENTS, RejectReason.INVALID_AMOUNT),
        # The documented bounds (docs/events.md, "Bounds").
        (raw(data={"order_id": "o1", "amount": 2e17, "currency": "EUR"}), b"acme", TopicKind.PURCHASES, RejectReason.OUT_OF_RANGE),
        (raw(data={"order_id": "o1", "amount": 1, "currency": "EUR", "items": [{"sku": "a", "quantity": 10**7, "unit_price": 1}]}), b"acme", TopicKind.PURCHASES, RejectReason.OUT_OF_RANGE),
        (raw(data={"order_id": "o1", "amount": 1, "currency": "EUR", "items": [{"sku": "a", "quantity": 1, "unit_price": 1}] * 1001}), b"acme", TopicKind.PURCHASES, RejectReason.TOO_LONG),
        (raw(data={"order_id": "o1", "amount": 1, "currency": "EUR", "items": [{"sku": "a", "quantity": 1, "unit_price": 1, "category": "c" * 257}]}), b"acme", TopicKind.PURCHASES, RejectReason.TOO_LONG),
        (raw(type="invoice.issued", data={"invoice_id": "i", "amount": 5, "due_at": 10**30}), b"acme", TopicKind.PAYMENTS, RejectReason.OUT_OF_RANGE),
        (raw(type="invoice.issued", data={"invoice_id": "i", "amount": 5, "due_at": "2100-01-01T00:00:00Z"}), b"acme", TopicKind.PAYMENTS, RejectReason.OUT_OF_RANGE),
        (raw(type="subscription.updated", data={"mrr": 1e9 + 1}), b"acme", TopicKind.PAYMENTS, RejectReason.OUT_OF_RANGE),
        (raw(type="subscription.updated", data={"mrr": 5, "plan": "p" * 257}), b"acme", TopicKind.PAYMENTS, RejectReason.TOO_LONG),
        (raw(type="subscription.cancelled", data={"reason": "r" * 900_000}), b"acme", TopicKind.PAYMENTS, RejectReason.TOO_LONG),
        (raw(type="payment.failed", data={"invoice_id": "i", "amount": 1, "reason": "r" * 257}), b"acme", TopicKind.PAYMENTS, RejectReason.TOO_LONG),
        (raw(type="usage.session", data={"user_id": "u", "duration_seconds": 2_592_001}), b"acme", TopicKind.USAGE, RejectReason.OUT_OF_RANGE),
        (raw(type="usage.feature", data={"user_id": "u", "feature": "f", "count": 1_000_001}), b"acme", TopicKind.USAGE, RejectReason.OUT_OF_RANGE),
        (raw(type="survey.answered", data={"survey": "nps", "score": 5, "scale": [0, 1e7]}), b"acme", TopicKind.TICKETS, RejectReason.OUT_OF_RANGE),
        (raw(customer_id="c" * 257), b"c" * 257, TopicKind.PURCHASES, RejectReason.TOO_LONG),
        (raw(occurred_at="2026-09-20"), b"acme", TopicKind.PURCHASES, RejectReason.INVALID_TIMESTAMP),
        (raw(occurred_at="2026-W38-1T10:00:00Z"), b"acme", TopicKind.PURCHASES, RejectReason.INVALID_TIMESTAMP),
        (raw(occurred_at="20260920T100000Z"), b"acme", TopicKind.PURCHASES, RejectReason.INVALID_TIMESTAMP),
    ],
)
def test_bad_input_is_rejected_with_its_reason(value: bytes, key: bytes | None, topic: TopicKind, reason: RejectReason) -> None:
    result = decode(value, key=key, topic=topic)
    assert isinstance(result, Rejection), result
    assert result.reason is reason, result.detail
    assert result.detail


def test_values_at_their_bounds_are_accepted() -> None:
    item = {"sku": "s" * 256, "quantity": 1_000_000, "unit_price": 1e9, "category": "c" * 256}
    purchase = raw(data={"order_id": "o" * 256, "amount": 1e9, "currency": "EUR", "items": [item] * 1000})
    assert isinstance(decode(purchase), Event)
    assert isinstance(decode(raw(occurred_at="2026-09-20t10:00:00.123456789z")), Event)


def test_a_timestamp_within_the_allowed_skew_is_accepted() -> None:
    assert isinstance(decode(raw(occurred_at=NOW + SKEW - 1)), Event)


def test_a_mixed_file_accepts_any_type_when_no_topic_is_given() -> None:
    usage = raw(type="usage.session", data={"user_id": "u", "duration_seconds": 5})
    assert isinstance(decode(usage, topic=None), Event)


# The typed decoder is the fast path for valid messages; anything it refuses is decoded
# step by step. Both must agree on every message: same event, or same rejection.
_field_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=2_000_000_000_000),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from(["", "x", "low", "urgent", "nps", "csat", "EUR", "2026-09-20T08:00:00Z", "2026-09-20T08:00:00"]),
    st.lists(st.integers(min_value=0, max_value=10), max_size=2),
    st.fixed_dictionaries({"sku": st.just("s"), "quantity": st.integers(0, 3), "unit_price": st.floats(0, 5)}).map(lambda item: [item]),
)
_data_fields = [
    "order_id", "amount", "currency", "items", "cart_value", "user_id", "duration_seconds", "feature", "count",
    "ticket_id", "priority", "survey", "score", "scale", "invoice_id", "due_at", "reason", "mrr", "plan",
]


#: Valid messages of every type, as the generator makes them (the base that mutations start from).
_VALID = [
    (generated.customer_id.encode(), generated.value)
    for generated in EventSynthesizer(50, seed=11).timeline(600, NOW - 20 * 86_400_000, NOW)
]


@st.composite
def messages(draw) -> tuple[bytes | None, bytes]:
    """Mostly valid messages, and valid ones with one thing wrong."""
    key, valid = draw(st.sampled_from(_VALID))
    body = {**valid, "data": dict(valid.get("data", {}))}
    mutation = draw(st.sampled_from(["none", "none", "data", "drop", "envelope", "key"]))
    if mutation == "data":
        body["data"][draw(st.sampled_from(_data_fields))] = draw(_field_values)
    elif mutation == "drop":
        field = draw(st.sampled_from(["event_id", "type", "occurred_at", "data", "customer_id", *body["data"]]))
        (body if field in body else body["data"]).pop(field, None)
    elif mutation == "envelope":
        body[draw(st.sampled_from(["event_id", "type", "customer_id", "occurred_at"]))] = draw(
            st.one_of(_field_values, st.sampled_from([*EVENT_TYPES, "no.such.type", NOW + SKEW * 10]))
        )
    elif mutation == "key":
        key = draw(st.sampled_from([None, b"someone-else"]))
    return key, json.dumps(body).encode()


@settings(max_examples=400, deadline=None)
@given(messages(), st.sampled_from([None, *TopicKind]))
def test_the_fast_path_and_the_step_by_step_decode_agree(message: tuple[bytes | None, bytes], topic: TopicKind | None) -> None:
    key, value = message
    assert decode_event(key, value, topic, NOW, SKEW) == _decode_rejected(key, value, topic, NOW, SKEW)
