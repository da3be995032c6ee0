"""The delivery process: reads ``churn-alerts`` in its own consumer group, delivers each alert
to every endpoint that wants it, and commits an alert's offset only once each of those
endpoints acknowledged it (2xx) or it was parked on the delivery_failed topic: at least
once per endpoint, nothing dropped silently. ``redrive`` sends an endpoint's parked alerts
again; ``send_test`` sends a sample alert.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Callable

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from stream import metrics
from aiokafka.errors import CommitFailedError, KafkaError

from stream.delivery.endpoints import Deliverer, Outcome, delivery_session
from stream.delivery.payloads import Alert, read_alert, wanted
from stream.kafka.clients import connection_options
from stream.kafka.topics import partitions_of
from stream.settings import EndpointSettings, Settings
from stream.state.erased import ErasedCustomersFollower, deny_list

log = logging.getLogger("healthscore.deliver")


def _seconds_since(rfc3339: str) -> float | None:
    try:
        return max(0.0, time.time() - datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None


class Delivery:
    """One alert at a time, to its endpoints concurrently; failures parked."""

    def __init__(
        self, settings: Settings, deliverer: Deliverer, producer: AIOKafkaProducer | None, erased: ErasedCustomersFollower | None = None,
    ) -> None:
        self._settings = settings
        self._deliverer = deliverer
        self._producer = producer
        self._erased = erased

    async def park(self, record: ConsumerRecord, endpoint: str, outcome: Outcome) -> None:
        headers = [
            ("delivery.endpoint", endpoint.encode()),
            ("delivery.error", outcome.error[:1000].encode()),
            ("delivery.attempts", str(outcome.attempts).encode()),
            ("delivery.parked_at", datetime.now(timezone.utc).isoformat().encode()),
        ]
        assert self._producer is not None, "a redrive never parks"
        await self._producer.send_and_wait(self._settings.topics.delivery_failed, record.value, key=record.key, headers=headers)
        metrics.DELIVERIES.labels(endpoint, "parked").inc()

    async def handle(self, record: ConsumerRecord, only: EndpointSettings | None = None) -> list[bool]:
        """Delivers one alert; returns, per endpoint that wanted it, whether it was delivered."""
        try:
            alert = read_alert(record.value)
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError) as error:
            log.warning("%s[%s]@%s is not an alert (%s): parked", record.topic, record.partition, record.offset, error)
            await self.park(record, "*", Outcome(False, 0, f"not an alert: {error}"))
            return []
        if await self._of_erased_customer(alert):
            return []
        endpoints = [only] if only is not None else [e for e in self._settings.delivery.endpoints if wanted(e, alert)]
        outcomes = await asyncio.gather(*(self._deliverer.deliver(e, record.value, alert) for e in endpoints))
        for endpoint, outcome in zip(endpoints, outcomes):
            if outcome.delivered:
                metrics.DELIVERIES.labels(endpoint.name, "delivered").inc()
                waited = _seconds_since(alert.raised_at)
                if waited is not None:
                    metrics.DELIVERY_LATENCY.labels(endpoint.name).observe(waited)
            elif only is None:
                await self.park(record, endpoint.name, outcome)
        return [outcome.delivered for outcome in outcomes]

    async def _of_erased_customer(self, alert: Alert) -> bool:
        """An alert raised before its customer was erased is dropped (the deny-list is read up
        to now first: an erasure a moment ago counts)."""
        if self._erased is None:
            return False
        await self._erased.refresh()
        try:
            occurred_ms = int(datetime.fromisoformat(alert.occurred_at.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            occurred_ms = 0
        if self._erased.erased.refuses(alert.customer_id, occurred_ms):
            metrics.DELIVERY_DROPPED_ERASED.inc()
            log.info("An alert of an erased customer was dropped (%s)", alert.alert_id)
            return True
        return False


def max_poll_interval_ms(settings: Settings) -> int:
    """The longest one alert can take (a rate-limit wait of up to a minute, then attempts for up
    to max_wait_per_alert_seconds, the last one up to request_timeout_seconds), with a margin:
    the loop takes one alert per poll, so it never overstays its consumer group."""
    delivery = settings.delivery
    worst = 60 + delivery.max_wait_per_alert_seconds + delivery.request_timeout_seconds
    return int(max(300.0, 2 * worst) * 1000)


async def _commit(consumer: AIOKafkaConsumer, record: ConsumerRecord) -> None:
    """Commits past ``record``; a group that moved on meanwhile is logged, not fatal: the alerts
    after the last commit come again to whoever owns them now (receivers deduplicate on
    webhook-id, the alert id)."""
    try:
        await consumer.commit({TopicPartition(record.topic, record.partition): OffsetAndMetadata(record.offset + 1, "")})
    except (CommitFailedError, KafkaError) as error:
        metrics.DELIVERY_COMMIT_FAILURES.inc()
        log.warning("Committing %s[%s]@%s failed (%s): the group rebalanced; its alerts may be delivered again",
                    record.topic, record.partition, record.offset, type(error).__name__)


async def run_delivery(settings: Settings, echo: Callable[[str], None] = print, stop: asyncio.Event | None = None) -> None:
    """Runs until ``stop`` is set (or for ever): the ``healthscore deliver`` process."""
    connection = connection_options(settings.kafka)
    consumer = AIOKafkaConsumer(
        settings.topics.alerts, **connection, group_id=settings.delivery.group_id,
        enable_auto_commit=False, auto_offset_reset="earliest", max_poll_interval_ms=max_poll_interval_ms(settings),
    )
    producer = AIOKafkaProducer(**connection, acks="all", enable_idempotence=True)
    erased = ErasedCustomersFollower(settings, deny_list(settings))
    await consumer.start()
    await producer.start()
    async with delivery_session(True) as session, delivery_session(False) as public_session:
        delivery = Delivery(settings, Deliverer(settings.delivery, session, public_session=public_session), producer, erased)
        names = ", ".join(f"{e.name} ({e.kind})" for e in settings.delivery.endpoints)
        echo(f"Delivering {settings.topics.alerts} to {names or 'no endpoint: configure [[delivery.endpoints]]'}")
        try:
            while stop is None or not stop.is_set():
                for records in (await consumer.getmany(timeout_ms=500, max_records=1)).values():
                    for record in records:
                        await delivery.handle(record)
                        await _commit(consumer, record)
        finally:
            await consumer.stop()
            await producer.stop()
            await erased.stop()


async def redrive(settings: Settings, endpoint: EndpointSettings, echo: Callable[[str], None] = print) -> tuple[int, int]:
    """Sends the endpoint's parked alerts again, oldest first, up to the topic's end as it is
    now; stops at the first that still fails (left parked, with what follows). Returns
    (redelivered, left parked)."""
    connection = connection_options(settings.kafka)
    topic = settings.topics.delivery_failed
    consumer = AIOKafkaConsumer(**connection, group_id=f"{settings.delivery.group_id}-redrive-{endpoint.name}",
                                enable_auto_commit=False, auto_offset_reset="earliest")
    erased = ErasedCustomersFollower(settings, deny_list(settings))
    await consumer.start()
    delivered = left = 0
    try:
        partitions = [TopicPartition(topic, p) for p in await partitions_of(settings.kafka, topic)]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        async with delivery_session(True) as session, delivery_session(False) as public_session:
            delivery = Delivery(settings, Deliverer(settings.delivery, session, public_session=public_session), None, erased)
            for tp in partitions:
                while await consumer.position(tp) < ends[tp]:
                    records = (await consumer.getmany(tp, timeout_ms=2000)).get(tp, [])
                    for record in records:
                        if record.offset >= ends[tp]:
                            break
                        if dict(record.headers or ()).get("delivery.endpoint") == endpoint.name.encode():
                            outcomes = await delivery.handle(record, only=endpoint)
                            if not all(outcomes):
                                left += 1
                                echo(f"{endpoint.name} still fails; stopping at {tp.topic}[{tp.partition}]@{record.offset}")
                                return delivered, left
                            delivered += len(outcomes)  # none for an alert of an erased customer
                        await consumer.commit({tp: OffsetAndMetadata(record.offset + 1, "")})
        return delivered, left
    finally:
        await consumer.stop()
        await erased.stop()


SAMPLE_ALERT = Alert(
    alert_id="test-0000", customer_id="test-customer", rule="band_downgrade", severity="warning", score=41.0, band="at_risk",
    churn_risk=0.42, previous_score=58.0, detail="a test alert from `healthscore deliver --test`",
)


async def send_test(settings: Settings, endpoint: EndpointSettings) -> Outcome:
    """One sample alert to one endpoint, with the usual retries."""
    raw = msgspec.json.encode(msgspec.structs.replace(SAMPLE_ALERT, raised_at=datetime.now(timezone.utc).isoformat()))
    async with delivery_session(True) as session, delivery_session(False) as public_session:
        return await Deliverer(settings.delivery, session, public_session=public_session).deliver(endpoint, raw, read_alert(raw))
