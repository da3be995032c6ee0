"""One alert to one endpoint: attempts with backoff and jitter, Retry-After, a 410 that
disables the endpoint, and the pause of an endpoint that keeps failing.

An alert waits on an endpoint at most ``max_wait_per_alert_seconds``; then it is parked
(the caller writes it to the delivery_failed topic) and the endpoint is paused until its
next retry time, so the alerts that follow are parked at once instead of each waiting in
turn: an endpoint that is down never holds the others back.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Awaitable, Callable

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from stream import metrics
from stream.delivery.payloads import Alert, slack_message, webhook_body, webhook_headers
from stream.settings import DeliverySettings, EndpointSettings, private_address

log = logging.getLogger("healthscore.deliver")

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class Outcome:
    """``delivered``, or ``parked`` with why; ``attempts`` made for this alert."""

    delivered: bool
    attempts: int
    error: str = ""


@dataclass
class _EndpointState:
    disabled: bool = False
    paused_until: float = 0.0  # time.monotonic(): alerts are parked at once until then
    last_error: str = ""
    sent: deque[float] = field(default_factory=deque)  # send times within the last minute


def _retry_after(response_headers: dict[str, str]) -> float | None:
    value = response_headers.get("Retry-After") or response_headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class PublicOnlyResolver(AbstractResolver):
    """Resolves as usual, then keeps only public addresses: a name that resolves to loopback,
    link-local (the cloud metadata service) or a private network is refused, so an endpoint's
    DNS cannot point a delivery inside the network."""

    def __init__(self) -> None:
        self._resolver = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[ResolveResult]:
        public = [entry for entry in await self._resolver.resolve(host, port, family) if not private_address(entry["host"])]
        if not public:
            raise OSError(f"{host} resolves only to loopback, link-local or private addresses (allow_private_network)")
        return public

    async def close(self) -> None:
        await self._resolver.close()


def delivery_session(allow_private_network: bool) -> aiohttp.ClientSession:
    """An HTTP session for the endpoints with (or without) ``allow_private_network``."""
    if allow_private_network:
        return aiohttp.ClientSession()
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=PublicOnlyResolver()))


def _redacted(text: str, endpoint: EndpointSettings) -> str:
    """An error text without the endpoint's URL (a Slack URL is a credential)."""
    return text.replace(endpoint.url_value(), f"<{endpoint.name} url>")


class Deliverer:
    """Sends alerts to the configured endpoints; ``session`` serves those that allow private
    networks, ``public_session`` (when given: :func:`delivery_session`) the others."""

    def __init__(
        self, settings: DeliverySettings, session: aiohttp.ClientSession, sleep: Sleep = asyncio.sleep,
        public_session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._settings = settings
        self._session = session
        self._public_session = public_session or session
        self._sleep = sleep
        self._state: dict[str, _EndpointState] = {endpoint.name: _EndpointState() for endpoint in settings.endpoints}

    def request(self, endpoint: EndpointSettings, raw_alert: bytes, alert: Alert) -> tuple[str, dict[str, str]]:
        """The body and headers for one attempt (signed anew: the timestamp is the attempt's)."""
        if endpoint.kind == "slack":
            import json

            return json.dumps(slack_message(alert, self._settings.customer_url_template)), {"content-type": "application/json"}
        sent_at = datetime.now(timezone.utc)
        body = webhook_body(raw_alert, sent_at)
        secret = endpoint.secret_value()
        assert secret is not None  # settings refuse a webhook without one
        return body, webhook_headers(secret, alert.alert_id, sent_at, body)

    async def _post(self, endpoint: EndpointSettings, body: str, headers: dict[str, str]) -> tuple[int | None, float | None, str]:
        """(status or None, Retry-After seconds, error text) of one attempt."""
        timeout = aiohttp.ClientTimeout(total=self._settings.request_timeout_seconds)
        session = self._session if endpoint.allow_private_network else self._public_session
        try:
            # Redirects are not followed: a 307/308 would send the signed body somewhere else.
            async with session.post(endpoint.url_value(), data=body.encode(), headers=headers, timeout=timeout, allow_redirects=False) as response:
                await response.read()
                moved = " (redirects are not followed)" if 300 <= response.status < 400 else ""
                return response.status, _retry_after(dict(response.headers)), f"HTTP {response.status}{moved}"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
            return None, None, _redacted(f"{type(error).__name__}: {error}", endpoint)

    async def _rate_limit(self, endpoint: EndpointSettings, state: _EndpointState) -> None:
        if endpoint.max_per_minute <= 0:
            return
        while True:
            now = time.monotonic()
            while state.sent and now - state.sent[0] >= 60:
                state.sent.popleft()
            if len(state.sent) < endpoint.max_per_minute:
                state.sent.append(now)
                return
            await self._sleep(60 - (now - state.sent[0]))

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        schedule = self._settings.retry_schedule_seconds or [5.0]
        delay = schedule[min(attempt - 1, len(schedule) - 1)] * (1 + random.random() * 0.2)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self._settings.max_retry_delay_seconds)

    async def deliver(self, endpoint: EndpointSettings, raw_alert: bytes, alert: Alert) -> Outcome:
        """Attempts until a 2xx, a 410, or the alert's wait would pass ``max_wait_per_alert_seconds``.
        Anything that raises for this alert and this endpoint (a payload that cannot be built,
        a secret that cannot sign) parks it for this endpoint, with the error: it never stops
        the delivery of the others."""
        try:
            return await self._attempts(endpoint, raw_alert, alert)
        except Exception as error:
            log.exception("Delivering an alert to %s raised: parked for this endpoint", endpoint.name)
            return Outcome(False, 0, _redacted(f"{type(error).__name__}: {error}", endpoint))

    async def _attempts(self, endpoint: EndpointSettings, raw_alert: bytes, alert: Alert) -> Outcome:
        state = self._state[endpoint.name]
        if state.disabled:
            return Outcome(False, 0, f"endpoint disabled: {state.last_error}")
        if time.monotonic() < state.paused_until:
            return Outcome(False, 0, f"endpoint paused after repeated failures: {state.last_error}")
        deadline = time.monotonic() + self._settings.max_wait_per_alert_seconds
        attempt = 0
        while True:
            await self._rate_limit(endpoint, state)
            body, headers = self.request(endpoint, raw_alert, alert)
            status, retry_after, error = await self._post(endpoint, body, headers)
            attempt += 1
            metrics.DELIVERY_ATTEMPTS.labels(endpoint.name, f"{status // 100}xx" if status else "error").inc()
            if status is not None and 200 <= status < 300:
                state.paused_until, state.last_error = 0.0, ""
                return Outcome(True, attempt)
            state.last_error = error
            if status == 410:
                state.disabled = True
                metrics.ENDPOINT_DISABLED.labels(endpoint.name).set(1)
                log.error("Endpoint %s answered 410 Gone: disabled; its alerts are parked for `healthscore deliver --redrive %s`", endpoint.name, endpoint.name)
                return Outcome(False, attempt, error)
            delay = self._delay(attempt, retry_after)
            if time.monotonic() + delay > deadline:
                state.paused_until = time.monotonic() + delay
                log.warning("Endpoint %s still failing after %s attempt(s) (%s): alert parked, endpoint paused %.0f s", endpoint.name, attempt, error, delay)
                return Outcome(False, attempt, error)
            await self._sleep(delay)
