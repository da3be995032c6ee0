"""Keyed hashes that stand in for personal identifiers where we must keep a trace of them.

An erasure's audit record names the customer by ``subject_hash``: HMAC-SHA256 with the
operator's secret, so the audit trail proves an erasure happened without holding the id,
and whoever lacks the secret cannot test candidate ids against it. Pure: the key is passed in.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from typing import Final

import msgspec


def subject_hash(key: bytes, customer_id: str) -> str:
    """The customer's pseudonym in audit records (hex HMAC-SHA256 of its id)."""
    return hmac.new(key, b"customer:" + customer_id.encode(), hashlib.sha256).hexdigest()


class ErasureRequest(msgspec.Struct, frozen=True):
    """Erase ``customer_id`` (the control topic's keyed records); ``at_ms``, when it was
    asked, is its place in event time, as a sweep tick's."""

    at_ms: int
    request_id: str
    customer_id: str
    subject: str  # the customer's keyed hash, for the audit trail
    reason: str = ""
    #: Not an erasure: the erased customer may come back, with events from ``at_ms`` on
    #: (``healthscore erase --allow-return``). Workers older than this field would erase.
    allow_return: bool = False


class ErasureRecord(msgspec.Struct, frozen=True):
    """The audit record of one erasure: what was deleted, when and why; no customer id."""

    subject: str
    request_id: str
    reason: str
    requested_at: str
    erased_at: str
    deleted: list[str]
    #: Copies that go by their topic's retention or compaction, not at once: copy -> by when.
    expires: dict[str, str] = {}
    #: Events from this time on are applied again (`erase --allow-return`); None: never.
    returns_from: str | None = None


#: A deny-list entry's "never returns".
NEVER: Final = 2**63 - 1


def _epoch_ms(rfc3339: str) -> int:
    return int(datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp() * 1000)


class ErasedCustomers:
    """The deny-list: erased customers by keyed hash, so that no re-read input, redrive or
    waiting alert brings one back. An event of an erased customer is refused if it occurred
    before the customer may return: ``returns_from`` of `erase --allow-return`, or the
    erasure time plus ``quarantine_ms`` when a quarantine is set (0: none), else never.
    Holds the latest audit record of each (the audit topic is its source)."""

    def __init__(self, key: bytes, quarantine_ms: int = 0) -> None:
        self._key = key
        self._quarantine_ms = quarantine_ms
        self._records: dict[str, ErasureRecord] = {}
        self._returns_from: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._records)

    def note(self, record: ErasureRecord) -> None:
        """An audit record (the latest of its subject)."""
        returns = _epoch_ms(record.requested_at) + self._quarantine_ms if self._quarantine_ms else NEVER
        if record.returns_from is not None:
            returns = min(returns, _epoch_ms(record.returns_from))
        self._records[record.subject] = record
        self._returns_from[record.subject] = returns

    def forget(self, subject: str) -> None:
        """A tombstone on the audit topic."""
        self._records.pop(subject, None)
        self._returns_from.pop(subject, None)

    def record_of(self, customer_id: str) -> ErasureRecord | None:
        return self._records.get(subject_hash(self._key, customer_id))

    def refuses(self, customer_id: str, occurred_at_ms: int) -> bool:
        """Whether an event (or alert) of this customer at this time must not be applied (sent)."""
        if not self._records:
            return False
        returns = self._returns_from.get(subject_hash(self._key, customer_id))
        return returns is not None and occurred_at_ms < returns
