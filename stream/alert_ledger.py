"""Which alert ids are already on the alerts topic, per partition.

An alert published just before a crash can be raised again when the worker
reprocesses the same events (the state record that remembered it may not have
reached its changelog). Before the first alert on a partition after each
rebalance, the ledger reads back the tail of the alerts topic's matching
partition (alerts are written to the same partition number as their customer's
input) and remembers the ids it finds; the worker skips any alert whose id is
there. Alert ids are deterministic per episode, so this catches exactly the
repeats. In memory it keeps as many ids per partition as it reads back (the
newest), so a long-running worker does not collect every alert it ever sent.
"""

from __future__ import annotations

import logging
from collections import deque

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)


class _AlertId(msgspec.Struct):
    alert_id: str


class _RecentIds:
    """The newest ``limit`` ids added, with constant-time membership."""

    def __init__(self, limit: int) -> None:
        self._order: deque[str] = deque()
        self._members: set[str] = set()
        self._limit = limit

    def add(self, alert_id: str) -> None:
        if alert_id in self._members:
            return
        self._order.append(alert_id)
        self._members.add(alert_id)
        while len(self._order) > self._limit:
            self._members.discard(self._order.popleft())

    def __contains__(self, alert_id: object) -> bool:
        return alert_id in self._members

    def __len__(self) -> int:
        return len(self._members)


class AlertLedger:
    def __init__(self, bootstrap: str, topic: str, tail_messages: int) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._tail = tail_messages
        self._known: dict[int, _RecentIds] = {}
        self._decoder = msgspec.json.Decoder(_AlertId)

    def forget_all(self) -> None:
        """Called on every rebalance: partitions may have moved, read their tails again."""
        self._known.clear()

    async def is_published(self, partition: int, alert_id: str) -> bool:
        """Whether this id is already on the topic. If the tail cannot be read, answers no
        (and tries again next time): a repeat that consumers can drop by alert_id is better
        than a lost alert."""
        known = self._known.get(partition)
        if known is None:
            try:
                known = self._known[partition] = await self._read_tail(partition)
            except (KafkaError, OSError) as error:
                log.warning("Could not read back %s[%s] (%s); publishing without the check", self._topic, partition, error)
                return False
        return alert_id in known

    def record(self, partition: int, alert_id: str) -> None:
        known = self._known.get(partition)
        if known is None:
            known = self._known[partition] = _RecentIds(self._tail)
        known.add(alert_id)

    async def _read_tail(self, partition: int) -> _RecentIds:
        found = _RecentIds(self._tail)
        if self._tail == 0:
            return found
        consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, group_id=None, enable_auto_commit=False)
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
                        found.add(self._decoder.decode(record.value).alert_id)
                    except (msgspec.DecodeError, TypeError):
                        continue
        finally:
            await consumer.stop()
        log.info("Read %s alert ids back from %s[%s]", len(found), self._topic, partition)
        return found
