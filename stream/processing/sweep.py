"""The inactivity sweep: silent customers are rescored at a time, decaying their score and
raising silence and overdue alerts, without an event to trigger it.

A sweep is a tick (:class:`SweepTick`) on each partition of the sweep topic, so it goes
through the same agent as the events, in order with them. Each tick rescores one chunk
of the partition's customers, in key order, then sends the next tick for the rest: the
events have their turn between chunks. The partition's keys are sorted once per sweep (at
its first tick, or the first this worker sees after a restart), not once per chunk: sorting
a million keys for each 500-customer chunk made a sweep quadratic in the customers.

The customers a sweep visits are only those that may need it (``sweep_due_index``, on by
default): the ones written since the partition's last sweep (their moment is worked out
from their record) and the ones whose moment from ``scoring.due.next_sweep_due`` has come,
kept by minute in :class:`DueIndex`. A partition this worker has not scheduled yet (a start,
an assignment, records read back) is visited in full once. What is published is what
rescoring every customer would publish (scoring/due.py; tests/unit/test_due.py).
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from typing import Iterable

import faust
import msgspec
from aiokafka.structs import ConsumerRecord

from scoring.alerts import AlertParameters
from scoring.contract import Rejection, RejectReason
from scoring.due import next_sweep_due
from scoring.health import ScoringParameters
from scoring.pipeline import Step, due_for_sweep, sweep
from scoring.pipeline import expired as expired_state
from scoring.state import CustomerState
from stream import metrics
from stream.kafka.producer import Outputs
from stream.processing.publishing import Clock, Publisher
from stream.settings import Settings
from stream.state.due_index import DueIndex
from stream.state.table import KeysByPartition
from stream.state.working_set import WorkingSet

log = logging.getLogger("healthscore.worker")


#: Sweeps in progress whose key order is kept (a partition swept twice at once is two).
MAX_SWEEPS_IN_PROGRESS = 64
class SweepTick(msgspec.Struct, frozen=True):
    """Rescore the customers of this partition at ``at_ms``, in key order after ``after``."""

    at_ms: int
    started_at: float
    after: str | None = None


class Sweeper:
    """Starts sweeps on the partitions a worker owns, and applies their ticks."""

    def __init__(
        self,
        settings: Settings,
        parameters: ScoringParameters,
        rules: AlertParameters,
        keys_by_partition: KeysByPartition,
        publisher: Publisher,
        sweep_topic: faust.TopicT,
        clock: Clock,
    ) -> None:
        self._parameters = parameters
        self._rules = rules
        self._silence_ms = int(settings.sweep_interval_seconds * 1000)
        self._min_score_change = settings.sweep_min_score_change
        self._chunk_size = settings.sweep_chunk_size
        self._keys_by_partition = keys_by_partition
        self._ttl_ms = settings.state_ttl_ms
        self._max_skew_ms = settings.max_future_skew_seconds * 1000
        self._publisher = publisher
        self._topic = sweep_topic
        self._clock = clock
        #: (partition, sweep time) → the partition's keys in order, taken at the sweep's first tick.
        self._orders: dict[tuple[int, int], list[bytes]] = {}
        self._use_index = settings.sweep_due_index
        #: Per partition: customers by due minute, and those to place (written since, or never placed).
        self._indexes: dict[int, DueIndex] = {}
        self._to_place: dict[int, set[bytes]] = {}

    def _candidates(self, partition: int, at_ms: int, keys: set[bytes]) -> Iterable[bytes]:
        """The customers this sweep visits: every one (the full scan, or a partition not yet
        placed in the index), else those written since the last sweep and those due."""
        written = self._keys_by_partition.take_written_since_sweep(partition)
        if not self._use_index:
            return keys
        index = self._indexes.get(partition)
        if index is None or partition in self._keys_by_partition.sweep_restored:
            self._keys_by_partition.sweep_restored.discard(partition)
            index = self._indexes[partition] = DueIndex()
            self._to_place[partition] = set(keys)
            return keys
        to_place = self._to_place.setdefault(partition, set())
        to_place |= written
        return to_place | index.take(at_ms)

    def _chunk(self, partition: int, at_ms: int, after: bytes) -> tuple[list[bytes], bytes | None]:
        """The next chunk of keys after ``after`` still in the partition, and where the next
        tick starts (None: the sweep of this partition is done)."""
        keys = self._keys_by_partition.get(partition, set())
        order = self._orders.get((partition, at_ms))
        if order is None:
            order = self._orders[(partition, at_ms)] = sorted(key for key in self._candidates(partition, at_ms, keys) if key > after)
            while len(self._orders) > MAX_SWEEPS_IN_PROGRESS:
                del self._orders[next(iter(self._orders))]
        start = bisect_right(order, after)
        window = order[start : start + self._chunk_size]
        chunk = [key for key in window if key in keys]  # erased or evicted since the sweep began: skipped
        if start + self._chunk_size < len(order):
            return chunk, window[-1]
        self._orders.pop((partition, at_ms), None)
        return chunk, None

    async def start(self, owned_partitions: Iterable[int]) -> None:
        """Each worker sweeps the partitions it owns, at the current time."""
        now = self._clock()
        owned = sorted(owned_partitions)
        for partition in owned:
            await self._topic.send(value=msgspec.json.encode(SweepTick(int(now * 1000), now)), partition=partition)
        if owned:
            log.info("Sweep started for %s partition(s)", len(owned))

    def swept(
        self, state: CustomerState, at_ms: int, key: bytes = b"", expired: list[bytes] | None = None, partition: int | None = None
    ) -> Step | None:
        """Silent customers only (scoring.pipeline.due_for_sweep); None leaves the record untouched.
        A customer past state_ttl_days is noted in ``expired`` instead (the caller evicts it).
        With ``partition`` (the due index on), a customer written since the last sweep is
        rescored only if due now, and every customer visited is placed for its next moment."""
        if expired is not None and expired_state(state, at_ms, self._ttl_ms):
            expired.append(key)
            return None
        index = self._indexes.get(partition) if partition is not None else None
        if index is not None and key in self._to_place.get(partition, ()):  # type: ignore[arg-type]
            self._to_place[partition].discard(key)  # type: ignore[index]
            due = self._next_due(state, at_ms - 1)
            if due > at_ms:
                index.schedule(key, due)
                return None
        result = sweep(state, at_ms, self._parameters, self._rules, self._min_score_change) if due_for_sweep(state, at_ms, self._silence_ms) else None
        if index is not None:
            index.schedule(key, self._next_due(state, at_ms))
        return result

    def _next_due(self, state: CustomerState, at_ms: int) -> int:
        return next_sweep_due(state, at_ms, self._parameters, self._rules, self._min_score_change, self._silence_ms, self._ttl_ms, self._silence_ms)

    def evict(self, key: bytes, partition: int, customer_id: str, working: WorkingSet) -> None:
        """Keep only what is needed: the record goes (a changelog tombstone), its Redis keys follow."""
        working.erase(key, partition)
        self._publisher.forget(customer_id)
        self._publisher.forget_in_cache(customer_id)
        metrics.CUSTOMERS_EVICTED.inc()

    async def handle_tick(self, message: ConsumerRecord, working: WorkingSet, outputs: Outputs) -> None:
        try:
            tick = msgspec.json.decode(message.value, type=SweepTick)
        except (msgspec.DecodeError, TypeError) as error:
            await self._publisher.dead_letter(message, Rejection(RejectReason.INVALID_FIELD, f"not a sweep tick: {error}"))
            return
        ahead_ms = tick.at_ms - int(self._clock() * 1000)
        if ahead_ms > self._max_skew_ms:  # it would evict and decay everyone: refused, never applied
            log.warning("A sweep tick %s s in the future was refused (beyond max_future_skew_seconds)", ahead_ms // 1000)
            await self._publisher.dead_letter(
                message, Rejection(RejectReason.FUTURE_TIMESTAMP, f"sweep at {ahead_ms // 1000} s in the future, beyond max_future_skew_seconds")
            )
            return
        partition = message.partition
        after = tick.after.encode() if tick.after is not None else b""
        chunk, next_after = self._chunk(partition, tick.at_ms, after)
        expired: list[bytes] = []
        for key in chunk:
            customer_id = key.decode()
            result = working.run(key, partition, customer_id, lambda state: self.swept(state, tick.at_ms, key, expired, partition), message)
            if expired and expired[-1] is key:
                self.evict(key, partition, customer_id, working)
            elif result is not None:
                self._publisher.queue_score(outputs, key, partition, customer_id, result, None, tick.at_ms)
                await self._publisher.queue_alerts(outputs, key, partition, customer_id, result)
        metrics.SWEEP_CUSTOMERS.inc(len(chunk))
        if next_after is not None:
            # Let the stream have its turn, then continue where this step stopped.
            next_tick = SweepTick(tick.at_ms, tick.started_at, next_after.decode())
            await self._topic.send(value=msgspec.json.encode(next_tick), partition=partition)
        else:
            metrics.SWEEP_DURATION.observe(max(0.0, self._clock() - tick.started_at))


async def request_sweep(settings: Settings, at_ms: int, now: float) -> int:
    """Asks every partition's owner to sweep at ``at_ms`` (``healthscore sweep``); returns the partition count."""
    from aiokafka import AIOKafkaProducer

    from stream.kafka.clients import connection_options

    producer = AIOKafkaProducer(**connection_options(settings.kafka), acks="all", enable_idempotence=True)
    try:
        await producer.start()
        partitions = await producer.partitions_for(settings.topics.sweep)
        for partition in sorted(partitions):
            await producer.send_and_wait(
                settings.topics.sweep, msgspec.json.encode(SweepTick(at_ms, now)), partition=partition
            )
    finally:
        await producer.stop()
    return len(partitions)
