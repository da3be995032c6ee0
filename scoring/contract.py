"""The wire contract for input events (docs/events.md), and its validation.

Decoding is pure: it takes the raw key and value bytes and the time "now" (to
reject timestamps in the far future) and returns either an ``Event`` or a
``Rejection`` carrying a short reason code and a human-readable detail. The
stream worker and the replay command share this code, so both accept exactly
the same input.
"""

from __future__ import annotations

import enum
import math
import re
from datetime import datetime
from typing import Annotated, Final, Literal, Union

import msgspec

CONTRACT_VERSION = 1


class TopicKind(str, enum.Enum):
    """Which of the four input streams a message came from."""

    PURCHASES = "purchases"
    USAGE = "product-usage"
    TICKETS = "tickets"
    PAYMENTS = "payments"


# The bounds of every number and string from outside (docs/events.md, "Bounds"). The Rust
# kernel (native/src/validate.rs) declines anything beyond them, so both models refuse the
# same messages; with them no sequence of valid events can overflow a counter of the record.
#: Characters of any string field (ids, plan, category, reason, ...).
MAX_TEXT: Final = 256
#: Any money field (amount, unit_price, cart_value, mrr), in currency units.
MAX_MONEY: Final = 1_000_000_000.0
#: An item's quantity, a feature use's count.
MAX_QUANTITY: Final = 1_000_000
#: Items in one purchase.
MAX_ITEMS: Final = 1_000
#: A usage session's duration: 30 days.
MAX_DURATION_SECONDS: Final = 2_592_000.0
#: Either end of a survey's scale, and so its score.
MAX_SURVEY_SCALE: Final = 1_000_000.0
#: Characters of a survey answer's free-text comment (shown in the detractor alert).
MAX_COMMENT: Final = 1_000
#: Reason codes of one CSM pulse.
MAX_PULSE_REASONS: Final = 8
#: A pulse without ``expires_at`` counts for this many days.
PULSE_VALID_DAYS: Final = 90
#: The CSM pulse's scale: 1 at serious risk, 2 concerned, 3 neutral, 4 good, 5 advocate.
PULSE_RATINGS: Final = ("at_serious_risk", "concerned", "neutral", "good", "advocate")
#: Timestamps from 2100-01-01T00:00:00Z on are refused (a due date too: a unit mistake).
LATEST_MS: Final = 4_102_444_800_000

NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Money = Annotated[float, msgspec.Meta(ge=0, le=MAX_MONEY)]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT)]
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
Comment = Annotated[str, msgspec.Meta(max_length=MAX_COMMENT)]
Quantity = Annotated[int, msgspec.Meta(ge=1, le=MAX_QUANTITY)]
SurveyNumber = Annotated[float, msgspec.Meta(ge=-MAX_SURVEY_SCALE, le=MAX_SURVEY_SCALE)]


class Item(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    sku: NonEmpty
    quantity: Quantity
    unit_price: Money
    category: Text | None = None


class PurchaseCompleted(msgspec.Struct, frozen=True):
    order_id: NonEmpty
    amount: Money
    currency: Annotated[str, msgspec.Meta(min_length=3, max_length=3)]
    items: Annotated[tuple[Item, ...], msgspec.Meta(max_length=MAX_ITEMS)] = ()


class PurchaseRefunded(msgspec.Struct, frozen=True):
    order_id: NonEmpty
    amount: Money


class CheckoutAbandoned(msgspec.Struct, frozen=True):
    cart_value: Money | None = None


class UsageSession(msgspec.Struct, frozen=True):
    user_id: NonEmpty
    duration_seconds: Annotated[float, msgspec.Meta(ge=0, le=MAX_DURATION_SECONDS)]


class UsageFeature(msgspec.Struct, frozen=True):
    user_id: NonEmpty
    feature: NonEmpty
    count: Quantity = 1


class TicketOpened(msgspec.Struct, frozen=True):
    ticket_id: NonEmpty
    priority: Literal["low", "normal", "high", "urgent"]


class TicketResolved(msgspec.Struct, frozen=True):
    ticket_id: NonEmpty


class TicketReopened(msgspec.Struct, frozen=True):
    ticket_id: NonEmpty


class SurveyAnswered(msgspec.Struct, frozen=True):
    """One answer. ``cli`` is one question of the Customer Loyalty Index (1 = very likely to
    6 = not at all); ``csi`` one of the Customer Secure Index's three (``question`` one of
    CSI_QUESTIONS; yes 1, no 0 by default)."""

    survey: SurveyKind
    score: SurveyNumber
    scale: tuple[SurveyNumber, SurveyNumber] | None = None
    #: What the customer wrote with the answer, if anything.
    comment: Comment | None = None
    #: Which question of the survey (required for csi; free for the others).
    question: Text | None = None
    #: The touchpoint or ticket the answer rates (a CSAT after a ticket, a call...), if any.
    touchpoint: Text | None = None


SurveyKind = Literal["nps", "csat", "ces", "cli", "csi"]


class SurveySent(msgspec.Struct, frozen=True):
    """A survey sent to the customer: with the answers, it says who does not answer."""

    survey: SurveyKind
    #: The touchpoint or ticket the survey asks about, if any.
    touchpoint: Text | None = None


class EmailEvent(msgspec.Struct, frozen=True):
    """A marketing or lifecycle e-mail sent to the customer, opened, clicked, or the customer
    unsubscribing: loyalty signals the articles count (open rate, reactivity, unsubscribe
    rate, solicitations). Counted for the KPIs only: the score does not use them (docs/model.md)."""

    campaign: Text | None = None
    message_id: Text | None = None


class EmailSent(EmailEvent, frozen=True):
    pass


class EmailOpened(EmailEvent, frozen=True):
    pass


class EmailClicked(EmailEvent, frozen=True):
    pass


class EmailUnsubscribed(EmailEvent, frozen=True):
    pass


class CsmTouchpoint(msgspec.Struct, frozen=True):
    """A conversation between the customer-success manager and the customer."""

    channel: Literal["call", "meeting", "email", "qbr"]
    sentiment: Literal["positive", "neutral", "negative"] | None = None
    outcome: Text | None = None
    #: Who (a CSM's id or name); kept out of metrics and INFO logs like customer ids.
    csm: Text | None = None


class CsmPulse(msgspec.Struct, frozen=True):
    """A CSM's rating of the account (PULSE_RATINGS), valid until ``expires_at`` (default:
    PULSE_VALID_DAYS after it was given): an auditable, expiring input, not an override."""

    rating: Annotated[int, msgspec.Meta(ge=1, le=5)]
    reasons: Annotated[tuple[Text, ...], msgspec.Meta(max_length=MAX_PULSE_REASONS)] = ()
    expires_at: str | int | None = None
    csm: Text | None = None


class InvoiceIssued(msgspec.Struct, frozen=True):
    invoice_id: NonEmpty
    amount: Money
    due_at: str | int


class PaymentSucceeded(msgspec.Struct, frozen=True):
    invoice_id: NonEmpty
    amount: Money


class PaymentFailed(msgspec.Struct, frozen=True):
    invoice_id: NonEmpty
    amount: Money
    reason: Text | None = None


class SubscriptionUpdated(msgspec.Struct, frozen=True):
    mrr: Money
    #: Optional plan or tier name; selects per-segment weights when configured.
    plan: Text | None = None


class SubscriptionCancelled(msgspec.Struct, frozen=True):
    reason: Text | None = None


EventData = Union[
    PurchaseCompleted,
    PurchaseRefunded,
    CheckoutAbandoned,
    UsageSession,
    UsageFeature,
    TicketOpened,
    TicketResolved,
    TicketReopened,
    SurveyAnswered,
    SurveySent,
    CsmTouchpoint,
    CsmPulse,
    EmailSent,
    EmailOpened,
    EmailClicked,
    EmailUnsubscribed,
    InvoiceIssued,
    PaymentSucceeded,
    PaymentFailed,
    SubscriptionUpdated,
    SubscriptionCancelled,
]

#: event type -> (topic it belongs to, payload struct)
EVENT_TYPES: dict[str, tuple[TopicKind, type]] = {
    "purchase.completed": (TopicKind.PURCHASES, PurchaseCompleted),
    "purchase.refunded": (TopicKind.PURCHASES, PurchaseRefunded),
    "checkout.abandoned": (TopicKind.PURCHASES, CheckoutAbandoned),
    "usage.session": (TopicKind.USAGE, UsageSession),
    "usage.feature": (TopicKind.USAGE, UsageFeature),
    "email.sent": (TopicKind.USAGE, EmailSent),
    "email.opened": (TopicKind.USAGE, EmailOpened),
    "email.clicked": (TopicKind.USAGE, EmailClicked),
    "email.unsubscribed": (TopicKind.USAGE, EmailUnsubscribed),
    "ticket.opened": (TopicKind.TICKETS, TicketOpened),
    "ticket.resolved": (TopicKind.TICKETS, TicketResolved),
    "ticket.reopened": (TopicKind.TICKETS, TicketReopened),
    "survey.answered": (TopicKind.TICKETS, SurveyAnswered),
    "survey.sent": (TopicKind.TICKETS, SurveySent),
    "csm.touchpoint": (TopicKind.TICKETS, CsmTouchpoint),
    "csm.pulse": (TopicKind.TICKETS, CsmPulse),
    "invoice.issued": (TopicKind.PAYMENTS, InvoiceIssued),
    "payment.succeeded": (TopicKind.PAYMENTS, PaymentSucceeded),
    "payment.failed": (TopicKind.PAYMENTS, PaymentFailed),
    "subscription.updated": (TopicKind.PAYMENTS, SubscriptionUpdated),
    "subscription.cancelled": (TopicKind.PAYMENTS, SubscriptionCancelled),
}

#: Scales a survey answer is on when the producer does not send ``scale``.
DEFAULT_SURVEY_SCALES: dict[str, tuple[float, float]] = {
    "nps": (0.0, 10.0),
    "csat": (1.0, 5.0),
    "ces": (1.0, 7.0),
    "cli": (1.0, 6.0),
    "csi": (0.0, 1.0),
}
#: The Customer Secure Index's questions: satisfied overall, would buy again, would recommend.
CSI_QUESTIONS: Final = ("satisfied", "buy_again", "recommend")


class Event(msgspec.Struct, frozen=True):
    """One validated customer event; ``occurred_at_ms`` is event time."""

    event_id: str
    type: str
    customer_id: str
    occurred_at_ms: int
    data: EventData


class RejectReason(str, enum.Enum):
    """Why a message went to the dead-letter topic (a bounded set: it is a metric label)."""

    NOT_JSON = "not_json"
    #: A null value: Kafka's deletion marker, which carries no event.
    TOMBSTONE = "tombstone"
    #: Bytes that are not UTF-8 (JSON is UTF-8).
    INVALID_UTF8 = "invalid_utf8"
    NOT_OBJECT = "not_object"
    INVALID_FIELD = "invalid_field"
    UNKNOWN_TYPE = "unknown_type"
    WRONG_TOPIC = "wrong_topic"
    KEY_MISMATCH = "key_mismatch"
    INVALID_AMOUNT = "invalid_amount"
    INVALID_TIMESTAMP = "invalid_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    #: A number beyond its documented bound (docs/events.md, "Bounds").
    OUT_OF_RANGE = "out_of_range"
    #: A string or list longer than its documented bound.
    TOO_LONG = "too_long"
    #: Not the producer's fault: validating or applying the event raised. Parked so the stream goes on; report it as a bug.
    PROCESSING_ERROR = "processing_error"


class Rejection(msgspec.Struct, frozen=True):
    reason: RejectReason
    detail: str


class _Envelope(msgspec.Struct, frozen=True):
    event_id: NonEmpty
    type: NonEmpty
    customer_id: NonEmpty
    occurred_at: str | int
    data: dict = {}


_json_decoder = msgspec.json.Decoder()
_ERROR_PATH = re.compile(r"at `\$\.([\w.\[\]]+)`")
_MONEY_FIELDS = {"amount", "cart_value", "mrr", "unit_price"}

# Timestamps before this are surely a unit mistake (seconds sent as milliseconds).
_EARLIEST_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
#: RFC 3339's date-time (section 5.6): Python's fromisoformat takes far more (week dates,
#: a date alone, no separators), which producers in other languages could not rely on.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})")


def parse_timestamp_ms(value: str | int, field: str) -> int | Rejection:
    """RFC 3339 with an explicit offset, or integer epoch milliseconds, from 2000 to 2100."""
    if isinstance(value, bool):
        return Rejection(RejectReason.INVALID_TIMESTAMP, f"{field} must be RFC 3339 or epoch milliseconds")
    if isinstance(value, int):
        millis = value
    else:
        if _RFC3339.fullmatch(value) is None:
            return Rejection(RejectReason.INVALID_TIMESTAMP, f"{field} is not RFC 3339: {value[:40]!r}")
        text = value.upper()
        if len(text) > 26 and "." in text:  # fromisoformat reads at most 6 fractional digits
            head, _, tail = text.partition(".")
            digits = len(tail) - len(tail.lstrip("0123456789"))
            text = f"{head}.{tail[:min(digits, 6)]}{tail[digits:]}"
        try:
            millis = int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            return Rejection(RejectReason.INVALID_TIMESTAMP, f"{field} is not RFC 3339: {value[:40]!r}")
    if millis < _EARLIEST_MS:
        return Rejection(RejectReason.INVALID_TIMESTAMP, f"{field} is before the year 2000 ({millis} ms)")
    if millis >= LATEST_MS:
        return Rejection(RejectReason.OUT_OF_RANGE, f"{field} is in the year 2100 or later")
    return millis


_CHECKED_NUMBERS = ("amount", "cart_value", "mrr", "duration_seconds", "score")
#: Payload type -> which of the checked number fields it has (looked up once per type, not per event).
_NUMBER_FIELDS: dict[type, tuple[str, ...]] = {}


def _amount_problem(data: object) -> str | None:
    """Names the first money field that is NaN or infinite (JSON can carry 1e999)."""
    kind = type(data)
    names = _NUMBER_FIELDS.get(kind)
    if names is None:
        names = _NUMBER_FIELDS[kind] = tuple(name for name in _CHECKED_NUMBERS if hasattr(data, name))
    for name in names:
        value = getattr(data, name)
        if isinstance(value, float) and not math.isfinite(value):
            return name
    for item in getattr(data, "items", ()):
        if not math.isfinite(item.unit_price):
            return "items.unit_price"
    return None


def _typed_envelopes(types: dict[str, type]) -> msgspec.json.Decoder:
    """One decoder for a whole message of any of these event types, tagged by ``type``.

    Valid messages (nearly all of them) are decoded and type-checked in one pass in
    C; anything it refuses is decoded again step by step to name the reason.
    """
    envelopes = []
    for name, payload_type in types.items():
        required = any(field.required for field in msgspec.structs.fields(payload_type))
        data_field = ("data", payload_type) if required else ("data", payload_type, msgspec.field(default_factory=payload_type))
        envelopes.append(
            msgspec.defstruct(
                f"_{payload_type.__name__}Envelope",
                [("event_id", NonEmpty), ("customer_id", NonEmpty), ("occurred_at", Union[str, int]), data_field],
                tag=name,
                tag_field="type",
                frozen=True,
            )
        )
    return msgspec.json.Decoder(Union[tuple(envelopes)])  # type: ignore[arg-type]


_TYPED_DECODERS: dict[TopicKind | None, msgspec.json.Decoder] = {
    kind: _typed_envelopes(
        {name: payload for name, (topic, payload) in EVENT_TYPES.items() if kind is None or topic is kind}
    )
    for kind in [None, *TopicKind]
}


def decode_event(
    key: bytes | None,
    value: bytes | None,
    topic: TopicKind | None,
    now_ms: int,
    max_future_skew_ms: int,
) -> Event | Rejection:
    """Validates one raw message against the wire contract.

    ``topic`` restricts the accepted event types to those of that stream (None
    accepts any type, for files that mix them).
    """
    if value is None:
        return Rejection(RejectReason.TOMBSTONE, "null value (a tombstone): no event to apply")
    try:
        typed = _TYPED_DECODERS[topic].decode(value)
    except UnicodeDecodeError as error:
        return Rejection(RejectReason.INVALID_UTF8, f"value is not UTF-8: {error}")
    except (msgspec.DecodeError, TypeError):
        return _decode_rejected(key, value, topic, now_ms, max_future_skew_ms)
    return _checked(
        key, typed.event_id, type(typed).__struct_config__.tag, typed.customer_id, typed.occurred_at, typed.data, now_ms, max_future_skew_ms
    )


def _decode_rejected(
    key: bytes | None, value: bytes, topic: TopicKind | None, now_ms: int, max_future_skew_ms: int
) -> Event | Rejection:
    """Decodes step by step a message the typed decoder refused, to say why."""
    try:
        raw = _json_decoder.decode(value)
    except UnicodeDecodeError as error:
        return Rejection(RejectReason.INVALID_UTF8, f"value is not UTF-8: {error}")
    except msgspec.DecodeError as error:
        if "out of range" in str(error):  # e.g. 1e999, which would be infinite
            return Rejection(RejectReason.INVALID_AMOUNT, f"a number is out of range (infinite): {error}")
        return Rejection(RejectReason.NOT_JSON, f"value is not JSON: {error}")
    if not isinstance(raw, dict):
        return Rejection(RejectReason.NOT_OBJECT, f"value is a JSON {type(raw).__name__}, not an object")
    try:
        envelope = msgspec.convert(raw, _Envelope)
    except msgspec.ValidationError as error:
        return Rejection(_bound_reason(str(error)) or RejectReason.INVALID_FIELD, str(error))

    known = EVENT_TYPES.get(envelope.type)
    if known is None:
        return Rejection(RejectReason.UNKNOWN_TYPE, f"unknown event type {envelope.type[:60]!r}")
    expected_topic, payload_type = known
    if topic is not None and expected_topic is not topic:
        return Rejection(
            RejectReason.WRONG_TOPIC,
            f"{envelope.type} belongs on {expected_topic.value}, not {topic.value}",
        )
    key_problem = _key_problem(key, envelope.customer_id)
    if key_problem is not None:
        return key_problem
    occurred_at = _occurred_at_ms(envelope.occurred_at, now_ms, max_future_skew_ms)
    if isinstance(occurred_at, Rejection):
        return occurred_at
    try:
        data: EventData = msgspec.convert(envelope.data, payload_type)
    except msgspec.ValidationError as error:
        message = str(error)
        path = _ERROR_PATH.search(message)
        money = path is not None and path.group(1).split(".")[-1] in _MONEY_FIELDS
        reason = _bound_reason(message) or (RejectReason.INVALID_AMOUNT if money else RejectReason.INVALID_FIELD)
        return Rejection(reason, f"data: {message}")
    return _checked(key, envelope.event_id, envelope.type, envelope.customer_id, occurred_at, data, now_ms, max_future_skew_ms)


def _bound_reason(message: str) -> RejectReason | None:
    """too_long or out_of_range when msgspec refused a value past one of the bounds above."""
    if " of length <= " in message:
        return RejectReason.TOO_LONG
    if "` <= " in message:
        return RejectReason.OUT_OF_RANGE
    return None


def _key_problem(key: bytes | None, customer_id: str) -> Rejection | None:
    """An empty key is no key, as a null one: the worker sends the event back keyed."""
    if key and key != customer_id.encode():
        return Rejection(RejectReason.KEY_MISMATCH, "message key differs from customer_id")
    return None


def _occurred_at_ms(occurred_at: str | int, now_ms: int, max_future_skew_ms: int) -> int | Rejection:
    parsed = parse_timestamp_ms(occurred_at, "occurred_at")
    if isinstance(parsed, Rejection):
        return parsed
    if parsed > now_ms + max_future_skew_ms:
        seconds_ahead = (parsed - now_ms) // 1000
        return Rejection(RejectReason.FUTURE_TIMESTAMP, f"occurred_at is {seconds_ahead} s in the future")
    return parsed


def _checked(
    key: bytes | None,
    event_id: str,
    event_type: str,
    customer_id: str,
    occurred_at: str | int,
    data: EventData,
    now_ms: int,
    max_future_skew_ms: int,
) -> Event | Rejection:
    """The checks a schema cannot express, in the order the reasons are documented."""
    key_problem = _key_problem(key, customer_id)
    if key_problem is not None:
        return key_problem
    occurred_at_ms = _occurred_at_ms(occurred_at, now_ms, max_future_skew_ms)
    if isinstance(occurred_at_ms, Rejection):
        return occurred_at_ms
    bad_number = _amount_problem(data)
    if bad_number is not None:
        return Rejection(RejectReason.INVALID_AMOUNT, f"data.{bad_number} is not a finite number")

    if isinstance(data, SurveyAnswered):
        low, high = data.scale or DEFAULT_SURVEY_SCALES[data.survey]
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            return Rejection(RejectReason.INVALID_FIELD, f"data.scale [{low}, {high}] is not a range")
        if not low <= data.score <= high:
            return Rejection(RejectReason.INVALID_FIELD, f"data.score {data.score} outside scale [{low}, {high}]")
        if data.survey == "csi" and data.question not in CSI_QUESTIONS:
            return Rejection(RejectReason.INVALID_FIELD, f"data.question of a csi answer must be one of {', '.join(CSI_QUESTIONS)}")
    if isinstance(data, InvoiceIssued):
        due = parse_timestamp_ms(data.due_at, "data.due_at")
        if isinstance(due, Rejection):
            return due
    if isinstance(data, CsmPulse) and data.expires_at is not None:
        expires = parse_timestamp_ms(data.expires_at, "data.expires_at")
        if isinstance(expires, Rejection):
            return expires

    return Event(event_id=event_id, type=event_type, customer_id=customer_id, occurred_at_ms=occurred_at_ms, data=data)
