"""Stripe webhook events (https://docs.stripe.com/api/events) to contract events. Pure: the
signature is checked by the server with the ``stripe`` library before this runs.

Amounts come in the currency's smallest unit (cents), except for zero-decimal currencies;
MRR is the subscription items' prices × quantities, per month. Each mapped event keeps
Stripe's event id (``evt_...``), so Stripe's retries are duplicates to the worker.
"""

from __future__ import annotations

from typing import Any, Callable

from stream.ingest.mapped import NOTHING, Mapped, at_path, event, identifier, ignored, rejected, seconds_to_ms

#: https://docs.stripe.com/currencies#zero-decimal
ZERO_DECIMAL = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())
#: Months per billing interval of a recurring price.
MONTHS_PER = {"day": 12 / 365, "week": 12 / 52, "month": 1.0, "year": 12.0}
#: Stripe's cancellation feedback → our exit reason codes (cancellation_reasons).
FEEDBACK = {
    "too_expensive": "price",
    "missing_features": "missing_feature",
    "switched_service": "competitor",
    "unused": "no_longer_needed",
    "customer_service": "support",
    "too_complex": "technical_issues",
    "low_quality": "technical_issues",
    "other": "other",
}


def money(minor: Any, currency: Any) -> float | None:
    if isinstance(minor, bool) or not isinstance(minor, (int, float)):
        return None
    return minor / (1 if str(currency).lower() in ZERO_DECIMAL else 100)


def customer_of(obj: dict, customer_id_from: str) -> str | None:
    """The customer id where ``stripe_customer_id_from`` says: the Stripe customer id (a string,
    or an expanded customer's ``id``), or a metadata key of the object, of the invoice's
    subscription details, or of an expanded customer."""
    if customer_id_from == "customer":
        customer = obj.get("customer")
        return identifier(customer.get("id") if isinstance(customer, dict) else customer)
    key = customer_id_from.split(".", 1)[1]
    for place in (obj, obj.get("subscription_details"), obj.get("customer")):
        found = identifier(at_path(place, f"metadata.{key}")) if isinstance(place, dict) else None
        if found:
            return found
    return None


def monthly_recurring_revenue(subscription: dict) -> float | None:
    """Σ unit price × quantity per month over the subscription's items (None if unreadable)."""
    total = 0.0
    items = at_path(subscription, "items.data")
    if not isinstance(items, list):
        return None
    for item in items:
        price = (item.get("price") or item.get("plan")) if isinstance(item, dict) else None
        if not isinstance(price, dict):
            return None
        recurring = price.get("recurring") or {"interval": price.get("interval"), "interval_count": price.get("interval_count")}
        if not isinstance(recurring, dict):
            return None
        unit = money(price.get("unit_amount", price.get("amount")), price.get("currency"))
        months = MONTHS_PER.get(recurring.get("interval") or "month")
        count = recurring.get("interval_count") or 1
        quantity = item.get("quantity", 1)
        if unit is None or months is None or not isinstance(count, int) or not isinstance(quantity, int) or count < 1:
            return None
        total += unit * quantity / (months * count)
    return round(total, 2)


def plan_of(subscription: dict) -> str | None:
    """A readable plan name: the first item's price nickname or lookup key, or its product id."""
    items = at_path(subscription, "items.data")
    price = items[0].get("price") if isinstance(items, list) and items and isinstance(items[0], dict) else None
    price = price if isinstance(price, dict) else {}
    for name in (price.get("nickname"), price.get("lookup_key"), at_path(subscription, "plan.nickname"), price.get("product")):
        if isinstance(name, str) and name:
            return name[:256]
    return None


def _invoice_paid(obj: dict) -> tuple[str, dict]:
    return "payment.succeeded", {"invoice_id": obj.get("id"), "amount": money(obj.get("amount_paid"), obj.get("currency"))}


def _invoice_failed(obj: dict) -> tuple[str, dict]:
    return "payment.failed", {"invoice_id": obj.get("id"), "amount": money(obj.get("amount_due"), obj.get("currency"))}


def _invoice_issued(obj: dict) -> tuple[str, dict]:
    due = seconds_to_ms(obj.get("due_date")) or seconds_to_ms(obj.get("created"))
    return "invoice.issued", {"invoice_id": obj.get("id"), "amount": money(obj.get("amount_due"), obj.get("currency")), "due_at": due}


def _subscription(obj: dict) -> tuple[str, dict]:
    if obj.get("status") in ("canceled", "incomplete_expired"):
        return _subscription_deleted(obj)
    paused = obj.get("status") == "paused" or obj.get("pause_collection") is not None
    data: dict = {"mrr": 0.0 if paused else monthly_recurring_revenue(obj)}
    plan = plan_of(obj)
    if plan:
        data["plan"] = plan
    return "subscription.updated", data


def _subscription_deleted(obj: dict) -> tuple[str, dict]:
    details = obj.get("cancellation_details") or {}
    reason = FEEDBACK.get(details.get("feedback") or "") or details.get("reason")
    return "subscription.cancelled", {"reason": reason[:256]} if isinstance(reason, str) and reason else {}


def _refunded(obj: dict) -> tuple[str, dict]:
    return "purchase.refunded", {"order_id": obj.get("payment_intent") or obj.get("id"), "amount": money(obj.get("amount_refunded"), obj.get("currency"))}


def _disputed(obj: dict) -> tuple[str, dict]:
    return "payment.failed", {"invoice_id": obj.get("charge") or obj.get("id"), "amount": money(obj.get("amount"), obj.get("currency")),
                              "reason": f"dispute: {obj.get('reason') or 'unknown'}"[:256]}


#: Stripe event type → the contract event its object maps to (docs/ingest.md, "Stripe").
HANDLERS: dict[str, Callable[[dict], tuple[str, dict]]] = {
    "invoice.paid": _invoice_paid,
    "invoice.payment_succeeded": _invoice_paid,
    "invoice.payment_failed": _invoice_failed,
    "invoice.finalized": _invoice_issued,
    "invoice.overdue": _invoice_issued,
    "invoice.marked_uncollectible": _invoice_issued,
    "customer.subscription.created": _subscription,
    "customer.subscription.updated": _subscription,
    "customer.subscription.resumed": _subscription,
    "customer.subscription.paused": _subscription,
    "customer.subscription.deleted": _subscription_deleted,
    "charge.refunded": _refunded,
    "charge.dispute.created": _disputed,
}


def map_event(payload: Any, customer_id_from: str) -> Mapped:
    """One Stripe event (the webhook body, parsed) to contract events, a rejection or an ignored type."""
    if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
        return rejected("unreadable", "not a Stripe event object")
    kind = payload["type"]
    handler = HANDLERS.get(kind)
    if handler is None:
        return ignored(kind)
    obj = at_path(payload, "data.object")
    event_id, created = payload.get("id"), seconds_to_ms(payload.get("created"))
    if not isinstance(obj, dict) or not isinstance(event_id, str) or created is None:
        return rejected("unreadable", f"{kind}: no data.object, id or created")
    customer = customer_of(obj, customer_id_from)
    if customer is None:
        return rejected("no_customer_id", f"{kind} {event_id}: no customer id at {customer_id_from}")
    contract_type, data = handler(obj)
    if any(value is None for value in data.values()):
        return rejected("unreadable", f"{kind} {event_id}: {', '.join(k for k, v in data.items() if v is None)} missing")
    return Mapped(events=(event(event_id, contract_type, customer, created, data),)) if data is not None else NOTHING
