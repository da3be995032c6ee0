"""One record per customer: everything the score needs, bounded in size.

The record is an aggregation with the shape initialize / add / result:
``new_state`` initializes, ``apply_event`` adds one event (idempotently, by
``event_id``), and ``scoring.health.score_state`` turns it into a result at a
given time. Rolling windows are kept as day buckets in event time, pruned to
the longest window, so memory depends on the window length and not on the
number of events. The record's structs are declared in ``scoring.structs``.
"""

from __future__ import annotations

import hashlib
import hmac
from bisect import bisect_left, bisect_right
from typing import Final

import msgspec

from scoring.contract import (
    DEFAULT_SURVEY_SCALES,
    PULSE_VALID_DAYS,
    CheckoutAbandoned,
    CsmPulse,
    CsmTouchpoint,
    EmailClicked,
    EmailEvent,
    EmailOpened,
    EmailUnsubscribed,
    Event,
    InvoiceIssued,
    PaymentFailed,
    PaymentSucceeded,
    PurchaseCompleted,
    PurchaseRefunded,
    SubscriptionCancelled,
    SubscriptionUpdated,
    SurveyAnswered,
    SurveySent,
    TicketOpened,
    TopicKind,
    TicketReopened,
    TicketResolved,
    UsageFeature,
    UsageSession,
    parse_timestamp_ms,
)
from scoring.structs import (
    COUNTERS,
    CustomerState,
    DayCounts,
    OpenTicket,
    Outcome,
    PublishedScore,
    SurveyResponse,
    UnpaidInvoice,
)

__all__ = ["COUNTERS", "CustomerState", "DayCounts", "OpenTicket", "Outcome", "PublishedScore", "SurveyResponse", "UnpaidInvoice"]

DAY_MS: Final = 86_400_000
#: The longest rolling window; events older than this (behind the customer's latest event) are late.
WINDOW_DAYS: Final = 90
PRIORITIES: Final = ("low", "normal", "high", "urgent")

# Caps that keep one record bounded whatever a customer sends.
MAX_USERS: Final = 64
MAX_FEATURES: Final = 48
MAX_CATEGORIES: Final = 24
MAX_OPEN_TICKETS: Final = 32
MAX_RESOLUTIONS: Final = 16
MAX_SURVEYS: Final = 12
MAX_INVITES: Final = 12
MAX_MRR_CHANGES: Final = 8
MAX_INVOICES: Final = 24
DEFAULT_DEDUP_CAPACITY: Final = 32
#: A day counter saturates here (2**53 - 1, exact as a float): with the contract's bounds a
#: customer would need 90,000 purchases of the largest amount in one day to reach it, and
#: 90 days of saturated counters still sum far below 2**63 in the kernel.
COUNTER_MAX: Final = 9_007_199_254_740_991
_FINGERPRINT_BYTES: Final = 8
#: The users' fingerprint key when privacy.hash_key is not set: public, so the fingerprints
#: are not pseudonymous (the worker warns at start).
DEFAULT_USER_HASH_KEY: Final = b"healthscore: set privacy.hash_key"
_STREAMS = tuple(TopicKind)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(CustomerState)
_elements = msgspec.msgpack.Decoder(list[msgspec.Raw])

#: The layout this code writes. Layout 1: the 35 fields before ``layout``; 2: ``layout`` added;
#: 3: ``cancellation_reason`` after it; 4: the CSM relationship (contact, pulse) and survey
#: invitations after that. A newer layout appends fields after the known ones; this code
#: keeps them (:func:`decode_record`).
LAYOUT: Final = 5
#: Fields of the record this code knows.
KNOWN_FIELDS: Final = len(CustomerState.__struct_fields__)
#: Where ``layout`` is in the record (it stays there; later layouts append after the known fields).
LAYOUT_INDEX: Final = CustomerState.__struct_fields__.index("layout")


def new_state(customer_id: str) -> CustomerState:
    return CustomerState(customer_id=customer_id, layout=LAYOUT)


def encode_state(state: CustomerState) -> bytes:
    """The record as stored; an older layout's record is written in this one (``layout`` set)."""
    if state.layout < LAYOUT:
        state = msgspec.structs.replace(state, layout=LAYOUT)  # once per record, after an upgrade
    return _encoder.encode(state)


def decode_state(raw: bytes) -> CustomerState:
    """The fields this code knows, of a record of any layout (a newer one's extra fields are
    not read: use :func:`decode_record` to write such a record back)."""
    return _decoder.decode(raw)


def _element_count(raw: bytes) -> int:
    """The record's field count, from its msgpack array header."""
    head = raw[0] if raw else 0
    if 0x90 <= head <= 0x9F:
        return head & 0x0F
    if head == 0xDC:
        return int.from_bytes(raw[1:3], "big")
    if head == 0xDD:
        return int.from_bytes(raw[1:5], "big")
    return 0


def decode_record(raw: bytes) -> tuple[CustomerState, tuple[bytes, ...]]:
    """The record and, for one written by a newer layout, the encoded fields this code does
    not know (else ()), to be written back after the known ones by :func:`encode_record`,
    so an older worker never drops what a newer one stored."""
    state = _decoder.decode(raw)
    if _element_count(raw) <= KNOWN_FIELDS:
        return state, ()
    return state, tuple(bytes(element) for element in _elements.decode(raw)[KNOWN_FIELDS:])


def encode_record(state: CustomerState, unknown: tuple[bytes, ...]) -> bytes:
    """:func:`encode_state`, followed by a newer layout's fields this code does not know (its
    ``layout``, read among the known fields, is kept: the record is still of that layout)."""
    known = encode_state(state)
    if not unknown:
        return known
    header = 1 if 0x90 <= known[0] <= 0x9F else 3 if known[0] == 0xDC else 5
    return b"\xdc" + (KNOWN_FIELDS + len(unknown)).to_bytes(2, "big") + known[header:] + b"".join(unknown)


def add_count(counts: DayCounts, day: int, counter: str, amount: int = 1) -> int:
    """Adds to one counter of one day; returns the counter's value before."""
    days = counts.days
    if days and days[-1] == day:
        index = len(days) - 1
    else:
        index = bisect_left(days, day)
        if index == len(days) or days[index] != day:
            days.insert(index, day)
            for name in COUNTERS:
                getattr(counts, name).insert(index, 0)
    column: list[int] = getattr(counts, counter)
    before = column[index]
    total = before + amount
    column[index] = total if total <= COUNTER_MAX else COUNTER_MAX
    return before


def drop_days_before(counts: DayCounts, day: int) -> None:
    cut = bisect_left(counts.days, day)
    if cut:
        del counts.days[:cut]
        for name in COUNTERS:
            del getattr(counts, name)[:cut]


def event_fingerprint(event_id: str) -> bytes:
    """64-bit digest of an event id: collisions are negligible for the few ids kept."""
    return hashlib.blake2b(event_id.encode(), digest_size=_FINGERPRINT_BYTES).digest()


def user_fingerprint(user_id: str, key: bytes) -> int:
    """A keyed 32-bit fingerprint (HMAC-SHA256, first 4 bytes): enough to tell a customer's users
    apart (a rare collision merges two users' activity), and without the key no one can test
    a candidate user id against it."""
    return int.from_bytes(hmac.new(key, user_id.encode(), hashlib.sha256).digest()[:4], "big")


def _seen(applied: bytes, fingerprint: bytes) -> bool:
    position = applied.find(fingerprint)
    while position != -1:
        if position % _FINGERPRINT_BYTES == 0:
            return True
        position = applied.find(fingerprint, position + 1)
    return False


def _remember_last_day(mapping: dict, key: str | int, day: int, cap: int) -> None:
    if mapping.get(key, -1) < day:
        mapping[key] = day
    if len(mapping) > cap:
        del mapping[min(mapping, key=mapping.__getitem__)]


def apply_event(
    state: CustomerState,
    event: Event,
    dedup_capacity: int = DEFAULT_DEDUP_CAPACITY,
    source: tuple[TopicKind, int, int] | None = None,
    user_key: bytes = DEFAULT_USER_HASH_KEY,
) -> Outcome:
    """Adds one validated event to the customer's record, at most once.

    Two guards make it idempotent: the input position ``source`` (stream,
    partition, offset), which drops any redelivery of a message already
    applied, and the fingerprints of the last ``dedup_capacity`` event ids,
    which drop an event sent twice as two messages.
    """
    if source is not None and _redelivered(state, source):
        return Outcome.DUPLICATE
    fingerprint = event_fingerprint(event.event_id)
    if _seen(state.applied_ids, fingerprint):
        return Outcome.DUPLICATE
    at = event.occurred_at_ms
    if state.last_event_ms and at <= state.last_event_ms - WINDOW_DAYS * DAY_MS:
        return Outcome.LATE

    state.applied_ids = (state.applied_ids + fingerprint)[-dedup_capacity * _FINGERPRINT_BYTES :]
    day = at // DAY_MS
    data = event.data
    if isinstance(data, (SurveySent, CsmPulse, EmailEvent)):
        # The company's own acts (and the e-mails, counted for the KPIs only): they leave the
        # customer's activity (and silence) alone.
        state.events_applied += 1
        if isinstance(data, EmailEvent):
            _apply_email(state, data, at)
        else:
            _apply_outbound(state, data, at)
        return Outcome.APPLIED
    _note_activity(state, at, day)
    if isinstance(data, CsmTouchpoint):
        if data.sentiment == "negative":
            state.negative_contact_ms = max(state.negative_contact_ms, at)
        else:
            if at >= state.contact_ms:  # the latest touchpoint by its time, whatever order they arrive in
                state.contact_score = state.published.score if state.published is not None else -1.0
            state.contact_ms = max(state.contact_ms, at)
    elif isinstance(data, (UsageSession, UsageFeature)):
        _apply_usage(state, data, at, day, user_key)
    elif isinstance(data, (PurchaseCompleted, PurchaseRefunded, CheckoutAbandoned)):
        _apply_purchase(state, data, at, day)
    elif isinstance(data, (TicketOpened, TicketResolved, TicketReopened, SurveyAnswered)):
        _apply_support(state, data, at, day)
    else:
        _apply_billing(state, data, at, day)
    drop_days_before(state.counts, state.last_event_ms // DAY_MS - WINDOW_DAYS + 1)
    return Outcome.APPLIED


def pulse_expiry_ms(data: CsmPulse, at: int) -> int:
    """Until when a pulse counts: its ``expires_at``, else PULSE_VALID_DAYS after it was given."""
    if data.expires_at is None:
        return at + PULSE_VALID_DAYS * DAY_MS
    expires = parse_timestamp_ms(data.expires_at, "expires_at")
    return expires if isinstance(expires, int) else at + PULSE_VALID_DAYS * DAY_MS


def _apply_email(state: CustomerState, data: EmailEvent, at: int) -> None:
    """Per-day counts of e-mails sent, opened and clicked over the 90 days up to the latest
    e-mail day (whatever order they arrive in), and the latest unsubscription."""
    if isinstance(data, EmailUnsubscribed):
        state.email_unsubscribed_ms = max(state.email_unsubscribed_ms, at)
        return
    day = at // DAY_MS
    latest = day
    for entry in state.email_days:
        latest = max(latest, entry[0])
    if day <= latest - WINDOW_DAYS:
        return
    column = 3 if isinstance(data, EmailClicked) else 2 if isinstance(data, EmailOpened) else 1
    for index, entry in enumerate(state.email_days):
        if entry[0] == day:
            state.email_days[index] = _bumped(entry, column)
            break
    else:
        state.email_days.append(_bumped((day, 0, 0, 0), column))
        state.email_days.sort()
    state.email_days = [entry for entry in state.email_days if entry[0] > latest - WINDOW_DAYS]


def _bumped(entry: tuple[int, int, int, int], column: int) -> tuple[int, int, int, int]:
    counts = list(entry)
    counts[column] = min(counts[column] + 1, COUNTER_MAX)
    return (counts[0], counts[1], counts[2], counts[3])


def _apply_outbound(state: CustomerState, data: SurveySent | CsmPulse, at: int) -> None:
    """A survey sent, or a CSM's pulse: the latest pulse by time wins (the lower rating on a tie),
    whatever order they arrive in."""
    if isinstance(data, SurveySent):
        state.survey_invites.append((at, data.survey))
        state.survey_invites.sort()
        del state.survey_invites[:-MAX_INVITES]
    elif at > state.pulse_at_ms or (at == state.pulse_at_ms and data.rating < state.pulse_rating):
        state.pulse_rating = data.rating
        state.pulse_at_ms = at
        state.pulse_expires_ms = pulse_expiry_ms(data, at)
        state.pulse_reasons = list(data.reasons)


def _redelivered(state: CustomerState, source: tuple[TopicKind, int, int]) -> bool:
    """Whether this input position was applied already; remembers it otherwise."""
    stream, partition, offset = source
    index = _STREAMS.index(stream)
    if partition != state.source_partition:
        state.source_partition = partition
        state.source_offsets = [-1, -1, -1, -1]
    elif offset <= state.source_offsets[index]:
        return True
    state.source_offsets[index] = offset
    return False


def _note_activity(state: CustomerState, at: int, day: int) -> None:
    """The counters every event moves: events, active days, the gap between them, first and last."""
    state.events_applied += 1
    if not state.active_days:
        state.active_days = 1
    elif day > state.last_event_ms // DAY_MS:
        gap = day - state.last_event_ms // DAY_MS
        state.active_days += 1
        # float(): the field is a float; an int would be written to the record as one.
        state.gap_days_mean = float(gap) if state.active_days == 2 else 0.7 * state.gap_days_mean + 0.3 * gap
    if not state.first_event_ms or at < state.first_event_ms:
        state.first_event_ms = at
    if at > state.last_event_ms:
        state.last_event_ms = at


def _apply_usage(state: CustomerState, data: UsageSession | UsageFeature, at: int, day: int, user_key: bytes) -> None:
    if isinstance(data, UsageSession):
        add_count(state.counts, day, "sessions")
    else:
        add_count(state.counts, day, "feature_uses", data.count)
    _remember_last_day(state.users_last_day, user_fingerprint(data.user_id, user_key), day, MAX_USERS)
    if isinstance(data, UsageFeature):
        _remember_last_day(state.features_last_day, data.feature, day, MAX_FEATURES)
    state.last_usage_ms = max(state.last_usage_ms, at)


def _apply_purchase(state: CustomerState, data: PurchaseCompleted | PurchaseRefunded | CheckoutAbandoned, at: int, day: int) -> None:
    counts = state.counts
    match data:
        case PurchaseCompleted():
            if add_count(counts, day, "purchases") == 0:
                state.purchase_days += 1
            add_count(counts, day, "revenue_cents", round(data.amount * 100))
            if not state.first_purchase_ms or at < state.first_purchase_ms:
                state.first_purchase_ms = at
            state.last_purchase_ms = max(state.last_purchase_ms, at)
            for item in data.items:
                if item.category:
                    _note_category(state, item.category, at)
        case PurchaseRefunded():
            add_count(counts, day, "refunds_cents", round(data.amount * 100))
        case CheckoutAbandoned():
            add_count(counts, day, "abandoned_checkouts")


def _note_category(state: CustomerState, category: str, at: int) -> None:
    """A category bought at ``at``: kept (up to MAX_CATEGORIES) with its earliest purchase time,
    whatever order the purchases arrive in (an older layout's categories read as bought at 0)."""
    first = state.category_first_ms
    while len(first) < len(state.categories):
        first.append(0)
    if category in state.categories:
        index = state.categories.index(category)
        if first[index] > at:
            first[index] = at
    elif len(state.categories) < MAX_CATEGORIES:
        state.categories.append(category)
        first.append(at)


def _apply_support(state: CustomerState, data: TicketOpened | TicketResolved | TicketReopened | SurveyAnswered, at: int, day: int) -> None:
    match data:
        case TicketOpened():
            add_count(state.counts, day, "tickets_opened")
            _open_ticket(state, data.ticket_id, at, PRIORITIES.index(data.priority), reprioritize=True)
        case TicketResolved():
            for ticket in state.open_tickets:
                if ticket.ticket_id == data.ticket_id:
                    state.open_tickets.remove(ticket)
                    state.tickets_resolved += 1
                    state.resolution_seconds.append(max(0.0, (at - ticket.opened_ms) / 1000))
                    del state.resolution_seconds[:-MAX_RESOLUTIONS]
                    state.resolution_days.append(day)
                    del state.resolution_days[:-MAX_RESOLUTIONS]
                    break
        case TicketReopened():
            state.tickets_reopened += 1
            _open_ticket(state, data.ticket_id, at, PRIORITIES.index("normal"))
        case SurveyAnswered():
            low, high = data.scale or DEFAULT_SURVEY_SCALES[data.survey]
            # A CSI answer is kept with its question ("csi.recommend"): the index needs all three.
            kind = f"csi.{data.question}" if data.survey == "csi" else data.survey
            state.surveys.append(SurveyResponse(kind, data.score, low, high, at))
            state.surveys.sort(key=lambda response: response.answered_ms)
            del state.surveys[:-MAX_SURVEYS]


def _apply_billing(state: CustomerState, data: object, at: int, day: int) -> None:
    match data:
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
            add_count(state.counts, day, "payments_failed")
        case SubscriptionUpdated():
            state.has_billing = True
            if data.plan:
                state.plan = data.plan
            if data.mrr != state.mrr:
                state.previous_mrr = state.mrr
                state.mrr = data.mrr
            if state.cancelled_ms and at > state.cancelled_ms:
                state.cancelled_ms = 0  # resubscribed
                state.cancellation_reason = None
            _note_mrr(state, at, data.mrr)
        case SubscriptionCancelled():
            state.has_billing = True
            if at >= state.cancelled_ms:  # the latest cancellation's reason
                state.cancellation_reason = data.reason or None
            state.cancelled_ms = max(state.cancelled_ms, at)
            _note_mrr(state, at, 0.0)


def _note_mrr(state: CustomerState, at: int, mrr: float) -> None:
    state.mrr_changes.append((at, mrr))
    state.mrr_changes.sort()
    del state.mrr_changes[:-MAX_MRR_CHANGES]


def _open_ticket(state: CustomerState, ticket_id: str, at: int, priority: int, reprioritize: bool = False) -> None:
    """A ticket opened (or reopened); ``ticket.opened`` for one already open changes its priority."""
    for ticket in state.open_tickets:
        if ticket.ticket_id == ticket_id:
            if reprioritize:
                ticket.priority = priority
            return
    state.open_tickets.append(OpenTicket(ticket_id, at, priority))
    del state.open_tickets[:-MAX_OPEN_TICKETS]


def window_total(state: CustomerState, counter: str, at_ms: int, days: int) -> int:
    """Sum of one day counter over the ``days`` UTC days ending with the day of ``at_ms``."""
    last_day = at_ms // DAY_MS
    return day_total(state.counts, counter, last_day - days + 1, last_day)


def day_total(counts: DayCounts, counter: str, first_day: int, last_day: int) -> int:
    """Sum of one counter over the days first_day..last_day inclusive."""
    column: list[int] = getattr(counts, counter)
    total = 0
    for index in range(bisect_left(counts.days, first_day), bisect_right(counts.days, last_day)):
        total += column[index]
    return total
