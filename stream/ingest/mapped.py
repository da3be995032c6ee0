"""What a source's payload maps to: contract events, rejections (data, not exceptions), and
source event types we do not map. Pure: no I/O, no clock."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import msgspec

#: Longest source type name counted in a metric label (a source's own vocabulary, authenticated).
MAX_TYPE_LABEL = 64


class Mapped(msgspec.Struct, frozen=True):
    #: Events in the wire contract (docs/events.md), as dicts ready to encode.
    events: tuple[dict, ...] = ()
    #: (reason, detail) of mappable events that cannot be produced: no customer id, unreadable.
    rejected: tuple[tuple[str, str], ...] = ()
    #: Source event types not mapped (answered 2xx so the source does not retry, and counted).
    ignored: tuple[str, ...] = ()

    def __add__(self, other: "Mapped") -> "Mapped":
        return Mapped(self.events + other.events, self.rejected + other.rejected, self.ignored + other.ignored)


NOTHING = Mapped()


def ignored(kind: object) -> Mapped:
    return Mapped(ignored=(str(kind)[:MAX_TYPE_LABEL],))


def rejected(reason: str, detail: str) -> Mapped:
    return Mapped(rejected=((reason, detail[:500]),))


def event(event_id: str, kind: str, customer_id: str, occurred_at: int | str, data: dict) -> dict:
    """One contract event (``occurred_at`` in epoch ms or RFC 3339)."""
    return {"event_id": event_id, "type": kind, "customer_id": customer_id, "occurred_at": occurred_at, "data": data}


def at_path(document: Any, path: str) -> Any:
    """The value at a dotted path ("detail.organization_id"), or None."""
    for part in path.split("."):
        if not isinstance(document, dict):
            return None
        document = document.get(part)
    return document


def identifier(value: Any) -> str | None:
    """A customer id from a payload value: a non-empty string or an integer (Zendesk's ids are
    numbers, 0 meaning none); anything else is no id."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value) if value > 0 else None
    if isinstance(value, str) and value.strip() and value.strip() != "0":
        return value.strip()
    return None


def seconds_to_ms(value: Any) -> int | None:
    """A Unix time in seconds (Stripe's ``created``) in epoch ms, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 10**11:  # NaN and infinities too
        return None
    return int(value * 1000)


def rfc3339_ms(value: Any) -> int | None:
    """An ISO 8601 / RFC 3339 time in epoch ms (UTC when it has no offset), or None."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return int((moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp() * 1000)
