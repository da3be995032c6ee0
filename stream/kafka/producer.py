"""What one batch produces, sent as one producer batch per topic partition.

Faust's ``Topic.send`` costs well over 100 us per message here (a FutureMessage,
serializer lookups, and aiokafka's per-record ``send`` with its own timeout and
future). Scores and changelog records of a batch are instead appended to
aiokafka batch builders and handed to the producer with ``send_batch``: same
producer (acks=all, idempotent), same ordering per partition, and Faust still
flushes it before it commits offsets.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer

from stream import metrics

log = logging.getLogger(__name__)

#: Called with (partition, offset of the last record) once a batch is on the broker.
Delivered = Callable[[int, int], None]


class PendingCountBuffer(ProducerBuffer):
    """Faust's producer buffer, sized without a settings lookup.

    Faust's conductor asks for the buffer's size before it delivers every record
    (``wait_until_ebb``), and Faust's property reads ``app.conf.producer_threaded``
    each time: 2 % of the worker's time in a py-spy profile. Used only without the
    threaded producer (the worker never enables it).
    """

    @property
    def size(self) -> int:
        return len(self.pending._queue)  # type: ignore[union-attr]


class IdempotentProducer(faust_aiokafka.Producer):
    """acks=all and idempotence always (not only inside transactions), and batch sends."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if not self.app.conf.producer_threaded:
            self.buffer = PendingCountBuffer(loop=self.loop, beacon=self.beacon)
            self.buffer.app = self.app

    def _settings_extra(self) -> dict:
        return {"acks": "all", "enable_idempotence": True}

    async def partition_count(self, topic: str) -> int:
        return len(await self._ensure_producer().partitions_for(topic))

    async def send_records(
        self,
        topic: str,
        records: dict[int, list[tuple[bytes | None, bytes | None]]],
        on_delivered: Delivered | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Queues each partition's records, in order, as few producer batches as fit.

        Returns once they are queued, not delivered: Faust's flush before each offset
        commit waits for them. A delivery failure is logged and counted.
        """
        producer = self._ensure_producer()
        for partition, items in records.items():
            builder = producer.create_batch()
            count = 0
            for key, value in items:
                if builder.append(key=key, value=value, timestamp=None, headers=headers or []) is None:
                    if count == 0:
                        raise ValueError(f"a {len(value or b'')}-byte record does not fit a producer batch for {topic}")
                    await self._submit(producer, builder, topic, partition, count, on_delivered)
                    builder = producer.create_batch()
                    builder.append(key=key, value=value, timestamp=None, headers=headers or [])
                    count = 0
                count += 1
            if count:
                await self._submit(producer, builder, topic, partition, count, on_delivered)

    async def _submit(
        self, producer: object, builder: object, topic: str, partition: int, count: int, on_delivered: Delivered | None
    ) -> None:
        future = await producer.send_batch(builder, topic, partition=partition)  # type: ignore[attr-defined]

        def done(delivery: asyncio.Future) -> None:
            if delivery.cancelled() or delivery.exception() is not None:
                metrics.PUBLISH_FAILURES.labels(topic).inc(count)
                log.error("Lost %s message(s) to %s[%s]: %r", count, topic, partition, delivery.exception() if not delivery.cancelled() else "cancelled")
            elif on_delivered is not None and delivery.result() is not None:
                on_delivered(partition, delivery.result().offset + count - 1)

        future.add_done_callback(done)


class Outputs:
    """The messages one batch produces, grouped by topic and partition in production order."""

    def __init__(self) -> None:
        self._by_topic: dict[str, dict[int, list[tuple[bytes | None, bytes | None]]]] = {}

    def add(self, topic: str, partition: int, key: bytes | None, value: bytes | None) -> None:
        """``value`` None: a tombstone (an erased customer's key on a compacted topic)."""
        partitions = self._by_topic.get(topic)
        if partitions is None:
            partitions = self._by_topic[topic] = {}
        records = partitions.get(partition)
        if records is None:
            records = partitions[partition] = []
        records.append((key, value))

    def pending(self, topic: str) -> dict[int, list[tuple[bytes | None, bytes | None]]]:
        """The records queued for one topic, by partition, in production order."""
        return self._by_topic.get(topic, {})

    def count(self, topic: str) -> int:
        return sum(len(records) for records in self._by_topic.get(topic, {}).values())

    async def send(
        self,
        producer: IdempotentProducer,
        on_delivered: dict[str, Delivered] | None = None,
        headers: dict[str, list[tuple[str, bytes]]] | None = None,
    ) -> None:
        """Every queued record; ``headers`` by topic (the contract version on what consumers read)."""
        for topic, records in self._by_topic.items():
            await producer.send_records(topic, records, (on_delivered or {}).get(topic), (headers or {}).get(topic))
        self._by_topic.clear()
