"""Our own wire contract over HTTP (``POST /v1/events``), and the check every event passes
before it is produced, whatever its source: the worker's own validation
(``scoring.contract.decode_event``, with its bounds), so what ingest accepts the worker accepts."""

from __future__ import annotations

from typing import Any

import msgspec

from scoring.contract import EVENT_TYPES, Event, Rejection, RejectReason, TopicKind, decode_event

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()

#: Events one request may carry (the body is bounded by max_body_bytes too).
MAX_EVENTS = 10_000


class Checked(msgspec.Struct, frozen=True):
    """An event ready to produce: its input stream, key (the customer id) and encoded value."""

    kind: TopicKind
    key: bytes
    value: bytes


def parse_body(body: bytes) -> list[Any] | Rejection:
    """The events of a body: one JSON object, a JSON array, or JSON Lines (one object per line;
    a line that is not JSON becomes a rejection in its place)."""
    text = body.strip()
    if not text:
        return Rejection(RejectReason.NOT_JSON, "empty body")
    if text[:1] == b"[" or b"\n" not in text:
        try:
            parsed = _decoder.decode(text)
        except msgspec.DecodeError as error:
            return Rejection(RejectReason.NOT_JSON, f"the body is not JSON: {error}")
        items = parsed if isinstance(parsed, list) else [parsed]
    else:
        items = []
        for number, line in enumerate(text.split(b"\n"), 1):
            if line.strip():
                try:
                    items.append(_decoder.decode(line))
                except msgspec.DecodeError as error:
                    items.append(Rejection(RejectReason.NOT_JSON, f"line {number} is not JSON: {error}"))
    if len(items) > MAX_EVENTS:
        return Rejection(RejectReason.OUT_OF_RANGE, f"{len(items)} events in one request; at most {MAX_EVENTS}")
    return items


def check(item: Any, now_ms: int, max_skew_ms: int) -> Checked | Rejection:
    """One event, validated as the worker validates it (reasons as on its dead-letter topic)."""
    if isinstance(item, Rejection):
        return item
    if not isinstance(item, dict):
        return Rejection(RejectReason.NOT_OBJECT, "an event is a JSON object")
    known = EVENT_TYPES.get(item.get("type"))  # type: ignore[arg-type]
    if known is None:
        return Rejection(RejectReason.UNKNOWN_TYPE, f"unknown event type {str(item.get('type'))[:64]!r}")
    customer = item.get("customer_id")
    key = customer.encode() if isinstance(customer, str) else b""
    value = _encoder.encode(item)
    decoded = decode_event(key, value, known[0], now_ms, max_skew_ms)
    if isinstance(decoded, Rejection):
        return decoded
    assert isinstance(decoded, Event)
    return Checked(known[0], key, value)
