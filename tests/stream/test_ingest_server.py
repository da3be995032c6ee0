"""The ingest service's HTTP side without a broker: a producer that acknowledges, or fails as
a broker away does, in its place (the real broker: tests/integration/test_ingest.py).
Signatures are made as Stripe and Zendesk document them; Stripe's is verified by the
server with the official library."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiokafka.errors import KafkaTimeoutError

from stream.ingest.server import Ingest, build_app, stripe_verified, zendesk_verified
from stream.settings import load_settings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ingest"
STRIPE_SECRET = "whsec_" + base64.b64encode(b"stripe-endpoint-secret-0123").decode()
ZENDESK_SECRET = "zendesk-signing-secret-0123456789abcdef"


class Producer:
    """Records what is sent; ``fail`` makes every acknowledgement fail, as with a broker away."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.sent: list[tuple[str, bytes, bytes | None]] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None, headers: list | None = None) -> asyncio.Future:
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        if self.fail:
            future.set_exception(KafkaTimeoutError())
        else:
            self.sent.append((topic, value, key))
            future.set_result(None)
        return future


def stripe_signature(body: bytes, at: int | None = None, secret: str = STRIPE_SECRET) -> str:
    at = int(time.time()) if at is None else at
    return f"t={at},v1={hmac.new(secret.encode(), f'{at}.'.encode() + body, hashlib.sha256).hexdigest()}"


def test_stripe_signatures_are_verified_by_the_stripe_library_with_any_current_secret() -> None:
    body = (FIXTURES / "stripe-invoice.payment_failed.json").read_bytes()
    assert stripe_verified(body, stripe_signature(body), ["whsec_" + "b2xk" * 8, STRIPE_SECRET], 300)  # the second of two, while rolling
    assert not stripe_verified(body, stripe_signature(body, at=int(time.time()) - 301), [STRIPE_SECRET], 300)
    assert not stripe_verified(body + b" ", stripe_signature(body), [STRIPE_SECRET], 300)
    assert not stripe_verified(body, None, [STRIPE_SECRET], 300)
    assert not stripe_verified(b"\xff" + body, stripe_signature(b"\xff" + body), [STRIPE_SECRET], 300)


def test_zendesk_signatures_and_their_timestamps() -> None:
    body = (FIXTURES / "zendesk-ticket.created.json").read_bytes()
    now = time.time()
    stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    signature = base64.b64encode(hmac.new(ZENDESK_SECRET.encode(), stamp.encode() + body, hashlib.sha256).digest()).decode()
    assert zendesk_verified(body, signature, stamp, [b"another-secret-0123456789", ZENDESK_SECRET.encode()], 300, now)
    assert not zendesk_verified(body, signature, stamp, [ZENDESK_SECRET.encode()], 300, now + 301)
    assert not zendesk_verified(body[:-1], signature, stamp, [ZENDESK_SECRET.encode()], 300, now)
    assert not zendesk_verified(body, None, stamp, [ZENDESK_SECRET.encode()], 300, now)
    assert not zendesk_verified(body, signature, "yesterday", [ZENDESK_SECRET.encode()], 300, now)


def settings_for(monkeypatch: pytest.MonkeyPatch, **ingest: str):
    for name, value in ingest.items():
        monkeypatch.setenv(f"HEALTHSCORE_INGEST__{name.upper()}", value)
    return load_settings()


async def call(settings, producer: Producer, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    async with TestClient(TestServer(build_app(Ingest(settings, producer), settings.ingest.max_body_bytes))) as client:
        answer = await client.post(path, data=body, headers=headers)
        return answer.status, await answer.json()


def test_a_request_is_answered_2xx_only_once_kafka_acknowledged_it(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_for(monkeypatch, stripe_webhook_secrets=json.dumps([STRIPE_SECRET]))
    payload = json.loads((FIXTURES / "stripe-invoice.payment_failed.json").read_text())
    payload["created"] = int(time.time()) - 60
    body = json.dumps(payload).encode()
    headers = {"Stripe-Signature": stripe_signature(body), "Content-Type": "application/json"}
    away = Producer(fail=True)
    status, answer = asyncio.run(call(settings, away, "/stripe", body, headers))
    assert status == 503 and "send again" in answer["error"] and away.sent == []
    there = Producer()
    assert asyncio.run(call(settings, there, "/stripe", body, headers)) == (200, {"accepted": 1, "rejected": 0, "ignored": 0})
    ((topic, value, key),) = there.sent
    assert topic == settings.topics.payments and key == b"cus_Acme01" and json.loads(value)["event_id"] == "evt_1PaymentFailed0001"


def test_a_source_without_its_credential_is_not_served_and_events_need_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    token = "ingest-token-for-the-test-0123456789abcdef"
    settings = settings_for(monkeypatch, api_tokens=json.dumps([token]))
    assert asyncio.run(call(settings, Producer(), "/stripe", b"{}", {}))[0] == 404
    assert asyncio.run(call(settings, Producer(), "/zendesk", b"{}", {}))[0] == 404
    assert asyncio.run(call(settings, Producer(), "/v1/events", b"{}", {"Authorization": "Bearer wrong"}))[0] == 401
    status, answer = asyncio.run(call(settings, Producer(), "/v1/events", b"{not json", {"Authorization": f"Bearer {token}"}))
    assert status == 400 and "not JSON" in answer["error"]


def test_without_credentials_a_public_host_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from stream.settings import SettingsError

    monkeypatch.setenv("HEALTHSCORE_INGEST__HOST", "0.0.0.0")
    with pytest.raises(SettingsError, match="no credentials are configured"):
        load_settings()
    monkeypatch.setenv("HEALTHSCORE_INGEST__API_TOKENS", json.dumps(["short"]))
    with pytest.raises(SettingsError, match="at least"):
        load_settings()
