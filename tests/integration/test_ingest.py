"""`healthscore ingest` as an operator runs it, against the real broker and a real worker:
Stripe events signed exactly as Stripe documents (verified by the server with the `stripe`
library), Zendesk signatures, the official Segment SDK pointed at it; and every bad request
answered, counted, with nothing but valid events reaching the input topics."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest

from stream.settings import PROJECT_ROOT
from tests.integration.conftest import (
    Namespace,
    WorkerProcess,
    free_port,
    kcat_consume,
    metric_value,
    wait_for,
    wait_until_published,
)

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ingest"
STRIPE_SECRET = "whsec_" + base64.b64encode(b"stripe-endpoint-secret-0123").decode()
ZENDESK_SECRET = "zendesk-signing-secret-0123456789abcdef"
WRITE_KEY = "segment-write-key-0123456789abcdef"
TOKEN = "ingest-token-for-the-test-0123456789abcdef"


class IngestProcess:
    def __init__(self, namespace: Namespace, log_path: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {
            **os.environ, **namespace.env,
            "HEALTHSCORE_INGEST__PORT": str(self.port),
            "HEALTHSCORE_INGEST__API_TOKENS": json.dumps([TOKEN]),
            "HEALTHSCORE_INGEST__SEGMENT_WRITE_KEYS": json.dumps(["an-old-write-key-being-rotated", WRITE_KEY]),
            "HEALTHSCORE_INGEST__STRIPE_WEBHOOK_SECRETS": json.dumps([STRIPE_SECRET]),
            "HEALTHSCORE_INGEST__ZENDESK_WEBHOOK_SECRETS": json.dumps([ZENDESK_SECRET]),
            "HEALTHSCORE_INGEST__STRIPE_CUSTOMER_ID_FROM": "metadata.account_id",
            "HEALTHSCORE_INGEST__MAX_BODY_BYTES": "65536",
        }
        self.process = subprocess.Popen([sys.executable, "-m", "stream.cli", "ingest"], cwd=PROJECT_ROOT, env=env,
                                        stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(lambda: self.process.poll() is not None or "Ingesting on" in log_path.read_text(), timeout=60, message="ingest to start")
        assert self.process.poll() is None, log_path.read_text()

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(self.base + path, data=body, headers={"Content-Type": "application/json", **(headers or {})}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as answer:
            text = answer.read()
            return answer.code, json.loads(text) if text.startswith(b"{") else text

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


@pytest.fixture
def ingest(namespace: Namespace, tmp_path: Path) -> Iterator[IngestProcess]:
    process = IngestProcess(namespace, tmp_path / "ingest.log")
    yield process
    process.stop()
    assert STRIPE_SECRET not in process.log_path.read_text() and TOKEN not in process.log_path.read_text()


def stripe_signature(body: bytes, secret: str, at: int | None = None) -> str:
    """As Stripe documents it: t=<unix time>,v1=<hex HMAC-SHA256 of "{t}.{body}" with the secret>."""
    at = int(time.time()) if at is None else at
    digest = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={digest}"


def zendesk_headers(body: bytes, secret: str = ZENDESK_SECRET, at: datetime | None = None) -> dict[str, str]:
    stamp = (at or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    signature = base64.b64encode(hmac.new(secret.encode(), stamp.encode() + body, hashlib.sha256).digest()).decode()
    return {"X-Zendesk-Webhook-Signature": signature, "X-Zendesk-Webhook-Signature-Timestamp": stamp}


def stripe_event(name: str, event_id: str, minutes_ago: float, account: str = "acme-stripe", **object_fields: Any) -> bytes:
    payload = json.loads((FIXTURES / name).read_text())
    payload["id"] = event_id
    payload["created"] = int(time.time() - minutes_ago * 60)
    payload["data"]["object"]["metadata"] = {"account_id": account}
    payload["data"]["object"].update(object_fields)
    return json.dumps(payload).encode()


def scores_of(namespace: Namespace, customer: str) -> list[dict]:
    return [json.loads(value) for key, _, value in (line.partition("\t") for line in kcat_consume(namespace.topic("health"))) if key == customer]


def alerts_of(namespace: Namespace, customer: str) -> list[dict]:
    return [json.loads(value) for key, _, value in (line.partition("\t") for line in kcat_consume(namespace.topic("alerts"))) if key == customer]


@pytest.fixture
def worker_with_payment_alerts(namespace: Namespace, tmp_path: Path) -> Iterator[WorkerProcess]:
    namespace.env.update({"HEALTHSCORE_ALERTS__PAYMENT_TROUBLE": "true", "HEALTHSCORE_ALERTS__MAX_ALERTS_PER_CUSTOMER_30D": "0"})
    process = WorkerProcess(namespace, tmp_path / "worker.log")
    process.start()
    yield process
    process.stop()


def test_stripe_events_move_the_score_raise_alerts_and_a_retry_changes_nothing(
    namespace: Namespace, worker_with_payment_alerts: WorkerProcess, ingest: IngestProcess
) -> None:
    worker = worker_with_payment_alerts
    bodies = [
        stripe_event("stripe-customer.subscription.updated.json", "evt_sub_1", 60),
        stripe_event("stripe-invoice.payment_failed.json", "evt_fail_1", 50, id="in_1"),
        stripe_event("stripe-invoice.payment_failed.json", "evt_fail_2", 40, id="in_2"),
    ]
    for body in bodies:
        assert ingest.post("/stripe", body, {"Stripe-Signature": stripe_signature(body, STRIPE_SECRET)}) == (200, {"accepted": 1, "rejected": 0, "ignored": 0})
    # Stripe retries the first failure (a new signature, the same event): produced again, applied once.
    assert ingest.post("/stripe", bodies[1], {"Stripe-Signature": stripe_signature(bodies[1], STRIPE_SECRET)})[0] == 200
    payments = namespace.topic("payments")
    url = worker.metrics_url
    wait_for(lambda: metric_value(url, "healthscore_events_total", topic=payments, outcome="duplicate") == 1, message="the retry dropped")
    trouble = wait_for(lambda: [a for a in alerts_of(namespace, "acme-stripe") if a["rule"] == "payment_trouble"], message="payment_trouble")
    assert trouble[0]["detail"] == "2 failed payments in 30 days"
    latest = scores_of(namespace, "acme-stripe")[-1]
    assert latest["components"]["payments"]["score"] == 60.0 and latest["mrr"] == 80.0
    deleted = stripe_event("stripe-customer.subscription.deleted.json", "evt_del_1", 30)
    assert ingest.post("/stripe", deleted, {"Stripe-Signature": stripe_signature(deleted, STRIPE_SECRET)})[0] == 200
    cancelled = wait_for(lambda: [a for a in alerts_of(namespace, "acme-stripe") if a["rule"] == "cancellation"], message="cancellation")
    assert cancelled[0]["detail"] == "subscription cancelled: price"
    wait_until_published(namespace, worker)
    assert metric_value(url, "healthscore_events_total", topic=payments, outcome="applied") == 4
    assert metric_value(ingest.base + "/metrics", "healthscore_ingest_events_total", topic=payments) == 5
    assert metric_value(ingest.base + "/metrics", "healthscore_ingest_requests_total", source="stripe", status="200") == 5


def test_zendesk_ratings_and_the_segment_sdk_move_scores(namespace: Namespace, worker: WorkerProcess, ingest: IngestProcess) -> None:
    from segment.analytics import Client
    from segment.analytics.request import APIError

    now = datetime.now(timezone.utc)
    satisfaction = json.loads((FIXTURES / "zendesk-satisfaction.json").read_text())
    satisfaction["time"] = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    body = json.dumps(satisfaction).encode()
    assert ingest.post("/zendesk", body, zendesk_headers(body))[0] == 200
    org = satisfaction["detail"]["organization_id"]
    rated = wait_for(lambda: [s for s in scores_of(namespace, org) if "sentiment" in s["components"]], message="the rating scored")[-1]
    assert rated["components"]["sentiment"]["score"] < 50  # a bad rating: CSAT 1 of 5

    errors: list = []
    client = Client(write_key=WRITE_KEY, host=ingest.base, sync_mode=True, gzip=True, on_error=lambda error, batch: errors.append(error))
    for minutes in (30, 20, 10):
        client.track(user_id="u-42", event="Session Started", properties={"duration": 300}, context={"groupId": "acme-seg"},
                     timestamp=datetime.fromtimestamp(time.time() - minutes * 60, timezone.utc))
    client.group(user_id="u-42", group_id="acme-seg", traits={"plan": "enterprise", "mrr": 990})
    client.flush()
    assert errors == []
    used = wait_for(lambda: (lambda found: found[-1] if found and found[-1].get("mrr") == 990 else None)(scores_of(namespace, "acme-seg")),
                    message="the SDK's calls scored")
    assert used["components"]["usage"]["score"] > 50
    metrics_url = ingest.base + "/metrics"
    assert metric_value(metrics_url, "healthscore_ingest_events_total", topic=namespace.topic("usage")) == 3
    wrong = Client(write_key="not-the-write-key-0123456789", host=ingest.base, sync_mode=True)
    with pytest.raises(APIError) as refused:  # in sync mode the SDK raises what the API answered
        wrong.track(user_id="u-1", event="Session Started", context={"groupId": "acme-seg"})
    assert refused.value.status == 401
    assert metric_value(metrics_url, "healthscore_ingest_signature_failures_total", source="segment") == 1


def test_bad_requests_get_their_answer_and_counter_and_only_valid_events_reach_the_inputs(namespace: Namespace, ingest: IngestProcess) -> None:
    failed = stripe_event("stripe-invoice.payment_failed.json", "evt_bad_1", 5)
    sign = lambda body, **kw: {"Stripe-Signature": stripe_signature(body, STRIPE_SECRET, **kw)}  # noqa: E731
    wrong_secret = {"Stripe-Signature": stripe_signature(failed, "whsec_" + base64.b64encode(b"another-secret-entirely").decode())}
    assert ingest.post("/stripe", failed, wrong_secret)[0] == 400
    assert ingest.post("/stripe", failed, sign(failed, at=int(time.time()) - 3600))[0] == 400  # outside the 300 s tolerance
    assert ingest.post("/stripe", failed.replace(b"4900", b"9900"), sign(failed))[0] == 400  # altered after signing
    assert ingest.post("/stripe", failed, {})[0] == 400
    unknown = stripe_event("stripe-payment_intent.created.json", "evt_pi_1", 5)
    assert ingest.post("/stripe", unknown, sign(unknown)) == (200, {"accepted": 0, "rejected": 0, "ignored": 1})
    orphan = json.loads(failed)
    orphan["data"]["object"]["metadata"] = {}
    orphan["data"]["object"]["subscription_details"] = {"metadata": {}}
    orphan_body = json.dumps(orphan).encode()
    assert ingest.post("/stripe", orphan_body, sign(orphan_body)) == (200, {"accepted": 0, "rejected": 1, "ignored": 0})
    huge = stripe_event("stripe-invoice.payment_failed.json", "evt_huge", 5, id="in_" + "x" * 100, lines=["y" * 70000])
    assert ingest.post("/stripe", huge, sign(huge))[0] == 413
    assert ingest.post("/stripe", b"{not json", sign(b"{not json"))[0] == 400
    ticket = (FIXTURES / "zendesk-ticket.created.json").read_bytes()
    assert ingest.post("/zendesk", ticket, zendesk_headers(ticket, secret="not-the-zendesk-secret-0123456789"))[0] == 401
    assert ingest.post("/zendesk", ticket, zendesk_headers(ticket, at=datetime(2026, 1, 1, tzinfo=timezone.utc)))[0] == 401

    good = {"event_id": "ok-1", "type": "usage.session", "customer_id": "direct", "occurred_at": int(time.time() * 1000) - 1000,
            "data": {"user_id": "u", "duration_seconds": 5}}
    bad = copy.deepcopy(good) | {"event_id": "bad-1", "type": "purchase.completed", "data": {"order_id": "o", "amount": 2e17, "currency": "EUR"}}
    lines = b"\n".join(json.dumps(item).encode() for item in (good, bad))
    assert ingest.post("/v1/events", lines)[0] == 401
    status, answer = ingest.post("/v1/events", lines, {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and answer["accepted"] == 1 and answer["rejected"] == 1
    assert answer["results"][1] == {"index": 1, "status": "rejected", "reason": "out_of_range", "detail": answer["results"][1]["detail"]}

    metrics_url = ingest.base + "/metrics"
    assert metric_value(metrics_url, "healthscore_ingest_signature_failures_total", source="stripe") == 4
    assert metric_value(metrics_url, "healthscore_ingest_signature_failures_total", source="zendesk") == 2
    assert metric_value(metrics_url, "healthscore_ingest_ignored_total", source="stripe", type="payment_intent.created") == 1
    assert metric_value(metrics_url, "healthscore_ingest_rejected_total", source="stripe", reason="no_customer_id") == 1
    assert metric_value(metrics_url, "healthscore_ingest_rejected_total", source="events", reason="out_of_range") == 1
    assert metric_value(metrics_url, "healthscore_ingest_requests_total", source="stripe", status="413") == 1
    parked = kcat_consume(namespace.topic("ingest_rejected"), fmt="%h\t%s\n")
    assert len(parked) == 1 and "healthscore-ingest-reason=no_customer_id" in parked[0] and orphan_body.decode() in parked[0]
    inputs = {kind: kcat_consume(namespace.topic(kind)) for kind in ("purchases", "usage", "tickets", "payments")}
    assert {kind: len(lines) for kind, lines in inputs.items()} == {"purchases": 0, "usage": 1, "tickets": 0, "payments": 0}
    assert inputs["usage"][0].startswith("direct\t")
