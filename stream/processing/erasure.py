"""Erasure of one customer, in order with its events (GDPR article 17).

``healthscore erase`` sends an :class:`ErasureRequest` to the control topic (the sweep
topic), keyed by the customer id, so it lands on the customer's partition and the worker
that owns the customer applies it between its events, at the request's place in event
time, as it applies a sweep tick. The worker then deletes the state record (and queues its
changelog tombstone, so no restart, rebalance or replay of the changelog brings it back),
the customer's entry in the partition index (so no sweep or Redis refill touches it), its
Redis keys, and its latest score on ``customer-health`` (a tombstone for its key), and
records what it did on the audit topic under the customer's keyed hash, never its id.

Redis must confirm the deletion: while it cannot, the erasure waits and retries (and the
partition with it) rather than report an erasure that left a copy behind.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from aiokafka.structs import ConsumerRecord
from redis.exceptions import RedisError

from scoring.contract import Rejection, RejectReason
from scoring.output import rfc3339
from scoring.privacy import ErasedCustomers, ErasureRecord, ErasureRequest
from stream import metrics
from stream.kafka.producer import Outputs
from stream.processing.publishing import Clock, Publisher
from stream.settings import Settings
from stream.sinks.redis_cache import LatestScoreCache
from stream.state.working_set import WorkingSet

DAY_MS = 86_400_000


def expiring_copies(settings: Settings, erased_ms: int) -> dict[str, str]:
    """The copies an erasure cannot delete at once, and by when they are gone."""
    topics = settings.topics

    def by(days: float) -> str:
        return rfc3339(erased_ms + int(days * DAY_MS))

    return {
        "customer-health (earlier scores)": by(topics.health_retention_days),
        "churn-alerts": by(topics.alerts_retention_days),
        "churn-alerts.delivery-failed": by(topics.alerts_retention_days),
        "dead-letter topics": by(topics.dead_letter_retention_days),
        "control topic (this request)": by(topics.control_retention_days),
        "changelog (earlier state records)": by(settings.changelog_max_compaction_lag_days),
        "input topics": "their own retention (set where they were created)",
        "Slack and webhook receivers": "not ours to delete: copies already delivered stay there",
    }

log = logging.getLogger("healthscore.worker")


class Eraser:
    """Applies the erasure requests of the control topic."""

    #: First wait before asking Redis again, doubled up to ``longest_retry_seconds``.
    retry_seconds = 0.5
    longest_retry_seconds = 30.0

    def __init__(
        self, publisher: Publisher, cache: LatestScoreCache, audit_topic: str, clock: Clock,
        erased: ErasedCustomers | None = None, settings: Settings | None = None,
    ) -> None:
        self._publisher = publisher
        self._cache = cache
        self._audit_topic = audit_topic
        self._clock = clock
        self._erased = erased if erased is not None else ErasedCustomers(b"")
        self._settings = settings
        self._decoder = msgspec.json.Decoder(ErasureRequest)

    async def handle(self, message: ConsumerRecord, working: WorkingSet, outputs: Outputs) -> None:
        try:
            request = self._decoder.decode(message.value)
        except (msgspec.DecodeError, TypeError) as error:
            await self._publisher.dead_letter(message, Rejection(RejectReason.INVALID_FIELD, f"not an erasure request: {error}"))
            return
        if request.customer_id.encode() != message.key:
            await self._publisher.dead_letter(message, Rejection(RejectReason.KEY_MISMATCH, "an erasure request's key must be its customer_id"))
            return
        key, partition = message.key, message.partition
        if request.allow_return:
            self._allow_return(request, partition, outputs)
            return
        deleted = ["state", "changelog"] if working.erase(key, partition) else ["changelog"]
        self._publisher.forget(request.customer_id)
        await self._erase_from_redis(request.customer_id)
        deleted.append("redis")
        outputs.add(self._publisher.health_topic, self._publisher.health_partition(key, partition), key, None)
        deleted.append("customer-health")
        now_ms = int(self._clock() * 1000)
        expires = expiring_copies(self._settings, now_ms) if self._settings is not None else {}
        record = ErasureRecord(request.subject, request.request_id, request.reason, rfc3339(request.at_ms), rfc3339(now_ms), deleted, expires)
        outputs.add(self._audit_topic, partition, request.subject.encode(), msgspec.json.encode(record))
        self._erased.note(record)  # on the deny-list at once: its next events here are refused
        if self._settings is not None and self._settings.privacy.hash_key is None:
            log.error(
                "An erasure was applied, but privacy.hash_key is not set on this worker: it cannot recognise the erased "
                "customer among its events (set HEALTHSCORE_PRIVACY__HASH_KEY to the key `healthscore erase` used)"
            )
        metrics.ERASURES.inc()
        log.info("Erased a customer on partition %s (request %s): %s", partition, request.request_id, ", ".join(deleted))

    def _allow_return(self, request: ErasureRequest, partition: int, outputs: Outputs) -> None:
        """`erase --allow-return`: events from the request's time on are applied again; the audit
        record keeps what the erasure did and says from when the customer may return."""
        previous = self._erased.record_of(request.customer_id)
        if previous is None:
            log.warning("An allow-return request (%s) names a customer that was not erased: nothing to do", request.request_id)
            return
        record = msgspec.structs.replace(previous, returns_from=rfc3339(request.at_ms))
        outputs.add(self._audit_topic, partition, request.subject.encode(), msgspec.json.encode(record))
        self._erased.note(record)
        log.info("An erased customer on partition %s may return from %s (request %s)", partition, record.returns_from, request.request_id)

    async def _erase_from_redis(self, customer_id: str) -> None:
        pause = self.retry_seconds
        waiting = False
        try:
            while True:
                try:
                    await self._cache.erase(customer_id)
                    return
                except (RedisError, OSError) as error:
                    if not waiting:
                        waiting = True
                        metrics.ERASURES_WAITING.inc()
                        log.warning("An erasure waits for Redis to delete the customer's keys (%s); retrying", error)
                await asyncio.sleep(pause)
                pause = min(pause * 2, self.longest_retry_seconds)
        finally:
            if waiting:
                metrics.ERASURES_WAITING.dec()

