"""Reading a whole topic to its current end, and then what was added since, on demand: the
erasure audit trail (the deny-list of erased customers), an erasure's status, the parked
alerts of a redrive. No consumer group: every partition is assigned, nothing is committed.

Between reads the partitions are paused. A consumer left fetching at a topic's end keeps a
fetch waiting on the broker for ``fetch_max_wait_ms``, and the broker answers one request
per connection at a time, in order: the next ``catch_up``'s end-offsets request then waited
behind it, about 0.5 s, once per delivered alert in `healthscore deliver` (two alerts a
second at most, measured 2026-12-06).
"""

from __future__ import annotations

from typing import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from stream.kafka.clients import connection_options
from stream.kafka.topics import partitions_of
from stream.settings import KafkaSettings


#: A fetch's longest wait at a topic's end while reading (a read ends when the end is reached;
#: a fetch sent just before the pause waits at most this long on the broker).
FETCH_MAX_WAIT_MS = 50


class TopicFollower:
    """Hands every record of ``topic`` to ``on_record``, from the beginning: ``catch_up`` reads
    up to the end offsets as they are when it is called."""

    def __init__(self, kafka: KafkaSettings, topic: str, on_record: Callable[[ConsumerRecord], None]) -> None:
        self._kafka = kafka
        self._topic = topic
        self._on_record = on_record
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []

    async def start(self) -> None:
        partitions = [TopicPartition(self._topic, p) for p in await partitions_of(self._kafka, self._topic)]
        consumer = AIOKafkaConsumer(
            **connection_options(self._kafka), group_id=None, enable_auto_commit=False, fetch_max_wait_ms=FETCH_MAX_WAIT_MS
        )
        await consumer.start()
        if partitions:
            consumer.assign(partitions)
            consumer.pause(*partitions)  # nothing fetched until a read asks for it
            await consumer.seek_to_beginning(*partitions)
        self._consumer, self._partitions = consumer, partitions

    async def catch_up(self) -> int:
        """Reads every record up to the current end of each partition; returns how many."""
        consumer = self._consumer
        if consumer is None:
            await self.start()
            consumer = self._consumer
        assert consumer is not None
        if not self._partitions:
            return 0
        ends = await consumer.end_offsets(self._partitions)
        read = 0
        try:
            while behind := [tp for tp in self._partitions if await consumer.position(tp) < ends[tp]]:
                consumer.resume(*behind)
                for records in (await consumer.getmany(*behind, timeout_ms=1000)).values():
                    for record in records:
                        self._on_record(record)
                        read += 1
        finally:
            consumer.pause(*self._partitions)
        return read

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


async def read_to_end(kafka: KafkaSettings, topic: str, on_record: Callable[[ConsumerRecord], None]) -> int:
    """Every record of ``topic`` now, once; returns how many."""
    follower = TopicFollower(kafka, topic, on_record)
    try:
        return await follower.catch_up()
    finally:
        await follower.stop()
