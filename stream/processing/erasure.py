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
from scoring.privacy import ErasureRecord, ErasureRequest
from stream import metrics
from stream.kafka.producer import Outputs
from stream.processing.publishing import Clock, Publisher
from stream.sinks.redis_cache import LatestScoreCache
from stream.state.working_set import WorkingSet

log = logging.getLogger("healthscore.worker")


class Eraser:
    """Applies the erasure requests of the control topic."""

    #: First wait before asking Redis again, doubled up to ``longest_retry_seconds``.
    retry_seconds = 0.5
    longest_retry_seconds = 30.0

    def __init__(self, publisher: Publisher, cache: LatestScoreCache, audit_topic: str, clock: Clock) -> None:
        self._publisher = publisher
        self._cache = cache
        self._audit_topic = audit_topic
        self._clock = clock
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
        deleted = ["state", "changelog"] if working.erase(key, partition) else ["changelog"]
        self._publisher.forget(request.customer_id)
        await self._erase_from_redis(request.customer_id)
        deleted.append("redis")
        outputs.add(self._publisher.health_topic, self._publisher.health_partition(key, partition), key, None)
        deleted.append("customer-health")
        record = ErasureRecord(
            request.subject, request.request_id, request.reason, rfc3339(request.at_ms), rfc3339(int(self._clock() * 1000)), deleted
        )
        outputs.add(self._audit_topic, partition, request.subject.encode(), msgspec.json.encode(record))
        metrics.ERASURES.inc()
        log.info("Erased a customer on partition %s (request %s): %s", partition, request.request_id, ", ".join(deleted))

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

