"""Keyed hashes that stand in for personal identifiers where we must keep a trace of them.

An erasure's audit record names the customer by ``subject_hash``: HMAC-SHA256 with the
operator's secret, so the audit trail proves an erasure happened without holding the id,
and whoever lacks the secret cannot test candidate ids against it. Pure: the key is passed in.
"""

from __future__ import annotations

import hashlib
import hmac

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


class ErasureRecord(msgspec.Struct, frozen=True):
    """The audit record of one erasure: what was deleted, when and why; no customer id."""

    subject: str
    request_id: str
    reason: str
    requested_at: str
    erased_at: str
    deleted: list[str]
