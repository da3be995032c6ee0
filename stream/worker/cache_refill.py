"""Refilling Redis when it lost the cached scores: Redis is a cache, and a cache the worker
does not refill would answer 404 for a customer until that customer's next event.

Every flush tick the worker checks its marker key (``LatestScoreCache.lost_since_last_check``).
When it is gone (Redis restarted empty, or was flushed), and whenever partitions were assigned
and their records read back (a start, a rebalance: Redis may have lost them while no worker
owned them), the customers of every partition the worker owns are queued, and each tick
rewrites the latest score of a chunk of them: rescored
from the record at the time it was last scored, with its explanation against the published
score. A customer with a newer score waiting for Redis is left to it. Events keep flowing:
a chunk costs a few milliseconds, between the agent's batches. A chunk waits while Redis is
behind (half of the scores the cache may hold are waiting): in a 10-million-customer backlog
the refill's own scores made the cache overflow again and the refill start over, four times
in ten minutes (2026-12-06).
"""

from __future__ import annotations

import logging
from itertools import islice
from typing import Any, Callable, Iterator

import faust
import msgspec

from scoring.health import ScoringParameters, score_state
from scoring.output import encode_json, health_message
from scoring.state import decode_state
from stream import metrics
from stream.processing.publishing import Clock
from stream.sinks.redis_cache import LatestScoreCache
from stream.state.keys import KeysByPartition
from stream.state.store import records_of

log = logging.getLogger("healthscore.worker")

#: Customers rewritten per flush tick (0.5 s by default): 100,000 customers in about 10 s.
REFILL_CHUNK = 5000


class CacheRefill:
    def __init__(
        self,
        app: faust.App,
        table: Any,
        keys_by_partition: KeysByPartition,
        sweep_topic: str,
        parameters: ScoringParameters,
        cache: LatestScoreCache,
        clock: Clock,
        on_refilled: Callable[[], None] | None = None,
    ) -> None:
        self._app = app
        self._records = records_of(table)
        self._keys_by_partition = keys_by_partition
        self._sweep_topic = sweep_topic
        self._parameters = parameters
        self._model_version = parameters.model_version
        self._cache = cache
        self._clock = clock
        #: (partition, its customers still to rewrite), in order.
        self._queue: list[tuple[int, Iterator[bytes]]] = []
        #: Called once Redis, after losing its data, has every owned customer's score again
        #: (the fleet export then writes their KPIs again).
        self._on_refilled = on_refilled
        self._refilling_after_loss = False

    def queue_owned(self) -> int:
        """Queues every customer of the partitions this worker owns; returns how many (about as
        many, from the RocksDB store's estimate: its keys are read as the refill goes)."""
        owned = sorted(tp.partition for tp in self._app.consumer.assignment() if tp.topic == self._sweep_topic)
        self._queue = [(partition, self._keys_by_partition.walk(partition, REFILL_CHUNK)) for partition in owned]
        return sum(self._keys_by_partition.count(partition) for partition in owned)

    async def step(self) -> None:
        """Checks whether Redis lost the scores (or the cache dropped scores it could not hold),
        and rewrites the next chunk of them if so, while Redis answers."""
        if await self._cache.lost_since_last_check():
            metrics.REDIS_REFILLS.inc()
            log.warning("Redis lost the cached scores (restarted empty or flushed): rewriting those of %s customers", self.queue_owned())
            self._refilling_after_loss = True
        elif self._cache.take_overflowed():
            metrics.REDIS_REFILLS.inc()
            log.warning("Scores waiting for Redis were dropped: rewriting those of %s customers once Redis answers", self.queue_owned())
        if self._queue and self._cache.healthy and self._cache.room_for(REFILL_CHUNK):
            partition, keys = self._queue[0]
            chunk = list(islice(keys, REFILL_CHUNK))
            if len(chunk) < REFILL_CHUNK:
                del self._queue[0]
            metrics.REDIS_REFILLED_CUSTOMERS.inc(self.rewrite(partition, chunk))
            if not self._queue:
                log.info("Redis refilled")
                if self._refilling_after_loss and self._on_refilled is not None:
                    self._on_refilled()
                self._refilling_after_loss = False

    def rewrite(self, partition: int, keys: list[bytes]) -> int:
        """Offers the cache the latest score of each of the partition's customers; returns how many."""
        now_ms = int(self._clock() * 1000)
        offered = 0
        records = self._records.if_open(partition)
        for key in keys if records is not None else ():
            customer_id = key.decode()
            stored = records.get(key)  # type: ignore[union-attr]
            if stored is None or self._cache.is_pending(customer_id):
                continue  # erased meanwhile, or a newer score is on its way
            try:
                state = decode_state(stored)
            except (msgspec.DecodeError, ValueError):
                continue  # the worker's own path reports a record it cannot read

            published = state.published
            if published is None:
                continue
            at_ms = max(published.as_of_ms, state.last_event_ms)
            health = score_state(state, at_ms, self._parameters, published.contributions, published.score)
            if health is None:
                continue
            self._cache.offer(customer_id, encode_json(health_message(customer_id, health, now_ms, self._model_version, None)))
            offered += 1
        return offered
