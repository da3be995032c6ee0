"""One record per customer: everything the score needs, bounded in size.

The record is an aggregation with the shape initialize / add / result:
``new_state`` initializes, ``apply_event`` adds one event (idempotently, by
``event_id``), and ``scoring.health.score_state`` turns it into a result at a
given time. Rolling windows are kept as day buckets in event time, pruned to
the longest window, so memory depends on the window length and not on the
number of events. The record is serialized with msgpack as positional arrays
(``array_like``) to keep it small; new fields are only ever appended, with
defaults, so old changelog records still decode.
"""

from __future__ import annotations

import enum
import hashlib

import msgspec

from scoring.contract import (
    DEFAULT_SURVEY_SCALES,
    CheckoutAbandoned,
    Event,
    InvoiceIssued,
    PaymentFailed,
    PaymentSucceeded,
    PurchaseCompleted,
    PurchaseRefunded,
    SubscriptionCancelled,
    SubscriptionUpdated,
    SurveyAnswered,
    TicketOpened,
    TicketReopened,
    TicketResolved,
    UsageFeature,
    UsageSession,
    parse_timestamp_ms,
)

DAY_MS = 86_400_000
#: The longest rolling window; events older than this (behind the customer's latest event) are late.
WINDOW_DAYS = 90
PRIORITIES = ("low", "normal", "high", "urgent")

# Caps that keep one record bounded whatever a customer sends.
MAX_USERS = 64
MAX_FEATURES = 48
MAX_CATEGORIES = 24
MAX_OPEN_TICKETS = 32
MAX_RESOLUTIONS = 16
MAX_SURVEYS = 12
MAX_INVOICES = 24
DEFAULT_DEDUP_CAPACITY = 64


class DayBucket(msgspec.Struct, array_like=True):
    """Counts for one UTC day of event time."""

    day: int
    sessions: int = 0
    session_seconds: float = 0.0
    feature_uses: int = 0
    purchases: int = 0
    revenue: float = 0.0
    abandoned_checkouts: int = 0
    tickets_opened: int = 0
    payments_failed: int = 0
    refunds: float = 0.0


class OpenTicket(msgspec.Struct, array_like=True):
    ticket_id: str
    opened_ms: int
    priority: int  # index into PRIORITIES


class SurveyResponse(msgspec.Struct, array_like=True):
    survey: str
    score: float
    scale_min: float
    scale_max: float
    answered_ms: int


class UnpaidInvoice(msgspec.Struct, array_like=True):
    invoice_id: str
    amount: float
    due_ms: int


class PublishedScore(msgspec.Struct, array_like=True):
    """What was last published for this customer, to detect changes and explain deltas."""

    score: float
    band: str
    as_of_ms: int
    #: component → its contribution in points to the published score
    contributions: dict[str, float] = {}


class CustomerState(msgspec.Struct, array_like=True):
    customer_id: str
    first_event_ms: int = 0
    last_event_ms: int = 0
    days: list[DayBucket] = []
    users_last_day: dict[str, int] = {}
    features_last_day: dict[str, int] = {}
    last_usage_ms: int = 0
    first_purchase_ms: int = 0
    last_purchase_ms: int = 0
    purchase_days: int = 0
    categories: list[str] = []
    open_tickets: list[OpenTicket] = []
    tickets_resolved: int = 0
    tickets_reopened: int = 0
    resolution_seconds: list[float] = []
    surveys: list[SurveyResponse] = []
    unpaid_invoices: list[UnpaidInvoice] = []
    has_billing: bool = False
    mrr: float = 0.0
    previous_mrr: float = 0.0
    cancelled_ms: int = 0
    applied_ids: list[int] = []
    published: PublishedScore | None = None
    events_applied: int = 0
    plan: str | None = None


class Outcome(str, enum.Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    LATE = "late"


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(CustomerState)


def new_state(customer_id: str) -> CustomerState:
    return CustomerState(customer_id=customer_id)


def encode_state(state: CustomerState) -> bytes:
    return _encoder.encode(state)


def decode_state(raw: bytes) -> CustomerState:
    return _decoder.decode(raw)


def event_fingerprint(event_id: str) -> int:
    """64-bit digest of an event id: collisions are negligible for the few ids kept."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "big", signed=True)


def _bucket(state: CustomerState, day: int) -> DayBucket:
    days = state.days
    if days and days[-1].day == day:
        return days[-1]
    for index in range(len(days) - 1, -1, -1):
        if days[index].day == day:
            return days[index]
        if days[index].day < day:
            bucket = DayBucket(day=day)
            days.insert(index + 1, bucket)
            return bucket
    bucket = DayBucket(day=day)
    days.insert(0, bucket)
    return bucket


def _prune(state: CustomerState) -> None:
    oldest_day = state.last_event_ms // DAY_MS - WINDOW_DAYS
    days = state.days
    cut = 0
    while cut < len(days) and days[cut].day <= oldest_day:
        cut += 1
    if cut:
        del days[:cut]


def _remember_last_day(mapping: dict[str, int], key: str, day: int, cap: int) -> None:
    if mapping.get(key, -1) < day:
        mapping[key] = day
    if len(mapping) > cap:
        del mapping[min(mapping, key=mapping.__getitem__)]


def apply_event(state: CustomerState, event: Event, dedup_capacity: int = DEFAULT_DEDUP_CAPACITY) -> Outcome:
    """Adds one validated event to the customer's record, at most once per event id."""
    fingerprint = event_fingerprint(event.event_id)
    if fingerprint in state.applied_ids:
        return Outcome.DUPLICATE
    at = event.occurred_at_ms
    if state.last_event_ms and at <= state.last_event_ms - WINDOW_DAYS * DAY_MS:
        return Outcome.LATE

    state.applied_ids.append(fingerprint)
    if len(state.applied_ids) > dedup_capacity:
        del state.applied_ids[: len(state.applied_ids) - dedup_capacity]
    state.events_applied += 1
    if not state.first_event_ms or at < state.first_event_ms:
        state.first_event_ms = at
    if at > state.last_event_ms:
        state.last_event_ms = at

    day = at // DAY_MS
    data = event.data
    match data:
        case UsageSession():
            bucket = _bucket(state, day)
            bucket.sessions += 1
            bucket.session_seconds += data.duration_seconds
            _remember_last_day(state.users_last_day, data.user_id, day, MAX_USERS)
            state.last_usage_ms = max(state.last_usage_ms, at)
        case UsageFeature():
            _bucket(state, day).feature_uses += data.count
            _remember_last_day(state.users_last_day, data.user_id, day, MAX_USERS)
            _remember_last_day(state.features_last_day, data.feature, day, MAX_FEATURES)
            state.last_usage_ms = max(state.last_usage_ms, at)
        case PurchaseCompleted():
            bucket = _bucket(state, day)
            if bucket.purchases == 0:
                state.purchase_days += 1
            bucket.purchases += 1
            bucket.revenue += data.amount
            if not state.first_purchase_ms or at < state.first_purchase_ms:
                state.first_purchase_ms = at
            state.last_purchase_ms = max(state.last_purchase_ms, at)
            for item in data.items:
                if item.category and item.category not in state.categories and len(state.categories) < MAX_CATEGORIES:
                    state.categories.append(item.category)
        case PurchaseRefunded():
            _bucket(state, day).refunds += data.amount
        case CheckoutAbandoned():
            _bucket(state, day).abandoned_checkouts += 1
        case TicketOpened():
            _bucket(state, day).tickets_opened += 1
            _open_ticket(state, data.ticket_id, at, PRIORITIES.index(data.priority))
        case TicketResolved():
            for ticket in state.open_tickets:
                if ticket.ticket_id == data.ticket_id:
                    state.open_tickets.remove(ticket)
                    state.tickets_resolved += 1
                    state.resolution_seconds.append(max(0.0, (at - ticket.opened_ms) / 1000))
                    del state.resolution_seconds[:-MAX_RESOLUTIONS]
                    break
        case TicketReopened():
            state.tickets_reopened += 1
            _open_ticket(state, data.ticket_id, at, PRIORITIES.index("normal"))
        case SurveyAnswered():
            low, high = data.scale or DEFAULT_SURVEY_SCALES[data.survey]
            state.surveys.append(SurveyResponse(data.survey, data.score, low, high, at))
            state.surveys.sort(key=lambda response: response.answered_ms)
            del state.surveys[:-MAX_SURVEYS]
        case InvoiceIssued():
            state.has_billing = True
            due = parse_timestamp_ms(data.due_at, "due_at")
            due_ms = due if isinstance(due, int) else at
            state.unpaid_invoices = [i for i in state.unpaid_invoices if i.invoice_id != data.invoice_id]
            state.unpaid_invoices.append(UnpaidInvoice(data.invoice_id, data.amount, due_ms))
            del state.unpaid_invoices[:-MAX_INVOICES]
        case PaymentSucceeded():
            state.has_billing = True
            state.unpaid_invoices = [i for i in state.unpaid_invoices if i.invoice_id != data.invoice_id]
        case PaymentFailed():
            state.has_billing = True
            _bucket(state, day).payments_failed += 1
        case SubscriptionUpdated():
            state.has_billing = True
            if data.plan:
                state.plan = data.plan
            if data.mrr != state.mrr:
                state.previous_mrr = state.mrr
                state.mrr = data.mrr
            if state.cancelled_ms and at > state.cancelled_ms:
                state.cancelled_ms = 0  # resubscribed
        case SubscriptionCancelled():
            state.has_billing = True
            state.cancelled_ms = max(state.cancelled_ms, at)
    _prune(state)
    return Outcome.APPLIED


def _open_ticket(state: CustomerState, ticket_id: str, at: int, priority: int) -> None:
    if any(ticket.ticket_id == ticket_id for ticket in state.open_tickets):
        return
    state.open_tickets.append(OpenTicket(ticket_id, at, priority))
    del state.open_tickets[:-MAX_OPEN_TICKETS]


def window(state: CustomerState, at_ms: int, days: int) -> list[DayBucket]:
    """Buckets of the ``days`` UTC days ending with the day of ``at_ms``."""
    last_day = at_ms // DAY_MS
    first_day = last_day - days + 1
    return [bucket for bucket in state.days if first_day <= bucket.day <= last_day]
