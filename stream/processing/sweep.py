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
from itertools import islice
from typing import Any, Iterable, Literal

import faust
import msgspec
from aiokafka.structs import ConsumerRecord

from scoring.alerts import AlertParameters
from scoring.contract import Rejection, RejectReason
from scoring.due import DueSearch
from scoring.health import ScoringParameters
from scoring.pipeline import Step, due_for_sweep, sweep
from scoring.pipeline import expired as expired_state
from scoring.state import CustomerState
from stream import metrics
from stream.kafka.producer import Outputs
from stream.processing.publishing import Clock, Publisher
from stream.settings import Settings
from stream.state.disk_index import PLACE, SWEEP_DUE, StoredDueIndex, entries
from stream.state.due_index import DueIndex
from stream.state.store import PartitionRecords
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
    #: With the RocksDB store and the due index, the list ``after`` is in: None the customers
    #: written since the last commit, "place" the place markers, "due" the due entries (then
    #: ``after`` is the entry, in hex). See :class:`StoredChunk`.
    phase: Literal["place", "due"] | None = None


class StoredChunk(msgspec.Struct):
    """A chunk of a sweep over the RocksDB store: the customers, each with the index entry it
    was taken from (deleted when the customer is placed again; None: from memory), whether
    they are visited to be placed, and where the next tick starts (None: done)."""

    keys: list[bytes]
    entries: list[bytes | None]
    placing: bool
    next_after: bytes | None = None
    next_phase: str | None = None


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
        native: Any = None,
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
        #: When each customer is next due (in the Rust kernel with ``native``, the worker's kernel).
        self._search = DueSearch(parameters, rules, self._min_score_change, self._silence_ms, self._ttl_ms, native)
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

    def _next_chunk(self, partition: int, tick: SweepTick) -> StoredChunk:
        """The tick's chunk, from memory or from the RocksDB store."""
        disk = self._keys_by_partition.disk
        if disk is not None:
            after = bytes.fromhex(tick.after) if tick.phase == "due" and tick.after else (tick.after or "").encode()
            return self._stored_chunk(disk.partition(partition), partition, tick.at_ms, after, tick.phase)
        keys, next_after = self._chunk(partition, tick.at_ms, tick.after.encode() if tick.after is not None else b"")
        return StoredChunk(keys, [None] * len(keys), None, next_after)  # type: ignore[arg-type]

    def _stored_chunk(self, records: PartitionRecords, partition: int, at_ms: int, after: bytes, phase: str | None) -> StoredChunk:
        """The next chunk over the RocksDB store. Without the due index: every customer (from disk
        in key order, with those written since the last commit). With it: those written since the
        last commit, then the place markers (both to place), then the entries due by ``at_ms``."""
        size = self._chunk_size
        if phase is None:
            written = self._orders.get((partition, at_ms))
            if written is None:  # taken once per sweep: what a commit has not brought to disk yet
                written = self._orders[(partition, at_ms)] = records.pending_keys()
                while len(self._orders) > MAX_SWEEPS_IN_PROGRESS:
                    del self._orders[next(iter(self._orders))]
            if not self._use_index:
                return self._everyone_chunk(records, partition, at_ms, written, after)
            start = bisect_right(written, after)
            keys = [key for key in written[start : start + size] if key in records]
            if start + size < len(written):
                return StoredChunk(keys, [None] * len(keys), True, written[start + size - 1])
            self._orders.pop((partition, at_ms), None)
            return StoredChunk(keys, [None] * len(keys), True, b"", "place")
        if phase == "place":
            taken = [(entry, entry[len(PLACE) :]) for entry, _value in islice(entries(records.index, PLACE + after, PLACE), size + 1)]
            taken = [pair for pair in taken if pair[1] != after][:size]
            next_after, next_phase = (taken[-1][1], "place") if len(taken) == size else (b"", "due")
        else:
            taken = StoredDueIndex(records.index, SWEEP_DUE).walk(at_ms, after, size)
            next_after, next_phase = (taken[-1][0], "due") if len(taken) == size else (None, None)
        kept: dict[bytes, bytes] = {}  # key -> entry: a customer once per chunk (an earlier entry may stay behind)
        for entry, key in taken:
            if key in kept or key not in records:  # a second entry, or erased or evicted since: the entry goes
                records.index.delete(entry)
            else:
                kept[key] = entry
        return StoredChunk(list(kept), list(kept.values()), phase == "place", next_after, next_phase)

    def _everyone_chunk(self, records: PartitionRecords, partition: int, at_ms: int, written: list[bytes], after: bytes) -> StoredChunk:
        """The next customers after ``after``, from disk and from those not yet committed."""
        size = self._chunk_size
        start = bisect_right(written, after)
        keys = sorted(set(records.keys_after(after, size)) | set(written[start : start + size]))[:size]
        next_after = keys[-1] if len(keys) == size else None  # fewer: both lists are done
        if next_after is None:
            self._orders.pop((partition, at_ms), None)
        kept = [key for key in keys if key in records]  # erased since the commit
        return StoredChunk(kept, [None] * len(kept), False, next_after)

    async def start(self, owned_partitions: Iterable[int]) -> None:
        """Each worker sweeps the partitions it owns, at the current time."""
        now = self._clock()
        owned = sorted(owned_partitions)
        for partition in owned:
            await self._topic.send(value=msgspec.json.encode(SweepTick(int(now * 1000), now)), partition=partition)
        if owned:
            log.info("Sweep started for %s partition(s)", len(owned))

    def swept(
        self, state: CustomerState, at_ms: int, key: bytes = b"", expired: list[bytes] | None = None, partition: int | None = None,
        placing: bool | None = None, entry: bytes | None = None,
    ) -> Step | None:
        """Silent customers only (scoring.pipeline.due_for_sweep); None leaves the record untouched.
        A customer past state_ttl_days is noted in ``expired`` instead (the caller evicts it).
        With ``partition`` (the due index on), a customer to place (written since the last
        sweep: ``placing``, or looked up in memory when None) is rescored only if due now, and
        every customer visited is placed for its next moment; ``entry``, the stored index entry
        it was taken from, is deleted as it is placed again."""
        if expired is not None and expired_state(state, at_ms, self._ttl_ms):
            expired.append(key)
            return None
        index = self._index_of(partition)
        if index is not None:
            if placing is None:
                placing = key in self._to_place.get(partition, ())  # type: ignore[arg-type]
                self._to_place.get(partition, set()).discard(key)  # type: ignore[arg-type]
            if entry is not None:
                self._keys_by_partition.disk.partition(partition).index.delete(entry)
            if placing and (due := self._next_due(state, at_ms - 1)) > at_ms:
                index.schedule(key, due)
                return None
        result = sweep(state, at_ms, self._parameters, self._rules, self._min_score_change) if due_for_sweep(state, at_ms, self._silence_ms) else None
        if index is not None:
            index.schedule(key, self._next_due(state, at_ms))
        return result

    def _index_of(self, partition: int | None) -> DueIndex | StoredDueIndex | None:
        """The partition's due index (None: the index is off, or no partition was given)."""
        if partition is None or not self._use_index:
            return None
        disk = self._keys_by_partition.disk
        if disk is None:
            return self._indexes.get(partition)
        return StoredDueIndex(disk.partition(partition).index, SWEEP_DUE)

    def _next_due(self, state: CustomerState, at_ms: int) -> int:
        return self._search.next_due(state, at_ms)

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
        try:
            chunk = self._next_chunk(partition, tick)
        except ValueError as error:  # a "due" tick whose ``after`` is not hex: refused, never applied
            await self._publisher.dead_letter(message, Rejection(RejectReason.INVALID_FIELD, f"not a sweep tick: {error}"))
            return
        expired: list[bytes] = []
        for key, entry in zip(chunk.keys, chunk.entries):
            customer_id = key.decode()
            result = working.run(
                key, partition, customer_id, lambda state: self.swept(state, tick.at_ms, key, expired, partition, chunk.placing, entry), message
            )
            if expired and expired[-1] is key:
                self.evict(key, partition, customer_id, working)
            elif result is not None:
                self._publisher.queue_score(outputs, key, partition, customer_id, result, None, tick.at_ms)
                await self._publisher.queue_alerts(outputs, key, partition, customer_id, result)
        metrics.SWEEP_CUSTOMERS.inc(len(chunk.keys))
        if chunk.next_after is not None:
            # Let the stream have its turn, then continue where this step stopped.
            after = chunk.next_after.hex() if chunk.next_phase == "due" else chunk.next_after.decode()
            next_tick = SweepTick(tick.at_ms, tick.started_at, after, chunk.next_phase)
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
