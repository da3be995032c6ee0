"""Changelog records written once per offset commit, not once per batch.

A customer's record changes with almost every batch that holds one of its events,
and each change was one changelog record: at 10,000 customers about one record per
event, a third of the bytes the broker takes in and half its records. Only the
record that is current when the consumed offsets are committed matters for a
restart: recovery reads the changelog back, then the worker reads its inputs from
the committed offsets, and an event read again is recognised from the record (its
id is remembered) or applied again (the record predates it).

So, as Kafka Streams does with its state-store cache, a batch only notes which keys
it changed; just before Faust commits offsets (its commit timer, a rebalance, a
stop) the current value of each noted key is sent once and the producer flushed,
and only then are the offsets committed. The guarantee is unchanged: a committed
offset never lies past a change the changelog lacks. What changes is the cost of a
crash: the events since the last commit are applied again instead of recognised,
so their scores are published again (see docs/events.md).

A batch that ends after its partitions were revoked (a rebalance began while it
ran) sends its changelog records at once, as before: by the next commit the keys
may belong to another worker, which must not read an old value after its own. The
rebalance waits for such a batch (``BatchInProgress``, at most
``REVOKE_WAIT_SECONDS``), then for every record to be on the broker.
"""

from __future__ import annotations

import asyncio
from typing import Any

from stream import metrics
from stream.kafka.producer import Delivered, IdempotentProducer, Outputs
from stream.state.store import RocksStore, records_of

#: Records per producer call while flushing, so a flush over 100,000 customers never
#: holds more than this many values outside the table at once.
FLUSH_CHUNK = 2000


class DeferredChangelog:
    """Keys changed since the last flush, per partition, in the order they changed."""

    def __init__(self, table: Any, topic: str, on_delivered: Delivered | None = None) -> None:
        self._table = table
        self._topic = topic
        self._on_delivered = on_delivered
        # A list per partition (8 bytes per change) rather than a set: duplicates are
        # dropped when flushing, and a set of 100,000 keys costs 40 bytes per customer.
        self._changed: dict[int, list[bytes]] = {}
        # One flush at a time: a rebalance must not hand partitions over while a commit's
        # flush is still sending their records (their new owner would read the changelog
        # before the last of them and miss it).
        self._flushing = asyncio.Lock()
        # Erased keys (a tombstone was queued for them): their tombstone goes out at the
        # flush unless the key has a record again by then.
        self._erased: set[bytes] = set()

    @property
    def pending(self) -> int:
        """Changes noted since the last flush (a key changed by two batches counts twice)."""
        return sum(len(keys) for keys in self._changed.values())

    def take(self, outputs: Outputs) -> None:
        """Moves a batch's changelog records out of ``outputs``: their keys wait for the next flush."""
        batch = outputs.pending(self._topic)
        for partition, records in batch.items():
            keys = self._changed.get(partition)
            if keys is None:
                keys = self._changed[partition] = []
            keys.extend(key for key, _ in records)
            self._erased.update(key for key, value in records if value is None)
        batch.clear()

    async def flush(self, producer: IdempotentProducer) -> int:
        """Sends the current value of every noted key once; returns how many were sent.

        Waits for a flush already running first. Returns once the records are queued:
        the caller flushes the producer before it commits. If sending fails, every key
        is noted again, so the commit that follows (if any) still finds them.
        """
        async with self._flushing:
            return await self._flush(producer)

    async def _flush(self, producer: IdempotentProducer) -> int:
        changed, self._changed = self._changed, {}
        erased, self._erased = self._erased, set()
        records = records_of(self._table)
        sent: dict[int, list[tuple[bytes, bytes | None]]] = {}
        try:
            for partition, keys in changed.items():
                current = records.if_open(partition)
                if current is None:
                    continue  # no longer this worker's: written out when it was revoked
                chunk: list[tuple[bytes | None, bytes | None]] = []
                done = sent[partition] = []
                for key in dict.fromkeys(keys):
                    value = current.get(key)
                    if value is None and key not in erased:
                        continue  # no longer this worker's (Faust dropped it after a rebalance)
                    chunk.append((key, value))  # None: the erased customer's tombstone
                    done.append((key, value))
                    if len(chunk) >= FLUSH_CHUNK:
                        await self._send(producer, partition, chunk)
                        chunk = []
                if chunk:
                    await self._send(producer, partition, chunk)
            if isinstance(records, RocksStore):
                await producer.flush()  # delivered: their offsets noted (stream/state/table.py)
                records.persist(sent)  # the local copy: exactly what the changelog now holds
        except BaseException:
            for partition, keys in changed.items():
                self._changed[partition] = keys + self._changed.get(partition, [])
            self._erased |= erased
            raise
        return sum(len(pairs) for pairs in sent.values())

    async def _send(self, producer: IdempotentProducer, partition: int, chunk: list[tuple[bytes | None, bytes | None]]) -> None:
        await producer.send_records(self._topic, {partition: chunk}, self._on_delivered)
        metrics.CHANGELOG_RECORDS_WRITTEN.inc(len(chunk))
