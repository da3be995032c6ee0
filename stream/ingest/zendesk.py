"""Zendesk webhooks to contract events. Pure: the signature is checked by the server first.

Two shapes arrive: Zendesk's ticket event webhooks (``zen:event-type:ticket.created``,
``...status_changed``, ``...priority_changed``; https://developer.zendesk.com/api-reference/
webhooks/event-types/ticket-events/), and, for satisfaction ratings (which have no such event),
the body of docs/ingest.md's trigger template, of type ``healthscore.satisfaction``. Each
keeps Zendesk's event id as the event's id.
"""

from __future__ import annotations

from typing import Any

from stream.ingest.mapped import Mapped, at_path, event, identifier, ignored, rejected, rfc3339_ms

CREATED = "zen:event-type:ticket.created"
STATUS_CHANGED = "zen:event-type:ticket.status_changed"
PRIORITY_CHANGED = "zen:event-type:ticket.priority_changed"
SATISFACTION = "healthscore.satisfaction"
DONE = frozenset({"solved", "closed"})
PRIORITIES = {"low": "low", "normal": "normal", "high": "high", "urgent": "urgent"}
#: Zendesk's satisfaction scores → a CSAT answer on 1-5 (good: 5, bad: 1).
RATINGS = {"good": 5, "bad": 1}


def _status(value: Any) -> str | None:
    """A status as the payloads carry it: "SOLVED", "solved" or {"status": "Solved"}."""
    if isinstance(value, dict):
        value = value.get("status")
    return value.lower() if isinstance(value, str) else None


def _priority(value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("priority")
    return PRIORITIES.get(value.lower(), "normal") if isinstance(value, str) else "normal"


def _ticket_change(kind: str, payload: dict) -> tuple[str, dict] | None:
    """The contract event of a ticket event, or None when the change means nothing to the score."""
    ticket_id = identifier(at_path(payload, "detail.id"))
    if ticket_id is None:
        return None
    if kind == CREATED:
        return "ticket.opened", {"ticket_id": ticket_id, "priority": _priority(at_path(payload, "detail.priority"))}
    if kind == PRIORITY_CHANGED:  # ticket.opened for an open ticket changes its priority
        return "ticket.opened", {"ticket_id": ticket_id, "priority": _priority(at_path(payload, "event.current"))}
    current, previous = _status(at_path(payload, "event.current")), _status(at_path(payload, "event.previous"))
    if current in DONE and previous not in DONE:
        return "ticket.resolved", {"ticket_id": ticket_id}
    if previous in DONE and current is not None and current not in DONE:
        return "ticket.reopened", {"ticket_id": ticket_id}
    return None


def _satisfaction(payload: dict) -> tuple[str, dict] | None:
    score = RATINGS.get(str(at_path(payload, "detail.satisfaction_score") or "").strip().lower().split(",")[0].split(" ")[0])
    if score is None:  # "offered", "unoffered": no answer yet
        return None
    data: dict = {"survey": "csat", "score": score}
    comment = at_path(payload, "detail.satisfaction_comment")
    if isinstance(comment, str) and comment.strip():
        data["comment"] = comment.strip()[:1000]
    return "survey.answered", data


def map_event(payload: Any, customer_id_from: str) -> Mapped:
    """One Zendesk webhook body (parsed) to contract events, a rejection or an ignored type."""
    if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
        return rejected("unreadable", "not a Zendesk event (no type)")
    kind = payload["type"]
    if kind not in (CREATED, STATUS_CHANGED, PRIORITY_CHANGED, SATISFACTION):
        return ignored(kind)
    event_id, at = payload.get("id"), rfc3339_ms(payload.get("time"))
    if not isinstance(event_id, str) or not event_id or at is None:
        return rejected("unreadable", f"{kind}: no id or time")
    change = _satisfaction(payload) if kind == SATISFACTION else _ticket_change(kind, payload)
    if change is None:
        return ignored(f"{kind}:no_change")
    customer = identifier(at_path(payload, customer_id_from))
    if customer is None:
        return rejected("no_customer_id", f"{kind} {event_id}: no customer id at {customer_id_from}")
    contract_type, data = change
    return Mapped(events=(event(event_id, contract_type, customer, at, data),))
