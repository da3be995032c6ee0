"""The Faust app: topics, the customer-state table, the agent, timers and web pages.

This module only wires: decode and validate (scoring.contract), apply and score
(scoring.state, scoring.health), publish, count. Values travel as raw bytes:
Faust never decodes them (it would ack undecodable messages silently).
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from scoring.contract import Rejection, RejectReason, decode_event
from scoring.output import encode_json, health_message
from scoring.pipeline import step
from scoring.state import Outcome, decode_state, encode_state, new_state
from stream import metrics
from stream.settings import Settings, TopicNames
from stream.sinks import LatestScoreCache, dead_letter_headers

log = logging.getLogger("healthscore.worker")

Clock = Callable[[], float]


def raw_schema() -> faust.Schema:
    """A new raw-bytes schema per topic: Faust mutates a schema shared between channels."""
    return faust.Schema(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


class IdempotentProducer(faust_aiokafka.Producer):
    """acks=all and idempotence always, not only inside transactions."""

    def _settings_extra(self) -> dict:
        return {"acks": "all", "enable_idempotence": True}


def build_app(settings: Settings, clock: Clock = time.time) -> faust.App:
    parameters = settings.scoring.parameters()
    model_version = parameters.model_version
    input_kinds = settings.topics.inputs()
    max_skew_ms = settings.max_future_skew_seconds * 1000

    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        datadir=str(settings.data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        topic_allow_declare=True,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_enabled=True,
        web_metrics_enabled=False,
        stream_wait_empty=False,
        table_cleanup_interval=3600.0,
    )
    app.transport.Producer = IdempotentProducer

    source = app.topic(*input_kinds, partitions=settings.partitions, schema=raw_schema())
    source_topics = {name: app.topic(name, partitions=settings.partitions, schema=raw_schema()) for name in input_kinds}
    health_topic = app.topic(settings.topics.health, partitions=settings.partitions, schema=raw_schema())
    dead_letter_topics = {
        name: app.topic(TopicNames.dead_letter(name), partitions=settings.partitions, schema=raw_schema()) for name in input_kinds
    }
    states = app.Table("customer-state", default=None, partitions=settings.partitions, key_type=bytes, value_type=bytes)
    cache = LatestScoreCache(settings.redis_url, settings.redis_key_prefix)
    app.healthscore_cache = cache  # for tests and diagnostics

    async def dead_letter(message: faust.types.Message, rejection: Rejection) -> None:
        reason = rejection.reason.value
        await dead_letter_topics[message.topic].send(
            key=message.key,
            value=message.value,
            headers=dead_letter_headers(
                message.topic, message.partition, message.offset, message.timestamp, reason, rejection.detail
            ),
        )
        metrics.EVENTS.labels(message.topic, "dead_lettered").inc()
        metrics.DEAD_LETTERS.labels(message.topic, reason).inc()
        log.warning(
            "Dead-lettered %s[%s]@%s: %s (%s)", message.topic, message.partition, message.offset, reason, rejection.detail
        )

    async def handle(message: faust.types.Message) -> None:
        kind = input_kinds[message.topic]
        decoded = decode_event(message.key, message.value, kind, int(clock() * 1000), max_skew_ms)
        if isinstance(decoded, Rejection):
            await dead_letter(message, decoded)
        elif message.key is None:
            # Keyless: send it back keyed, so it lands on its customer's partition.
            await source_topics[message.topic].send(key=decoded.customer_id.encode(), value=message.value)
            metrics.EVENTS.labels(message.topic, "rekeyed").inc()
        else:
            stored = states.get(message.key)
            state = decode_state(stored) if stored is not None else new_state(decoded.customer_id)
            result = step(state, decoded, parameters, settings.dedup_capacity, (kind, message.partition, message.offset))
            metrics.EVENTS.labels(message.topic, result.outcome.value).inc()
            if result.outcome is Outcome.APPLIED:
                if result.publish is not None:
                    now = clock()
                    payload = health_message(decoded.customer_id, result.publish, int(now * 1000), model_version, decoded.event_id)
                    await health_topic.send(key=message.key, value=encode_json(payload))
                    metrics.SCORES_PUBLISHED.inc()
                    metrics.PROCESSING_LAG.observe(max(0.0, now - decoded.occurred_at_ms / 1000))
                    cache.offer(payload)
                states[message.key] = encode_state(state)

    @app.agent(source, name="apply-events")
    async def apply_events(stream: faust.StreamT) -> None:
        async for event in stream.events():
            message = event.message
            try:
                await handle(message)
            except Exception as error:  # a bug must not stop the stream: park the message and go on
                log.exception("Failed to process %s[%s]@%s", message.topic, message.partition, message.offset)
                await dead_letter(message, Rejection(RejectReason.PROCESSING_ERROR, f"{type(error).__name__}: {error}"))
            metrics.LAST_EVENT_PROCESSED.set(clock())

    @app.timer(interval=0.5)
    async def flush_cache() -> None:
        await cache.flush()

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return app
