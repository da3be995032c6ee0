"""Which alert ids are already on the alerts topic, per partition.

An alert published just before a crash can be raised again when the worker
reprocesses the same events (the state record that remembered it may not have
reached its changelog). Before the first alert on a partition after each
rebalance, the ledger reads back the tail of the alerts topic's matching
partition (alerts are written to the same partition number as their customer's
input) and remembers the ids it finds; the worker skips any alert whose id is
there. Alert ids are deterministic per episode, so this catches exactly the
repeats. In memory it keeps as many ids per partition as it reads back (the
newest), so a long-running worker does not collect every alert it ever sent,
and it keeps them as hashes (``_RecentIds``), 8 bytes each.

The check fails closed: while a partition's tail cannot be read (the broker unreachable,
no READ permission on the alerts topic), its alerts wait, and the batch with them, rather
than risk one being sent twice; ``healthscore_alerts_waiting_for_ledger`` counts the
partitions waiting, and the wait ends early if the partition moves to another worker
(which raises the alerts again from the uncommitted events).
"""

from __future__ import annotations

import asyncio
import logging
from array import array
from bisect import bisect_left
from collections import deque
from datetime import datetime
from typing import Any, Callable

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from scoring.fleet_budget import FleetBudget
from stream import metrics

log = logging.getLogger(__name__)


def epoch_ms(rfc3339: str) -> int:
    """An alert message's ``occurred_at`` in epoch milliseconds (0 if unreadable)."""
    try:
        return int(datetime.fromisoformat(rfc3339).timestamp() * 1000)
    except ValueError:
        return 0


class _AlertId(msgspec.Struct):
    alert_id: str
    occurred_at: str = ""


#: The ids are remembered in this many full generations and the one being filled: the ids of
#: the last ``limit`` additions are always there, with at most a generation more.
GENERATIONS = 4


class _RecentIds:
    """The ids of the last ``limit`` additions (and up to a generation more), with fast membership.

    It keeps each id's 64-bit ``hash``, not the id: as strings in a set, 10,000 ids per
    partition took about 150 B each, 18 MB for 12 partitions, which was a tenth of a worker's
    memory at 100,000 customers (bench/scale.py, 2026-11-30). A full generation is a sorted
    array (8 B per id) searched by bisection; only the generation being filled is a dict. The
    hash of a str is the same for the life of the process, which is all the ledger needs (it
    reads the ids back after each start). Two different ids share one with odds of about
    ``limit`` in 2^64 per lookup; the cost of that would be one alert not sent.
    """

    def __init__(self, limit: int) -> None:
        self._generation_size = -(-limit // GENERATIONS) if limit > 0 else 0
        sealed_generations = -(-limit // self._generation_size) if limit > 0 else 0
        self._sealed: deque[array[int]] = deque(maxlen=sealed_generations)
        self._filling: dict[int, None] = {}

    def add(self, alert_id: str) -> None:
        fingerprint = hash(alert_id)
        if self._generation_size == 0 or fingerprint in self._filling:
            return
        self._filling[fingerprint] = None  # even if an older generation has it: it is among the newest again
        if len(self._filling) >= self._generation_size:
            self._sealed.append(array("q", sorted(self._filling)))
            self._filling = {}

    def _has(self, fingerprint: int) -> bool:
        if fingerprint in self._filling:
            return True
        for generation in self._sealed:
            index = bisect_left(generation, fingerprint)
            if index < len(generation) and generation[index] == fingerprint:
                return True
        return False

    def __contains__(self, alert_id: object) -> bool:
        return isinstance(alert_id, str) and self._has(hash(alert_id))

    def __len__(self) -> int:
        """Distinct ids remembered (an id added again can be in two generations)."""
        return len(set(self._filling).union(*self._sealed))


class AlertLedger:
    #: First wait before reading a tail again, doubled up to ``longest_retry_seconds``.
    retry_seconds = 0.5
    longest_retry_seconds = 30.0

    def __init__(
        self,
        connection: dict[str, Any],
        topic: str,
        tail_messages: int,
        budget: FleetBudget | None = None,
        owned: Callable[[int], bool] | None = None,
    ) -> None:
        self._connection = connection  # aiokafka keyword arguments (stream/kafka/clients.py)
        self._owned = owned  # whether this worker still owns a partition (None: always)
        self._budget = budget  # the alerts read back spent their day's fleet budget
        self._topic = topic
        self._tail = tail_messages
        self._known: dict[int, _RecentIds] = {}
        self._decoder = msgspec.json.Decoder(_AlertId)

    def forget_all(self) -> None:
        """Called on every rebalance: partitions may have moved, read their tails again."""
        self._known.clear()
        if self._budget is not None:
            self._budget.forget()

    async def is_published(self, partition: int, alert_id: str) -> bool:
        """Whether this id is already on the topic; waits while the tail cannot be read. True
        also when the partition moved meanwhile: its next owner raises the alert."""
        known = self._known.get(partition)
        if known is None:
            known = await self._tail_when_readable(partition)
            if known is None:
                return True
        return alert_id in known

    async def _tail_when_readable(self, partition: int) -> _RecentIds | None:
        """The partition's tail, read again with a growing pause until it can be; None if the
        partition is no longer this worker's."""
        pause = self.retry_seconds
        waiting = False
        try:
            while True:
                try:
                    known = self._known[partition] = await self._read_tail(partition)
                    return known
                except (KafkaError, OSError) as error:
                    if not waiting:
                        waiting = True
                        metrics.ALERTS_WAITING_FOR_LEDGER.inc()
                        log.warning(
                            "Could not read back %s[%s] (%s): its alerts wait until it can be read, rather than "
                            "risk sending one twice (check the broker and READ on the alerts topic)",
                            self._topic, partition, error,
                        )
                if self._owned is not None and not self._owned(partition):
                    return None
                await asyncio.sleep(pause)
                pause = min(pause * 2, self.longest_retry_seconds)
        finally:
            if waiting:
                metrics.ALERTS_WAITING_FOR_LEDGER.dec()

    def record(self, partition: int, alert_id: str) -> None:
        known = self._known.get(partition)
        if known is None:
            known = self._known[partition] = _RecentIds(self._tail)
        known.add(alert_id)

    async def _read_tail(self, partition: int) -> _RecentIds:
        found = _RecentIds(self._tail)
        if self._tail == 0:
            return found
        consumer = AIOKafkaConsumer(**self._connection, group_id=None, enable_auto_commit=False)
        try:
            await consumer.start()
            tp = TopicPartition(self._topic, partition)
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            start = max((await consumer.beginning_offsets([tp]))[tp], end - self._tail)
            consumer.seek(tp, start)
            position = start
            while position < end:
                batches = await consumer.getmany(tp, timeout_ms=2000)
                records = batches.get(tp, [])
                if not records:
                    break
                for record in records:
                    position = record.offset + 1
                    try:
                        alert = self._decoder.decode(record.value)
                    except (msgspec.DecodeError, TypeError):
                        continue
                    found.add(alert.alert_id)
                    if self._budget is not None and alert.occurred_at:
                        self._budget.note(partition, epoch_ms(alert.occurred_at))
        finally:
            await consumer.stop()
        log.info("Read %s alert ids back from %s[%s]", len(found), self._topic, partition)
        return found
