"""Each source's mapping, table-driven on payloads shaped as the providers document them
(tests/fixtures/ingest): the contract events it gives, what it rejects and why, what it ignores;
and every event it gives passes the worker's own validation."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.contract import Event, TopicKind, decode_event
from stream.ingest import segment, stripe, zendesk
from stream.ingest.contract import Checked, check, parse_body
from stream.ingest.mapped import Mapped

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ingest"
NOW_MS = 1_800_000_000_000  # after every fixture's time


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def summary(mapped: Mapped) -> list[tuple]:
    return [(e["event_id"], e["type"], e["customer_id"], e["occurred_at"], e["data"]) for e in mapped.events]


@pytest.mark.parametrize(
    ("name", "customer_from", "expected"),
    [
        ("stripe-invoice.payment_failed.json", "customer",
         [("evt_1PaymentFailed0001", "payment.failed", "cus_Acme01", 1764900000000, {"invoice_id": "in_1Abc", "amount": 49.0})]),
        # The account id from the invoice's subscription metadata.
        ("stripe-invoice.payment_failed.json", "metadata.account_id",
         [("evt_1PaymentFailed0001", "payment.failed", "acme", 1764900000000, {"invoice_id": "in_1Abc", "amount": 49.0})]),
        ("stripe-invoice.finalized.json", "customer",
         [("evt_1InvoiceFinalized01", "invoice.issued", "cus_Acme01", 1764800000000, {"invoice_id": "in_1Def", "amount": 199.0, "due_at": 1766000000000})]),
        # 5 seats at 12 a month and 240 a year: 60 + 20 = 80 a month; the first item's nickname as plan.
        ("stripe-customer.subscription.updated.json", "metadata.account_id",
         [("evt_1SubUpdated000001", "subscription.updated", "acme", 1764700000000, {"mrr": 80.0, "plan": "Team"})]),
        ("stripe-customer.subscription.deleted.json", "customer",
         [("evt_1SubDeleted000001", "subscription.cancelled", "cus_Acme01", 1764950000000, {"reason": "price"})]),
        # JPY has no minor unit: 2500 is 2500 yen.
        ("stripe-charge.refunded.json", "customer",
         [("evt_1ChargeRefunded01", "purchase.refunded", "cus_Acme01", 1764600000000, {"order_id": "pi_1Xyz", "amount": 2500.0})]),
    ],
)
def test_stripe_events_map_to_contract_events(name: str, customer_from: str, expected: list[tuple]) -> None:
    mapped = stripe.map_event(fixture(name), customer_from)
    assert summary(mapped) == expected and not mapped.rejected and not mapped.ignored
    assert all(isinstance(check(item, NOW_MS, 300_000), Checked) for item in mapped.events)


def test_a_stripe_dispute_without_a_customer_is_rejected_and_an_unmapped_type_ignored() -> None:
    dispute = stripe.map_event(fixture("stripe-charge.dispute.created.json"), "customer")
    assert dispute.events == () and [reason for reason, _ in dispute.rejected] == ["no_customer_id"]
    with_account = fixture("stripe-charge.dispute.created.json")
    with_account["data"]["object"]["metadata"] = {"account_id": "acme"}
    mapped = stripe.map_event(with_account, "metadata.account_id")
    assert summary(mapped) == [("evt_1DisputeCreated01", "payment.failed", "acme", 1764650000000,
                                {"invoice_id": "ch_1Xyz", "amount": 49.0, "reason": "dispute: fraudulent"})]
    assert stripe.map_event(fixture("stripe-payment_intent.created.json"), "customer").ignored == ("payment_intent.created",)
    assert stripe.map_event({"no": "type"}, "customer").rejected[0][0] == "unreadable"
    for created in (float("nan"), float("inf"), 1e400, -5, "1764900000"):
        odd = fixture("stripe-invoice.payment_failed.json") | {"created": created}
        assert stripe.map_event(odd, "customer").rejected[0][0] == "unreadable", created


def test_a_paused_subscription_has_no_mrr_and_a_canceled_status_is_a_cancellation() -> None:
    paused = fixture("stripe-customer.subscription.updated.json")
    paused["type"] = "customer.subscription.paused"
    paused["data"]["object"]["status"] = "paused"
    assert summary(stripe.map_event(paused, "customer"))[0][1:] == ("subscription.updated", "cus_Acme01", 1764700000000, {"mrr": 0.0, "plan": "Team"})
    ended = fixture("stripe-customer.subscription.updated.json")
    ended["data"]["object"]["status"] = "canceled"
    assert summary(stripe.map_event(ended, "customer"))[0][1] == "subscription.cancelled"


@pytest.mark.parametrize(
    ("name", "customer_from", "expected"),
    [
        ("zendesk-ticket.created.json", "detail.organization_id",
         [("01HZ0000000000000000000001", "ticket.opened", "8447346622462", ms("2026-12-01T09:00:00+00:00"), {"ticket_id": "35436", "priority": "urgent"})]),
        ("zendesk-ticket.status_changed.json", "detail.organization_id",
         [("01HZ0000000000000000000002", "ticket.resolved", "8447346622462", ms("2026-12-02T15:30:00+00:00"), {"ticket_id": "35436"})]),
        ("zendesk-ticket.priority_changed.json", "detail.organization_id",
         [("01HZ0000000000000000000003", "ticket.opened", "8447346622462", ms("2026-12-01T10:00:00+00:00"), {"ticket_id": "35436", "priority": "low"})]),
        ("zendesk-satisfaction.json", "detail.organization_external_id",
         [("35436-1764950000", "survey.answered", "acme", ms("2026-12-03T08:00:00+00:00"), {"survey": "csat", "score": 1, "comment": "Took two days to answer"})]),
    ],
)
def test_zendesk_events_map_to_contract_events(name: str, customer_from: str, expected: list[tuple]) -> None:
    mapped = zendesk.map_event(fixture(name), customer_from)
    assert summary(mapped) == expected and not mapped.rejected and not mapped.ignored
    assert all(isinstance(check(item, NOW_MS, 300_000), Checked) for item in mapped.events)


def test_zendesk_reopening_counts_other_changes_are_ignored_and_no_organization_is_rejected() -> None:
    reopened = fixture("zendesk-ticket.status_changed.json")
    reopened["event"].update(current="OPEN", previous="SOLVED")
    assert summary(zendesk.map_event(reopened, "detail.organization_id"))[0][1] == "ticket.reopened"
    pending = fixture("zendesk-ticket.status_changed.json")
    pending["event"].update(current="PENDING", previous="OPEN")
    assert zendesk.map_event(pending, "detail.organization_id").ignored == ("zen:event-type:ticket.status_changed:no_change",)
    assert zendesk.map_event(fixture("zendesk-user.created.json"), "detail.organization_id").ignored == ("zen:event-type:user.created",)
    orphan = fixture("zendesk-ticket.created.json")
    orphan["detail"]["organization_id"] = None
    assert [reason for reason, _ in zendesk.map_event(orphan, "detail.organization_id").rejected] == ["no_customer_id"]
    good = fixture("zendesk-satisfaction.json")
    good["detail"]["satisfaction_score"] = "good"
    assert summary(zendesk.map_event(good, "detail.organization_external_id"))[0][4]["score"] == 5


def test_a_segment_batch_maps_tracks_to_usage_and_a_group_with_mrr_to_a_subscription() -> None:
    rules = segment.SegmentRules(features={"Report Exported": "reports"})
    mapped = segment.map_body(fixture("segment-batch.json"), rules, "batch")
    assert summary(mapped) == [
        ("0f4c9a1e-1111-4c2b-9d1a-000000000001", "usage.session", "acme", ms("2026-12-01T10:00:00.123+00:00"), {"user_id": "u-42", "duration_seconds": 620}),
        ("0f4c9a1e-1111-4c2b-9d1a-000000000002", "usage.feature", "acme", ms("2026-12-01T10:05:00+00:00"), {"user_id": "u-42", "feature": "reports", "count": 1}),
        ("0f4c9a1e-1111-4c2b-9d1a-000000000003", "subscription.updated", "acme", ms("2026-12-01T10:06:00+00:00"), {"mrr": 1990, "plan": "enterprise"}),
    ]
    assert mapped.ignored == ("identify",)
    assert [reason for reason, _ in mapped.rejected] == ["no_customer_id"]  # a track without context.groupId
    by_property = segment.SegmentRules(account_from="properties.format")
    assert summary(segment.map_call(fixture("segment-batch.json")["batch"][1], by_property))[0][2] == "csv"
    assert all(isinstance(check(item, NOW_MS, 300_000), Checked) for item in mapped.events)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"a": 1}', [{"a": 1}]),
        (b'[{"a": 1}, {"b": 2}]', [{"a": 1}, {"b": 2}]),
        (b'{"a": 1}\n\n{"b": 2}\n', [{"a": 1}, {"b": 2}]),
    ],
)
def test_our_contract_comes_as_an_object_an_array_or_json_lines(body: bytes, expected: list) -> None:
    assert parse_body(body) == expected


def test_an_event_ingest_accepts_is_one_the_worker_accepts_and_a_bad_one_gets_the_contracts_reason() -> None:
    good = {"event_id": "e1", "type": "usage.session", "customer_id": "acme", "occurred_at": NOW_MS - 1000, "data": {"user_id": "u", "duration_seconds": 5}}
    checked = check(good, NOW_MS, 300_000)
    assert isinstance(checked, Checked) and checked.kind is TopicKind.USAGE and checked.key == b"acme"
    assert isinstance(decode_event(checked.key, checked.value, checked.kind, NOW_MS, 300_000), Event)
    too_big = {**good, "type": "purchase.completed", "data": {"order_id": "o", "amount": 2e17, "currency": "EUR"}}
    assert check(too_big, NOW_MS, 300_000).reason.value == "out_of_range"
    assert check({**good, "type": "usage.teleported"}, NOW_MS, 300_000).reason.value == "unknown_type"
    assert check([1, 2], NOW_MS, 300_000).reason.value == "not_object"
    lines = parse_body(b'{"a": 1}\n{not json\n')
    assert lines[0] == {"a": 1} and lines[1].reason.value == "not_json"
    assert parse_body(b"   ").reason.value == "not_json"


@pytest.mark.parametrize("items", [["not an item"], [{"price": "price_1"}], [{"price": {"unit_amount": "12", "currency": "eur"}}], "no list"])
def test_odd_subscription_items_are_a_rejection_not_an_exception(items: object) -> None:
    odd = fixture("stripe-customer.subscription.updated.json")
    odd["data"]["object"]["items"] = {"data": items}
    assert [reason for reason, _ in stripe.map_event(odd, "customer").rejected] == ["unreadable"]


def test_a_mapping_that_raises_becomes_a_parked_rejection() -> None:
    from stream.ingest.server import mapped_safely

    def broken(payload: object) -> Mapped:
        raise KeyError("surprise")

    assert mapped_safely("stripe", broken, {}).rejected == (("unreadable", "the stripe mapping failed: KeyError"),)


KEYS = ["type", "id", "created", "data", "object", "customer", "metadata", "account_id", "items", "price", "quantity", "recurring",
        "interval", "unit_amount", "currency", "detail", "event", "current", "previous", "time", "organization_id", "priority",
        "status", "batch", "userId", "event", "context", "groupId", "traits", "mrr", "messageId", "timestamp", "properties"]
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True), st.text(max_size=20),
              st.sampled_from(["invoice.payment_failed", "customer.subscription.updated", "zen:event-type:ticket.status_changed",
                               "healthscore.satisfaction", "track", "group", "month", "year", "eur", "SOLVED", "2026-12-01T10:00:00Z"])),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.sampled_from(KEYS), children, max_size=6)),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(payload=json_values)
def test_no_payload_makes_a_mapping_raise(payload: object) -> None:
    """Whatever an authenticated source sends, each mapping answers with data (events,
    rejections, ignored types), and every event it gives is checked like any other."""
    rules = segment.SegmentRules()
    for mapped in (stripe.map_event(payload, "customer"), stripe.map_event(payload, "metadata.account_id"),
                   zendesk.map_event(payload, "detail.organization_id"), segment.map_body(payload, rules, "batch"),
                   segment.map_call(payload, rules)):
        assert isinstance(mapped, Mapped)
        for item in mapped.events:
            check(item, NOW_MS, 300_000)  # never raises either: a Checked or a Rejection
