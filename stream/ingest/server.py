"""The `healthscore ingest` HTTP service: verifies each request (bearer token, Segment write
key, Stripe or Zendesk signature), maps its body with the source's module, checks every event
as the worker will (``contract.check``), produces them keyed by customer id (aiokafka's
default partitioner is Java's murmur2; acks=all, idempotent), and answers 2xx only once Kafka
acknowledged all of them, so a source retries otherwise. Keeps no state: run several behind
a load balancer."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import time
from typing import Awaitable, Callable

import msgspec
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from scoring.contract import Rejection, TopicKind
from stream import metrics
from stream.ingest import segment, stripe, zendesk
from stream.ingest.contract import Checked, check, parse_body
from stream.ingest.mapped import Mapped, rfc3339_ms
from stream.settings import IngestSettings, Settings, is_loopback

log = logging.getLogger("healthscore.ingest")

SOURCE_HEADER = "healthscore-ingest-source"
REASON_HEADER = "healthscore-ingest-reason"
DETAIL_HEADER = "healthscore-ingest-detail"
SEGMENT_CALLS = ("track", "identify", "group", "page", "screen", "alias", "batch")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def any_matches(presented: bytes, accepted: list[bytes]) -> bool:
    """Compared with every accepted value in constant time (the time says nothing about a near miss)."""
    found = False
    for candidate in accepted:
        found |= hmac.compare_digest(presented, candidate)
    return found


def bearer_token(request: web.Request) -> bytes:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip().encode() if scheme.lower() == "bearer" else b""


def basic_user(request: web.Request) -> bytes:
    """The user of HTTP basic auth: Segment's SDKs send the write key as the user, no password."""
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return b""
    try:
        return base64.b64decode(encoded.strip(), validate=True).partition(b":")[0]
    except (binascii.Error, ValueError):
        return b""


def stripe_verified(body: bytes, header: str | None, secrets: list[str], tolerance: int) -> bool:
    """Stripe's signature (``t=...,v1=...``), checked by the official library against each secret."""
    import stripe as stripe_library

    if not header:
        return False
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    for secret in secrets:
        try:
            stripe_library.WebhookSignature.verify_header(text, header, secret, tolerance)
            return True
        except stripe_library.SignatureVerificationError:
            continue
    return False


def zendesk_verified(body: bytes, signature: str | None, timestamp: str | None, secrets: list[bytes], tolerance: int, now: float) -> bool:
    """Zendesk's signature: base64 of HMAC-SHA256(secret, timestamp + body), and a recent timestamp."""
    at_ms = rfc3339_ms(timestamp) if timestamp else None
    if not signature or at_ms is None or abs(now * 1000 - at_ms) > tolerance * 1000:
        return False
    presented = signature.strip().encode()
    digests = [base64.b64encode(hmac.new(secret, timestamp.encode() + body, hashlib.sha256).digest()) for secret in secrets]  # type: ignore[union-attr]
    return any_matches(presented, digests)


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def source_of(path: str) -> str:
    if path == "/v1/events":
        return "events"
    if path in ("/stripe", "/zendesk"):
        return path[1:]
    if path.startswith("/v1/") and path[4:] in SEGMENT_CALLS:
        return "segment"
    return "other"


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """healthscore_ingest_requests_total by source and status (a 413 from aiohttp too)."""
    try:
        response = await handler(request)
    except web.HTTPException as exception:
        metrics.INGEST_REQUESTS.labels(source_of(request.path), str(exception.status)).inc()
        raise
    metrics.INGEST_REQUESTS.labels(source_of(request.path), str(response.status)).inc()
    return response


def mapped_safely(source: str, mapping: Callable[..., Mapped], *arguments: object) -> Mapped:
    """A mapping that raised (a payload shaped in a way it does not expect) is a rejection with
    the body parked, never a 500 the source would retry for days."""
    try:
        return mapping(*arguments)
    except Exception as exception:  # noqa: BLE001 - reported, counted and parked
        log.exception("Mapping a %s payload failed", source)
        return Mapped(rejected=(("unreadable", f"the {source} mapping failed: {type(exception).__name__}"),))


class Ingest:
    """The routes, with the producer they share."""

    def __init__(self, settings: Settings, producer: AIOKafkaProducer, clock: Callable[[], float] = time.time) -> None:
        ingest: IngestSettings = settings.ingest
        self._ingest = ingest
        self._producer = producer
        self._clock = clock
        self._max_skew_ms = settings.max_future_skew_seconds * 1000
        topics = settings.topics
        self._topics = {TopicKind.PURCHASES: topics.purchases, TopicKind.USAGE: topics.usage,
                        TopicKind.TICKETS: topics.tickets, TopicKind.PAYMENTS: topics.payments}
        self._rejected_topic = topics.ingest_rejected
        self._open = is_loopback(ingest.host)  # without credentials, only a loopback host serves a route
        self._tokens = [token.encode() for token in ingest.all_api_tokens()]
        self._write_keys = [key.get_secret_value().encode() for key in ingest.segment_write_keys]
        self._stripe = [secret.get_secret_value() for secret in ingest.stripe_webhook_secrets]
        self._zendesk = [secret.get_secret_value().encode() for secret in ingest.zendesk_webhook_secrets]
        self._segment = segment.SegmentRules(ingest.segment_account_from, frozenset(ingest.segment_session_events), dict(ingest.segment_features))

    async def _produce(self, checked: list[Checked], source: str) -> None:
        """Every event, keyed by customer; returns once Kafka acknowledged all (raises otherwise)."""
        started = time.perf_counter()
        headers = [(SOURCE_HEADER, source.encode())]
        sent = [await self._producer.send(self._topics[event.kind], event.value, key=event.key, headers=headers) for event in checked]
        await asyncio.gather(*sent)
        metrics.INGEST_PRODUCE_LATENCY.observe(time.perf_counter() - started)
        for event in checked:
            metrics.INGEST_EVENTS.labels(self._topics[event.kind]).inc()

    async def _park(self, source: str, body: bytes, rejections: list[tuple[str, str]]) -> None:
        """What could not be produced, with the original body and why, on the ingest.rejected topic."""
        sent = []
        for reason, detail in rejections:
            metrics.INGEST_REJECTED.labels(source, reason).inc()
            headers = [(SOURCE_HEADER, source.encode()), (REASON_HEADER, reason.encode()), (DETAIL_HEADER, detail.encode()[:1000])]
            sent.append(await self._producer.send(self._rejected_topic, body, headers=headers))
        await asyncio.gather(*sent)

    async def _deliver(self, source: str, mapped: Mapped, body: bytes) -> web.Response:
        """Checks and produces a webhook's mapped events; parks what cannot be produced; 503 if Kafka fails."""
        for kind in mapped.ignored:
            metrics.INGEST_IGNORED.labels(source, kind).inc()
        now_ms = int(self._clock() * 1000)
        checked: list[Checked] = []
        rejections = list(mapped.rejected)
        for item in mapped.events:
            result = check(item, now_ms, self._max_skew_ms)
            if isinstance(result, Rejection):
                rejections.append((result.reason.value, result.detail))
            else:
                checked.append(result)
        try:
            await self._produce(checked, source)
            await self._park(source, body, rejections)
        except (KafkaError, asyncio.TimeoutError, OSError) as exception:
            log.warning("Kafka did not acknowledge a %s request (%s): answered 503 so it is sent again", source, type(exception).__name__)
            return error(503, "Kafka did not acknowledge the events: send again")
        return web.json_response({"accepted": len(checked), "rejected": len(rejections), "ignored": len(mapped.ignored)})

    async def events(self, request: web.Request) -> web.Response:
        """POST /v1/events: our contract; each event accepted or rejected with the contract's reason."""
        if not (self._tokens or self._open):
            return error(404, "not configured: set ingest.api_tokens (or api_tokens_file)")
        if self._tokens and not any_matches(bearer_token(request), self._tokens):
            metrics.INGEST_SIGNATURE_FAILURES.labels("events").inc()
            return error(401, "a valid bearer token is required (Authorization: Bearer <token>)")
        items = parse_body(await request.read())
        if isinstance(items, Rejection):
            return error(400, items.detail)
        now_ms = int(self._clock() * 1000)
        results: list[dict] = []
        checked: list[Checked] = []
        for index, item in enumerate(items):
            result = check(item, now_ms, self._max_skew_ms)
            if isinstance(result, Rejection):
                metrics.INGEST_REJECTED.labels("events", result.reason.value).inc()
                results.append({"index": index, "status": "rejected", "reason": result.reason.value, "detail": result.detail})
            else:
                checked.append(result)
                results.append({"index": index, "status": "accepted"})
        try:
            await self._produce(checked, "events")
        except (KafkaError, asyncio.TimeoutError, OSError) as exception:
            log.warning("Kafka did not acknowledge an events request (%s): answered 503", type(exception).__name__)
            return error(503, "Kafka did not acknowledge the events: send again")
        return web.json_response({"accepted": len(checked), "rejected": len(results) - len(checked), "results": results})

    async def stripe(self, request: web.Request) -> web.Response:
        if not self._stripe:
            return error(404, "not configured: set ingest.stripe_webhook_secrets")
        body = await request.read()
        if not stripe_verified(body, request.headers.get("Stripe-Signature"), self._stripe, self._ingest.signature_tolerance_seconds):
            metrics.INGEST_SIGNATURE_FAILURES.labels("stripe").inc()
            return error(400, "the Stripe-Signature does not verify (wrong secret, altered body, or a timestamp outside the tolerance)")
        try:
            payload = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return error(400, "the body is not JSON")
        return await self._deliver("stripe", mapped_safely("stripe", stripe.map_event, payload, self._ingest.stripe_customer_id_from), body)

    async def zendesk(self, request: web.Request) -> web.Response:
        if not self._zendesk:
            return error(404, "not configured: set ingest.zendesk_webhook_secrets")
        body = await request.read()
        signature, timestamp = request.headers.get("X-Zendesk-Webhook-Signature"), request.headers.get("X-Zendesk-Webhook-Signature-Timestamp")
        if not zendesk_verified(body, signature, timestamp, self._zendesk, self._ingest.signature_tolerance_seconds, self._clock()):
            metrics.INGEST_SIGNATURE_FAILURES.labels("zendesk").inc()
            return error(401, "the X-Zendesk-Webhook-Signature does not verify (wrong secret, altered body, or an old timestamp)")
        try:
            payload = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return error(400, "the body is not JSON")
        return await self._deliver("zendesk", mapped_safely("zendesk", zendesk.map_event, payload, self._ingest.zendesk_customer_id_from), body)

    async def segment(self, request: web.Request) -> web.Response:
        """Segment's tracking API (/v1/track, /v1/batch, ...), the write key as basic auth user."""
        if not (self._write_keys or self._open):
            return error(404, "not configured: set ingest.segment_write_keys")
        if self._write_keys and not any_matches(basic_user(request), self._write_keys):
            metrics.INGEST_SIGNATURE_FAILURES.labels("segment").inc()
            return error(401, "a valid write key is required (HTTP basic auth, the write key as user)")
        body = await request.read()
        try:
            payload = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return error(400, "the body is not JSON")
        mapped = mapped_safely("segment", segment.map_body, payload, self._segment, request.match_info["call"])
        response = await self._deliver("segment", mapped, body)
        if response.status == 200:
            return web.json_response({"success": True})  # what Segment's API answers
        return response

    async def metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})


def build_app(ingest: Ingest, max_body_bytes: int) -> web.Application:
    app = web.Application(client_max_size=max_body_bytes, middlewares=[count_requests])
    app.router.add_post("/v1/events", ingest.events)
    app.router.add_post("/stripe", ingest.stripe)
    app.router.add_post("/zendesk", ingest.zendesk)
    app.router.add_post("/v1/{call:(" + "|".join(SEGMENT_CALLS) + ")}", ingest.segment)
    app.router.add_get("/metrics", ingest.metrics_page)
    app.router.add_get("/healthz", ingest.healthz)
    return app


async def serve(settings: Settings, producer: AIOKafkaProducer, stop: asyncio.Event, echo: Callable[[str], None] = print) -> None:
    """Serves until ``stop`` is set; the producer is started and stopped by the caller."""
    runner = web.AppRunner(build_app(Ingest(settings, producer), settings.ingest.max_body_bytes), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.ingest.host, settings.ingest.port)
    await site.start()
    echo(f"Ingesting on http://{settings.ingest.host}:{settings.ingest.port} (/v1/events, /stripe, /zendesk, /v1/batch ...)")
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
