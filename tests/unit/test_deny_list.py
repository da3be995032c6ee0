"""The deny-list of erased customers (scoring.privacy.ErasedCustomers): by keyed hash, with
the time from which a customer may return."""

from __future__ import annotations

from scoring.output import rfc3339
from scoring.privacy import ErasedCustomers, ErasureRecord, subject_hash

KEY = b"a-test-hash-key-0123456789abcdef"
DAY_MS = 86_400_000
ERASED_MS = 1_790_000_000_000


def record(customer: str, returns_from_ms: int | None = None, key: bytes = KEY) -> ErasureRecord:
    returns = rfc3339(returns_from_ms) if returns_from_ms is not None else None
    return ErasureRecord(subject_hash(key, customer), "r-1", "ticket 1", rfc3339(ERASED_MS), rfc3339(ERASED_MS + 5), ["state"], {}, returns)


def test_an_erased_customer_is_refused_at_any_time_and_others_are_not() -> None:
    erased = ErasedCustomers(KEY)
    assert not erased.refuses("erin", ERASED_MS)  # empty: nothing refused
    erased.note(record("erin"))
    assert len(erased) == 1
    for at in (ERASED_MS - 400 * DAY_MS, ERASED_MS, ERASED_MS + 400 * DAY_MS):
        assert erased.refuses("erin", at)
    assert not erased.refuses("olga", ERASED_MS)
    assert erased.record_of("erin") == record("erin") and erased.record_of("olga") is None


def test_allowed_to_return_only_events_from_that_time_on_are_applied() -> None:
    erased = ErasedCustomers(KEY)
    erased.note(record("erin"))
    erased.note(record("erin", returns_from_ms=ERASED_MS + 3 * DAY_MS))  # the latest audit record wins
    assert erased.refuses("erin", ERASED_MS + 3 * DAY_MS - 1)  # a re-read of the old events stays refused
    assert not erased.refuses("erin", ERASED_MS + 3 * DAY_MS)


def test_a_quarantine_lets_events_after_it_back() -> None:
    erased = ErasedCustomers(KEY, quarantine_ms=30 * DAY_MS)
    erased.note(record("erin"))
    assert erased.refuses("erin", ERASED_MS + 30 * DAY_MS - 1)
    assert not erased.refuses("erin", ERASED_MS + 30 * DAY_MS)
    erased.note(record("erin", returns_from_ms=ERASED_MS + DAY_MS))  # an explicit return, earlier, wins
    assert not erased.refuses("erin", ERASED_MS + DAY_MS)


def test_a_tombstone_forgets_and_another_key_recognises_no_one() -> None:
    erased = ErasedCustomers(KEY)
    erased.note(record("erin"))
    erased.forget(subject_hash(KEY, "erin"))
    assert len(erased) == 0 and not erased.refuses("erin", ERASED_MS)
    other = ErasedCustomers(b"another-key-of-32-characters-xx")
    other.note(record("erin"))
    assert not other.refuses("erin", ERASED_MS)  # why a worker without the key must not start
