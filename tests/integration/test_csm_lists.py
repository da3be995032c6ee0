"""What a customer-success manager opens first, on the real broker and Redis: the riskiest
customers still to save (live first, ties by churn risk then MRR), who left and why, who is
ready for more, detractors alerted once per answer, and an action with every alert."""

from __future__ import annotations

import json
import time

import pytest

from tests.integration.conftest import (
    Namespace,
    WorkerProcess,
    get_json,
    kcat_consume,
    kcat_produce,
    metric_value,
    wait_for,
    wait_until_published,
)
from tests.integration.conftest import event_at as event

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000
NOW_MS = int(time.time() * 1000)
START = NOW_MS - 40 * DAY_MS


def subscriber(customer: str, mrr: float, sessions_per_day: dict[int, int], first_day: int = 0) -> tuple[list, list]:
    """(payments, usage) events of a subscriber: MRR at ``first_day``, sessions on the given days."""
    payments = [(customer, event(f"{customer}-m", "subscription.updated", customer, START + first_day * DAY_MS, {"mrr": mrr}))]
    usage = [
        (customer, event(f"{customer}-s{day}-{n}", "usage.session", customer, START + day * DAY_MS + n * 60_000, {"user_id": "u1", "duration_seconds": 600}))
        for day, count in sessions_per_day.items()
        for n in range(count)
    ]
    return payments, usage


def alerts_of(namespace: Namespace, customer: str) -> list[dict]:
    return [json.loads(value) for key, _, value in (line.partition("\t") for line in kcat_consume(namespace.topic("alerts"))) if key == customer]


def test_the_riskiest_list_is_of_customers_still_to_save(namespace: Namespace, worker: WorkerProcess) -> None:
    steady = {day: 1 for day in range(0, 40, 2)}
    payments, usage, tickets = [], [], []
    for customer, mrr in (("fine", 99.0), ("tie-small", 49.0), ("tie-big", 490.0), ("gone-price", 99.0), ("gone-quiet", 99.0)):
        more_payments, more_usage = subscriber(customer, mrr, steady)
        payments += more_payments
        usage += more_usage
    # Two equal customers but for their MRR, both with a failed payment: tied on score and churn risk.
    for customer in ("tie-small", "tie-big"):
        payments.append((customer, event(f"{customer}-f", "payment.failed", customer, START + 38 * DAY_MS, {"invoice_id": "i1", "amount": 9.0})))
    # A live customer in trouble: two failed payments, an urgent ticket, usage stopped a month ago.
    more_payments, more_usage = subscriber("trouble", 99.0, {day: 1 for day in range(0, 10, 2)})
    payments += more_payments + [
        ("trouble", event(f"trouble-f{n}", "payment.failed", "trouble", START + (30 + n) * DAY_MS, {"invoice_id": "i2", "amount": 99.0})) for n in range(2)
    ]
    usage += more_usage
    tickets.append(("trouble", event("trouble-t", "ticket.opened", "trouble", START + 31 * DAY_MS, {"ticket_id": "t1", "priority": "urgent"})))
    payments.append(("gone-price", event("gone-price-c", "subscription.cancelled", "gone-price", START + 39 * DAY_MS, {"reason": "Price"})))
    payments.append(("gone-quiet", event("gone-quiet-c", "subscription.cancelled", "gone-quiet", START + 39 * DAY_MS, {})))
    kcat_produce(namespace.topic("usage"), usage)
    kcat_produce(namespace.topic("tickets"), tickets)
    kcat_produce(namespace.topic("payments"), payments)
    url = worker.metrics_url
    total = len(payments) + len(usage) + len(tickets)
    wait_for(lambda: sum(metric_value(url, "healthscore_events_total", topic=namespace.topic(kind), outcome="applied")
                         for kind in ("usage", "payments", "tickets")) == total, message="every event applied")
    wait_until_published(namespace, worker)
    base = f"http://127.0.0.1:{namespace.settings.web_port}"

    def listed(path: str, count: int) -> list[dict]:
        return wait_for(lambda: (lambda r: r[1]["customers"] if r[0] == 200 and r[1]["count"] == count else None)(get_json(base + path)),
                        message=f"{count} customers at {path}")

    live = listed("/customers/at-risk?limit=10", 4)
    order = [entry["customer_id"] for entry in live]
    assert order[0] == "trouble" and not any(entry["cancelled"] for entry in live)
    assert order.index("tie-big") == order.index("tie-small") - 1  # the bigger account first
    tie_big, tie_small = (next(e for e in live if e["customer_id"] == c) for c in ("tie-big", "tie-small"))
    assert (tie_big["score"], tie_big["churn_risk"]) == (tie_small["score"], tie_small["churn_risk"]) and tie_big["mrr"] == 490.0
    assert all(entry["confidence"] is not None and 0 < entry["confidence"] <= 1 for entry in live)
    scores = [(entry["score"], -entry["churn_risk"], -entry["mrr"]) for entry in live]
    assert scores == sorted(scores)

    everyone = listed("/customers/at-risk?limit=10&include_cancelled=true", 6)
    assert [entry["customer_id"] for entry in everyone[:4]] == order  # live first
    assert {entry["customer_id"] for entry in everyone[4:]} == {"gone-price", "gone-quiet"} and all(e["cancelled"] for e in everyone[4:])

    churned = listed(f"/customers/churned?since={time.strftime('%Y-%m-%d', time.gmtime((START + 30 * DAY_MS) / 1000))}", 2)
    reasons = {entry["customer_id"]: entry["cancellation_reason"] for entry in churned}
    assert reasons == {"gone-price": "Price", "gone-quiet": None}
    assert all(entry["cancelled_at"].startswith(time.strftime("%Y-%m-%d", time.gmtime((START + 39 * DAY_MS) / 1000))) for entry in churned)
    status, body = get_json(f"{base}/customers/churned?since=yesterday-ish")
    assert status == 400 and "since" in body["error"]
    status, body = get_json(f"{base}/customers/at-risk?include_cancelled=maybe")
    assert status == 400 and "include_cancelled" in body["error"]

    status, health = get_json(f"{base}/customers/gone-price/health")
    assert status == 200 and health["cancelled"] is True and health["cancellation_reason"] == "Price" and health["mrr"] == 99.0
    assert metric_value(url, "healthscore_cancellations_total", reason="price") == 1
    assert metric_value(url, "healthscore_cancellations_total", reason="unspecified") == 1
    exit_alert = wait_for(lambda: [a for a in alerts_of(namespace, "gone-price") if a["rule"] == "cancellation"], message="the cancellation alert")[0]
    assert exit_alert["detail"] == "subscription cancelled: Price"
    assert exit_alert["recommended_action"].startswith("Hold an exit interview") and exit_alert["action_owner"] == "csm"
    assert exit_alert["action_due_at"] > exit_alert["raised_at"]


def test_detractors_are_alerted_once_per_answer_and_growing_customers_listed(namespace: Namespace, worker_without_budget: WorkerProcess) -> None:
    # Without the budget (one alert in 30 days), which would hold back the second answer's alert.
    worker = worker_without_budget
    payments, usage = subscriber("unhappy", 99.0, {day: 1 for day in range(-30, 40, 3)}, first_day=-30)  # steady for 70 days
    # Usage that grew: one session a day in the 30 days before the last 30, three a day since.
    grow_payments, grow_usage = subscriber("growing", 199.0, {**{day: 1 for day in range(0, 10)}, **{day: 3 for day in range(10, 40)}})
    answers = [
        ("unhappy", event("n1", "survey.answered", "unhappy", START + 20 * DAY_MS, {"survey": "nps", "score": 3, "comment": "Too slow since the update"})),
        ("unhappy", event("n2", "survey.answered", "unhappy", START + 25 * DAY_MS, {"survey": "nps", "score": 9})),
        ("unhappy", event("n3", "survey.answered", "unhappy", START + 30 * DAY_MS, {"survey": "csat", "score": 2})),
    ]
    kcat_produce(namespace.topic("usage"), usage + grow_usage)
    kcat_produce(namespace.topic("payments"), payments + grow_payments)
    kcat_produce(namespace.topic("tickets"), answers)
    kcat_produce(namespace.topic("tickets"), answers[:1])  # the first answer again: still one alert for it
    url = worker.metrics_url
    wait_for(lambda: metric_value(url, "healthscore_events_total", topic=namespace.topic("tickets"), outcome="duplicate") == 1, message="the repeat dropped")
    wait_until_published(namespace, worker)
    kcat_produce(namespace.topic("tickets"), [  # the customer-success manager's side
        ("unhappy", event("s1", "survey.sent", "unhappy", START + 19 * DAY_MS, {"survey": "nps"})),
        ("unhappy", event("c1", "csm.touchpoint", "unhappy", START + 36 * DAY_MS, {"channel": "qbr", "sentiment": "positive"})),
        ("unhappy", event("p1", "csm.pulse", "unhappy", START + 37 * DAY_MS, {"rating": 2, "reasons": ["champion_left"]})),
    ])
    detractor = wait_for(lambda: (lambda found: found if len(found) == 2 else None)([a for a in alerts_of(namespace, "unhappy") if a["rule"] == "detractor"]),
                         message="two detractor alerts", explain=lambda: repr(alerts_of(namespace, "unhappy")))
    assert [a["detail"] for a in detractor] == ['NPS answer 3 on 0-10: "Too slow since the update"', "CSAT answer 2 on 1-5"]
    assert all(a["severity"] == "warning" and a["action_owner"] == "csm" and "Contact the customer" in a["recommended_action"] for a in detractor)
    assert metric_value(url, "healthscore_alerts_raised_total", rule="detractor", severity="warning") == 2

    base = f"http://127.0.0.1:{namespace.settings.web_port}"
    # The customer's KPIs, written to Redis by the fleet export (every second here).
    kpis = wait_for(lambda: (lambda r: r[1] if r[0] == 200 and r[1]["csm_pulse"] else None)(get_json(f"{base}/customers/unhappy/kpis")),
                    message="the customer's KPIs")
    assert kpis["customer_id"] == "unhappy" and kpis["csm_pulse"] == 2 and kpis["survey_response_rate"] == 100.0
    assert kpis["nps"] == 0.0 and kpis["csat"] == 0.0 and kpis["mrr"] == 99.0 and kpis["needs_fresh_pulse"] is False
    # Did the QBR help: the score now against the one just before it; computed when the record
    # changed, its ages given at the time of reading.
    assert isinstance(kpis["score_change_since_csm_contact"], float)
    assert {"ltv", "revenue_90d", "new_categories_30d", "upsell_30d"} <= set(kpis) and kpis["as_of"] >= kpis["computed_at"]
    status, health = get_json(f"{base}/customers/unhappy/health")
    assert status == 200 and health["kpis"]["csm_pulse"] == 2 and "relationship" in health["components"]
    assert get_json(f"{base}/customers/nobody-at-all/kpis")[0] == 404
    ready = wait_for(lambda: (lambda r: r[1]["customers"] if r[0] == 200 and r[1]["count"] else None)(get_json(f"{base}/customers/expansion?limit=5")),
                     message="an expansion candidate")
    assert [entry["customer_id"] for entry in ready] == ["growing"]
    assert ready[0]["band"] == "healthy" and ready[0]["usage_growth"] >= 0.2 and ready[0]["confidence"] >= 0.5
