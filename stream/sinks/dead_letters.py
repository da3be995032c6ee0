"""Dead letters: a refused message goes to ``<topic>.dlq`` with its original bytes and why."""

from __future__ import annotations

import logging
from typing import Mapping

import faust
from aiokafka.structs import ConsumerRecord

from scoring.contract import Rejection
from stream import metrics

log = logging.getLogger("healthscore.worker")


def dead_letter_headers(topic: str, partition: int, offset: int, timestamp_ms: int | None, reason: str, detail: str) -> list[tuple[str, bytes]]:
    """Headers naming where the message came from (its Kafka timestamp in epoch ms) and why it was refused."""
    return [
        ("dlq.topic", topic.encode()),
        ("dlq.partition", str(partition).encode()),
        ("dlq.offset", str(offset).encode()),
        ("dlq.timestamp", str(timestamp_ms or 0).encode()),
        ("dlq.error", reason.encode()),
        ("dlq.reason", detail[:1000].encode()),
    ]


class DeadLetters:
    """Sends refused messages to the dead-letter topic of the topic they came from, counted and logged."""

    def __init__(self, topics: Mapping[str, faust.TopicT]) -> None:
        self._topics = topics  # source topic name -> its dead-letter topic

    async def send(self, message: ConsumerRecord, rejection: Rejection) -> None:
        reason = rejection.reason.value
        await self._topics[message.topic].send(
            key=message.key,
            value=message.value,
            headers=dead_letter_headers(
                message.topic, message.partition, message.offset, message.timestamp, reason, rejection.detail
            ),
        )
        metrics.EVENTS.labels(message.topic, "dead_lettered").inc()
        metrics.DEAD_LETTERS.labels(message.topic, reason).inc()
        log.warning(
            "Dead-lettered %s[%s]@%s: %s (%s)", message.topic, message.partition, message.offset, reason, rejection.detail
        )
