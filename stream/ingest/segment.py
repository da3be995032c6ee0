"""Segment's tracking API calls (https://segment.com/docs/connections/spec/) to contract
events, as Segment's and RudderStack's SDKs send them to ``/v1/batch`` (or ``/v1/track``,
``/v1/group``, ``/v1/identify``). Pure: the write key is checked by the server first.

A ``track`` is a usage event of the account it names (``context.groupId`` by Segment's B2B
spec, or ``segment_account_from``): a session for the events in ``segment_session_events``,
else a feature use (the feature named by ``segment_features`` or by the event itself). A
``group`` whose traits carry ``mrr`` (and ``plan``) is a ``subscription.updated``. Each keeps
Segment's ``messageId`` as the event's id, so an SDK's retry is a duplicate to the worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stream.ingest.mapped import Mapped, at_path, event, identifier, ignored, rejected, rfc3339_ms

#: Calls a batch may hold; more is refused (the whole body is bounded by max_body_bytes too).
MAX_BATCH = 10_000


@dataclass(frozen=True)
class SegmentRules:
    account_from: str = "context.groupId"
    session_events: frozenset[str] = frozenset({"Session Started", "Application Opened", "Signed In"})
    features: dict[str, str] = field(default_factory=dict)


def _when(call: dict) -> int | None:
    for name in ("timestamp", "originalTimestamp", "sentAt"):
        at = rfc3339_ms(call.get(name))
        if at is not None:
            return at
    return None


def _track(call: dict, rules: SegmentRules) -> tuple[str, dict] | None:
    name, user = call.get("event"), identifier(call.get("userId")) or identifier(call.get("anonymousId"))
    if not isinstance(name, str) or not name or user is None:
        return None
    properties = call.get("properties") if isinstance(call.get("properties"), dict) else {}
    if name in rules.session_events:
        duration = properties.get("duration_seconds", properties.get("duration", 0))
        seconds = duration if isinstance(duration, (int, float)) and not isinstance(duration, bool) and duration >= 0 else 0
        return "usage.session", {"user_id": user[:256], "duration_seconds": seconds}
    return "usage.feature", {"user_id": user[:256], "feature": rules.features.get(name, name)[:256], "count": 1}


def _group(call: dict) -> tuple[str, dict] | None:
    traits = call.get("traits") if isinstance(call.get("traits"), dict) else {}
    mrr = traits.get("mrr")
    if isinstance(mrr, bool) or not isinstance(mrr, (int, float)):
        return None
    data: dict = {"mrr": mrr}
    if isinstance(traits.get("plan"), str) and traits["plan"]:
        data["plan"] = traits["plan"][:256]
    return "subscription.updated", data


def map_call(call: Any, rules: SegmentRules, kind: str | None = None) -> Mapped:
    """One Segment call (``kind`` from the route, else its ``type``) to a contract event,
    a rejection or an ignored type."""
    if not isinstance(call, dict):
        return rejected("unreadable", "a Segment call is a JSON object")
    kind = kind or call.get("type")
    if kind not in ("track", "group"):
        return ignored(kind or "unknown")
    message_id, at = call.get("messageId"), _when(call)
    change = _track(call, rules) if kind == "track" else _group(call)
    if change is None:
        return ignored(f"{kind}:unmapped")
    if not isinstance(message_id, str) or not message_id or at is None:
        return rejected("unreadable", f"{kind}: no messageId or timestamp")
    account = identifier(call.get("groupId")) if kind == "group" else identifier(at_path(call, rules.account_from))
    if account is None:
        where = "groupId" if kind == "group" else rules.account_from
        return rejected("no_customer_id", f"{kind} {message_id}: no account at {where}")
    contract_type, data = change
    return Mapped(events=(event(message_id, contract_type, account, at, data),))


def map_body(body: Any, rules: SegmentRules, kind: str) -> Mapped:
    """A request body: a batch (``{"batch": [...]}``) for ``kind`` "batch", else one call."""
    if kind != "batch":
        return map_call(body, rules, kind)
    calls = body.get("batch") if isinstance(body, dict) else None
    if not isinstance(calls, list) or len(calls) > MAX_BATCH:
        return rejected("unreadable", f"a batch is {{\"batch\": [...]}} of at most {MAX_BATCH} calls")
    events: list[dict] = []
    refused: list[tuple[str, str]] = []
    skipped: list[str] = []
    for call in calls:
        mapped = map_call(call, rules)
        events += mapped.events
        refused += mapped.rejected
        skipped += mapped.ignored
    return Mapped(tuple(events), tuple(refused), tuple(skipped))
