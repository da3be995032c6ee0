"""Delivery to real HTTP receivers on 127.0.0.1 (no broker): Standard Webhooks signatures
checked with the `standardwebhooks` library, Slack messages built with slack_sdk's Block Kit
models, retries with growing delays, Retry-After, 410, and an endpoint that stays down."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from slack_sdk.models.blocks import Block
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from stream.delivery.endpoints import Deliverer
from stream.delivery.payloads import ALERT_RAISED, read_alert, reasons_text, slack_message, wanted
from stream.settings import DeliverySettings, EndpointSettings

SECRET = "whsec_" + base64.b64encode(b"a-test-secret-of-24-bytes").decode()
ALERT = {
    "alert_id": "a-1", "customer_id": "acme", "rule": "band_downgrade", "severity": "warning", "score": 41.2,
    "previous_score": 58.9, "band": "at_risk", "churn_risk": 0.42,
    "reasons": [{"component": "payments", "change": -18.2}, {"component": "usage", "change": -9.4}],
    "detail": "healthy to at_risk", "occurred_at": "2026-12-01T10:00:00.000Z", "raised_at": "2026-12-01T10:00:00.050Z",
}
RAW = msgspec.json.encode(ALERT)


class Receiver:
    """An HTTP receiver whose answers are scripted: a list of (status, headers) per request, then 200."""

    def __init__(self, answers: list[tuple[int, dict[str, str]]] | None = None) -> None:
        self.answers = list(answers or [])
        self.requests: list[tuple[float, dict[str, str], bytes]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((time.monotonic(), dict(request.headers), await request.read()))
        status, headers = self.answers.pop(0) if self.answers else (200, {})
        return web.Response(status=status, headers=headers, text="ok")

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{self.port}/hook"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


#: The receivers here listen on http://127.0.0.1: both must be allowed explicitly.
LOCAL = {"allow_insecure_http": True, "allow_private_network": True}


def endpoint(url: str, kind: str = "webhook", **filters: Any) -> EndpointSettings:
    return EndpointSettings(name="crm", kind=kind, url=url, secret=SECRET if kind == "webhook" else None, **LOCAL, **filters)


def settings_for(*endpoints: EndpointSettings, schedule: list[float] = [0.05, 0.1, 0.2], wait: float = 5.0) -> DeliverySettings:
    return DeliverySettings(endpoints=list(endpoints), retry_schedule_seconds=schedule, max_wait_per_alert_seconds=wait, request_timeout_seconds=2)


class RecordedSleep:
    """The delivery's waits, recorded instead of slept: the test checks what it would wait,
    never how long the machine took."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


async def deliver_once(answers: list[tuple[int, dict[str, str]]], sleep: RecordedSleep | None = None, **settings: Any) -> tuple[Any, Receiver]:
    receiver = Receiver(answers)
    url = await receiver.start()
    try:
        target = endpoint(url)
        async with aiohttp.ClientSession() as session:
            deliverer = Deliverer(settings_for(target, **settings), session, **({"sleep": sleep} if sleep else {}))
            outcome = await deliverer.deliver(target, RAW, read_alert(RAW))
    finally:
        await receiver.stop()
    return outcome, receiver


def test_a_webhook_is_signed_as_standard_webhooks_and_verifies_with_their_library() -> None:
    outcome, receiver = asyncio.run(deliver_once([]))
    assert outcome.delivered and outcome.attempts == 1
    _, headers, body = receiver.requests[0]
    payload = Webhook(SECRET).verify(body, {k.lower(): v for k, v in headers.items()})
    assert headers["webhook-id"] == "a-1"
    assert payload["type"] == ALERT_RAISED and payload["data"] == ALERT
    with pytest.raises(WebhookVerificationError, match="No matching signature found"):
        Webhook("whsec_" + base64.b64encode(b"another-secret-entirely!").decode()).verify(body, {k.lower(): v for k, v in headers.items()})


def test_a_failing_receiver_gets_it_on_the_fourth_attempt_with_growing_delays() -> None:
    sleep = RecordedSleep()
    outcome, receiver = asyncio.run(deliver_once([(500, {})] * 3, sleep))
    assert outcome.delivered and outcome.attempts == 4 and len(receiver.requests) == 4
    # The schedule [0.05, 0.1, 0.2], each with up to 20 % jitter.
    assert len(sleep.delays) == 3
    for delay, planned in zip(sleep.delays, [0.05, 0.1, 0.2]):
        assert planned <= delay <= planned * 1.2
    assert len({headers["webhook-id"] for _, headers, _ in receiver.requests}) == 1  # one id across retries


def test_retry_after_is_honoured() -> None:
    sleep = RecordedSleep()
    outcome, receiver = asyncio.run(deliver_once([(429, {"Retry-After": "1"})], sleep))
    assert outcome.delivered and outcome.attempts == 2
    assert sleep.delays == [1.0]  # Retry-After over the schedule's 0.05


def test_410_disables_the_endpoint_and_parks() -> None:
    async def scenario() -> tuple[Any, Any, Receiver]:
        receiver = Receiver([(410, {})])
        url = await receiver.start()
        target = endpoint(url)
        async with aiohttp.ClientSession() as session:
            deliverer = Deliverer(settings_for(target), session)
            first = await deliverer.deliver(target, RAW, read_alert(RAW))
            second = await deliverer.deliver(target, RAW, read_alert(RAW))
        await receiver.stop()
        return first, second, receiver

    first, second, receiver = asyncio.run(scenario())
    assert not first.delivered and first.attempts == 1 and "410" in first.error
    assert not second.delivered and second.attempts == 0 and "disabled" in second.error
    assert len(receiver.requests) == 1


def test_an_endpoint_down_for_good_parks_after_its_wait_then_parks_at_once_while_another_delivers() -> None:
    async def scenario() -> tuple[list, list, Receiver]:
        healthy = Receiver()
        healthy_url = await healthy.start()
        down = EndpointSettings(name="down", kind="webhook", url="http://127.0.0.1:9/hook", secret=SECRET, **LOCAL)
        up = EndpointSettings(name="up", kind="webhook", url=healthy_url, secret=SECRET, **LOCAL)
        sleep = RecordedSleep()
        async with aiohttp.ClientSession() as session:
            # A wait of 30 s per alert, a schedule of 10 s then 40 s: one retry, then parked.
            deliverer = Deliverer(settings_for(down, up, schedule=[10, 40], wait=30), session, sleep=sleep)
            first = await asyncio.gather(deliverer.deliver(down, RAW, read_alert(RAW)), deliverer.deliver(up, RAW, read_alert(RAW)))
            waited_first = list(sleep.delays)
            second = await asyncio.gather(deliverer.deliver(down, RAW, read_alert(RAW)), deliverer.deliver(up, RAW, read_alert(RAW)))
            assert sleep.delays == waited_first  # the paused endpoint parks at once: no wait, no attempt
        await healthy.stop()
        assert len(waited_first) == 1 and 10 <= waited_first[0] <= 12
        return list(first), list(second), healthy

    first, second, healthy = asyncio.run(scenario())
    assert [o.delivered for o in first] == [False, True] and first[0].attempts == 2
    assert [o.delivered for o in second] == [False, True] and second[0].attempts == 0
    assert len(healthy.requests) == 2


def test_the_slack_message_is_valid_block_kit_built_with_slack_sdk() -> None:
    message = slack_message(read_alert(RAW), "https://crm.example.com/customers/{customer_id}")
    assert "acme" in message["text"] and "payments −18, usage −9" in message["text"]
    kinds = [block["type"] for block in message["blocks"]]
    assert kinds == ["header", "section", "context", "actions"]
    for block in message["blocks"]:
        Block.parse(block).validate_json()  # slack_sdk's own checks of each block
    assert message["blocks"][-1]["elements"][0]["url"] == "https://crm.example.com/customers/acme"
    json.dumps(message)


def test_the_recommended_action_is_shown_in_slack_and_carried_in_the_webhook_body() -> None:
    from datetime import datetime, timezone

    from stream.delivery.payloads import webhook_body

    with_action = msgspec.json.encode({**ALERT, "recommended_action": "Call <them> & fix it", "action_owner": "csm",
                                       "action_due_at": "2026-12-03T10:00:00.050Z"})
    message = slack_message(read_alert(with_action), None)
    kinds = [block["type"] for block in message["blocks"]]
    assert kinds == ["header", "section", "context", "section"]
    step = message["blocks"][-1]
    Block.parse(step).validate_json()
    assert step["text"]["text"] == "*Next step* (csm, by 2026-12-03 10:00 UTC)\nCall &lt;them&gt; &amp; fix it"
    # Without an action (an alert from before playbooks) no such block.
    assert [block["type"] for block in slack_message(read_alert(RAW), None)["blocks"]] == ["header", "section", "context"]
    body = json.loads(webhook_body(with_action, datetime(2026, 12, 1, tzinfo=timezone.utc)))
    assert (body["data"]["recommended_action"], body["data"]["action_owner"], body["data"]["action_due_at"]) == (
        "Call <them> & fix it", "csm", "2026-12-03T10:00:00.050Z")


def test_the_slack_endpoint_receives_the_block_kit_json() -> None:
    async def scenario() -> Receiver:
        receiver = Receiver()
        url = await receiver.start()
        target = EndpointSettings(name="cs-channel", kind="slack", url=url, **LOCAL)
        async with aiohttp.ClientSession() as session:
            assert (await Deliverer(settings_for(target), session).deliver(target, RAW, read_alert(RAW))).delivered
        await receiver.stop()
        return receiver

    receiver = asyncio.run(scenario())
    body = json.loads(receiver.requests[0][2])
    assert body == slack_message(read_alert(RAW), None)


def test_filters_choose_the_alerts_an_endpoint_gets() -> None:
    alert = read_alert(RAW)
    assert wanted(endpoint("http://x/", rules=["band_downgrade"], bands=["at_risk"], min_churn_risk=0.4), alert)
    assert not wanted(endpoint("http://x/", rules=["cancellation"]), alert)
    assert not wanted(endpoint("http://x/", severities=["critical"]), alert)
    assert not wanted(endpoint("http://x/", min_churn_risk=0.5), alert)
    assert not wanted(endpoint("http://x/", plans=["enterprise"]), alert)  # this alert's customer has no plan
    enterprise = read_alert(msgspec.json.encode({**ALERT, "plan": "enterprise"}))
    assert wanted(endpoint("http://x/", plans=["enterprise"]), enterprise)
    assert reasons_text([]) == "no component moved"


def test_a_webhook_without_a_secret_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="HEALTHSCORE_DELIVERY_SECRET_MY_CRM"):
        DeliverySettings(endpoints=[EndpointSettings(name="my-crm", kind="webhook", url="https://crm.example.com/hook")])
    monkeypatch.setenv("HEALTHSCORE_DELIVERY_SECRET_MY_CRM", SECRET)
    settings = DeliverySettings(endpoints=[EndpointSettings(name="my-crm", kind="webhook", url="https://crm.example.com/hook")])
    assert settings.endpoint("my-crm").secret_value() == SECRET
    assert SECRET not in repr(settings)


# Hardening: one alert or one endpoint cannot stop delivery, nor point it inside the network.
HOSTILE_ID = "<!channel> <https://evil.example|click> & " + "x" * 214  # 256 characters, the contract's bound


def test_a_hostile_256_character_customer_id_gives_valid_escaped_block_kit() -> None:
    assert len(HOSTILE_ID) == 256
    alert = read_alert(msgspec.json.encode({**ALERT, "customer_id": HOSTILE_ID, "detail": "<!here> " + "d" * 3000}))
    message = slack_message(alert, "https://crm.example.com/customers/{customer_id}")
    for block in message["blocks"]:
        Block.parse(block).validate_json()  # slack_sdk's limits: a header of 150 characters among them
    header = message["blocks"][0]["text"]["text"]
    assert len(header) == 150 and header.endswith("…")
    assert "<!channel>" not in message["text"] and "&lt;!channel&gt; &lt;https://evil.example|click&gt; &amp;" in message["text"]
    context = message["blocks"][2]["elements"][0]["text"]
    assert context.startswith("&lt;!here&gt;") and len(context) == 2000
    url = message["blocks"][-1]["elements"][0]["url"]
    assert url.startswith("https://crm.example.com/customers/%3C%21channel%3E%20%3Chttps%3A%2F%2Fevil.example%7Cclick%3E%20%26%20xxx")


@pytest.mark.parametrize(("secret", "problem"), [
    ("whsec_!!!", 'is not "whsec_" followed by base64'),
    ("not-a-secret", 'must start with "whsec_"'),
    ("whsec_" + base64.b64encode(b"short").decode(), "decodes to 5 bytes"),
])
def test_a_malformed_webhook_secret_is_refused_when_settings_load(secret: str, problem: str) -> None:
    with pytest.raises(ValueError, match="endpoint 'crm': the webhook secret") as refused:
        EndpointSettings(name="crm", kind="webhook", url="https://crm.example.com/hook", secret=secret)
    assert problem in str(refused.value) and secret not in str(refused.value)


@pytest.mark.parametrize(("url", "flags", "problem"), [
    ("http://crm.example.com/hook", {}, "allow_insecure_http"),
    ("https://169.254.169.254/latest/meta-data/", {}, "allow_private_network"),
    ("https://127.0.0.1:8443/hook", {}, "allow_private_network"),
    ("https://10.1.2.3/hook", {}, "allow_private_network"),
    ("https://[::1]/hook", {}, "allow_private_network"),
    ("https://localhost/hook", {}, "allow_private_network"),
    ("https://user:pw@crm.example.com/hook", {}, "carries credentials"),
    ("ftp://crm.example.com/hook", {}, "https:// URL"),
])
def test_endpoint_urls_that_could_reach_inside_the_network_are_refused(url: str, flags: dict, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        EndpointSettings(name="crm", kind="webhook", url=url, secret=SECRET, **flags)


def test_a_slack_url_is_a_secret_and_allowed_addresses_are_opt_in() -> None:
    slack = EndpointSettings(name="cs", kind="slack", url="https://hooks.slack.com/services/T0/B0/sekret-token")
    assert "sekret-token" not in repr(slack) and "sekret-token" not in str(DeliverySettings(endpoints=[slack]))
    assert slack.url_value().endswith("sekret-token")
    local = EndpointSettings(name="local", kind="webhook", url="http://127.0.0.1:8080/hook", secret=SECRET, **LOCAL)
    assert local.allow_private_network and local.allow_insecure_http


def test_a_name_that_resolves_to_a_private_address_is_refused_at_connection_time() -> None:
    from stream.delivery.endpoints import PublicOnlyResolver

    async def scenario() -> str:
        resolver = PublicOnlyResolver()
        try:
            await resolver.resolve("localhost", 443)
        except OSError as error:
            return str(error)
        finally:
            await resolver.close()
        return "resolved"

    assert "resolves only to loopback, link-local or private addresses" in asyncio.run(scenario())


def test_a_redirect_is_not_followed() -> None:
    async def scenario() -> tuple[Any, Receiver, Receiver]:
        elsewhere = Receiver()
        elsewhere_url = await elsewhere.start()
        redirecting = Receiver([(307, {"Location": elsewhere_url})] * 10)
        target = endpoint(await redirecting.start())
        async with aiohttp.ClientSession() as session:
            outcome = await Deliverer(settings_for(target, wait=0.3), session).deliver(target, RAW, read_alert(RAW))
        await redirecting.stop()
        await elsewhere.stop()
        return outcome, redirecting, elsewhere

    outcome, redirecting, elsewhere = asyncio.run(scenario())
    assert not outcome.delivered and outcome.error == "HTTP 307 (redirects are not followed)"
    assert len(redirecting.requests) >= 1 and elsewhere.requests == []


def test_an_alert_that_raises_for_one_endpoint_is_parked_there_while_another_receives(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever raises while one alert is prepared for one endpoint (here the webhook's
    signature, as a secret that cannot sign would) parks it for that endpoint only."""
    import stream.delivery.endpoints as endpoints

    def broken_signature(*args: Any) -> dict[str, str]:
        raise ValueError("the secret cannot sign")

    monkeypatch.setattr(endpoints, "webhook_headers", broken_signature)
    hostile = msgspec.json.encode({**ALERT, "customer_id": HOSTILE_ID})

    async def scenario() -> tuple[list, Receiver]:
        slack_receiver = Receiver()
        slack = EndpointSettings(name="cs-channel", kind="slack", url=await slack_receiver.start(), **LOCAL)
        webhook = endpoint("http://127.0.0.1:9/hook")
        deliverer = Deliverer(settings_for(webhook, slack), aiohttp.ClientSession())
        outcomes = [await deliverer.deliver(e, hostile, read_alert(hostile)) for e in (webhook, slack)]
        await deliverer._session.close()
        await slack_receiver.stop()
        return outcomes, slack_receiver

    (webhook_outcome, slack_outcome), slack_receiver = asyncio.run(scenario())
    assert not webhook_outcome.delivered and webhook_outcome.error == "ValueError: the secret cannot sign"
    assert slack_outcome.delivered
    for block in json.loads(slack_receiver.requests[0][2])["blocks"]:
        Block.parse(block).validate_json()


def test_the_delivery_loop_stays_within_its_consumer_groups_poll_interval() -> None:
    from stream.delivery.service import max_poll_interval_ms
    from stream.settings import load_settings

    settings = load_settings()
    worst_per_alert_ms = (60 + settings.delivery.max_wait_per_alert_seconds + settings.delivery.request_timeout_seconds) * 1000
    assert max_poll_interval_ms(settings) >= 2 * worst_per_alert_ms
