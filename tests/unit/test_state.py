"""The per-customer record as an aggregation: tables of events in, state out."""

from __future__ import annotations

import pytest

from scoring.contract import (
    Event,
    InvoiceIssued,
    PaymentFailed,
    PaymentSucceeded,
    PurchaseCompleted,
    SubscriptionCancelled,
    SubscriptionUpdated,
    TicketOpened,
    TicketResolved,
    UsageFeature,
    UsageSession,
)
from scoring.state import (
    COUNTERS,
    DAY_MS,
    MAX_USERS,
    WINDOW_DAYS,
    Outcome,
    apply_event,
    decode_state,
    encode_state,
    new_state,
    window_total,
)

T0 = 1_790_000_000_000


def ev(event_id: str, at: int, data, event_type: str = "x") -> Event:
    return Event(event_id=event_id, type=event_type, customer_id="acme", occurred_at_ms=at, data=data)


def session(event_id: str, at: int, user: str = "u1", seconds: float = 60) -> Event:
    return ev(event_id, at, UsageSession(user, seconds))


def test_a_redelivered_event_changes_nothing() -> None:
    state = new_state("acme")
    assert apply_event(state, session("e1", T0)) is Outcome.APPLIED
    before = encode_state(state)
    assert apply_event(state, session("e1", T0)) is Outcome.DUPLICATE
    assert encode_state(state) == before


def test_dedup_memory_is_bounded_and_forgets_the_oldest_ids() -> None:
    state = new_state("acme")
    for index in range(10):
        apply_event(state, session(f"e{index}", T0 + index), dedup_capacity=4)
    assert len(state.applied_ids) == 4 * 8
    assert apply_event(state, session("e9", T0 + 9), dedup_capacity=4) is Outcome.DUPLICATE
    assert apply_event(state, session("e0", T0), dedup_capacity=4) is Outcome.APPLIED


@pytest.mark.parametrize(
    ("age_days", "outcome"),
    [(0, Outcome.APPLIED), (30, Outcome.APPLIED), (WINDOW_DAYS - 1, Outcome.APPLIED), (WINDOW_DAYS, Outcome.LATE), (400, Outcome.LATE)],
)
def test_late_events_inside_the_longest_window_count_older_ones_do_not(age_days: int, outcome: Outcome) -> None:
    state = new_state("acme")
    apply_event(state, session("now", T0))
    assert apply_event(state, session("late", T0 - age_days * DAY_MS)) is outcome


def test_a_late_event_lands_in_its_own_day_bucket_in_order() -> None:
    state = new_state("acme")
    apply_event(state, session("a", T0))
    apply_event(state, session("b", T0 - 3 * DAY_MS))
    apply_event(state, session("c", T0 - 1 * DAY_MS))
    apply_event(state, session("d", T0 - 3 * DAY_MS))
    days = state.counts.days
    assert days == sorted(days) and len(days) == 3
    assert state.counts.sessions == [2, 1, 1]
    assert all(len(getattr(state.counts, name)) == 3 for name in COUNTERS)


def test_day_buckets_are_pruned_to_the_longest_window() -> None:
    state = new_state("acme")
    for day in range(400):
        apply_event(state, session(f"e{day}", T0 + day * DAY_MS))
    assert len(state.counts.days) == WINDOW_DAYS
    assert window_total(state, "sessions", state.last_event_ms, 7) == 7
    assert window_total(state, "sessions", state.last_event_ms, 1000) == WINDOW_DAYS


def test_state_size_does_not_grow_with_the_number_of_events() -> None:
    state = new_state("acme")
    sizes = []
    for index in range(5000):
        at = T0 + index * (DAY_MS // 20)  # 20 events a day for 250 days
        apply_event(state, session(f"s{index}", at, user=f"u{index % 200}"))
        apply_event(state, ev(f"f{index}", at, UsageFeature(f"u{index % 7}", f"feature-{index % 100}", 2)))
        if index >= 2000 and index % 500 == 499:  # after the 90-day window has filled
            sizes.append(len(encode_state(state)))
    assert max(sizes) - min(sizes) < 200, sizes
    assert max(sizes) < 3072, sizes  # a worst case: every cap (users, features, days) full
    assert len(state.users_last_day) == MAX_USERS


def test_state_round_trips_through_its_serialized_form() -> None:
    state = new_state("acme")
    apply_event(state, session("s", T0))
    apply_event(state, ev("p", T0, PurchaseCompleted("o1", 10.0, "EUR")))
    apply_event(state, ev("t", T0, TicketOpened("t1", "urgent")))
    assert decode_state(encode_state(state)) == state


def test_tickets_open_resolve_and_measure_resolution_time() -> None:
    state = new_state("acme")
    apply_event(state, ev("o", T0, TicketOpened("t1", "high")))
    assert [t.ticket_id for t in state.open_tickets] == ["t1"]
    apply_event(state, ev("r", T0 + 3_600_000, TicketResolved("t1")))
    assert state.open_tickets == [] and state.tickets_resolved == 1 and state.resolution_seconds == [3600.0]


def test_billing_tracks_unpaid_invoices_failures_mrr_and_cancellation() -> None:
    state = new_state("acme")
    apply_event(state, ev("i", T0, InvoiceIssued("inv1", 99.0, T0 + 7 * DAY_MS)))
    apply_event(state, ev("f", T0 + 1, PaymentFailed("inv1", 99.0)))
    assert [i.invoice_id for i in state.unpaid_invoices] == ["inv1"]
    apply_event(state, ev("s", T0 + 2, PaymentSucceeded("inv1", 99.0)))
    assert state.unpaid_invoices == []
    apply_event(state, ev("m1", T0 + 3, SubscriptionUpdated(200.0)))
    apply_event(state, ev("m2", T0 + 4, SubscriptionUpdated(150.0)))
    assert (state.previous_mrr, state.mrr) == (200.0, 150.0)
    apply_event(state, ev("c", T0 + 5, SubscriptionCancelled()))
    assert state.cancelled_ms == T0 + 5


def test_a_redelivered_message_is_dropped_by_its_input_offset_even_with_a_new_event_id() -> None:
    from scoring.contract import TopicKind

    state = new_state("acme")
    assert apply_event(state, session("a", T0), source=(TopicKind.USAGE, 3, 10)) is Outcome.APPLIED
    assert apply_event(state, session("b", T0), source=(TopicKind.USAGE, 3, 10)) is Outcome.DUPLICATE
    assert apply_event(state, session("c", T0), source=(TopicKind.USAGE, 3, 9)) is Outcome.DUPLICATE
    # Offsets are per stream: the same offset on another topic is another message.
    assert apply_event(state, session("d", T0), source=(TopicKind.PURCHASES, 3, 10)) is Outcome.APPLIED
    assert apply_event(state, session("e", T0), source=(TopicKind.USAGE, 3, 11)) is Outcome.APPLIED
    # Topics re-created with another partition count: positions restart, nothing is wrongly dropped.
    assert apply_event(state, session("f", T0), source=(TopicKind.USAGE, 5, 0)) is Outcome.APPLIED
