"""Prints health scores as they arrive on the customer-health topic, one line each."""

from __future__ import annotations

import time

import msgspec

from stream.kafka.clients import connection_options
from stream.settings import KafkaSettings


def format_score(message: dict) -> str:
    components = "  ".join(f"{name} {c['score']:5.1f}" for name, c in sorted(message["components"].items()))
    return (
        f"{message['customer_id']:<14} {message['score']:6.2f}  {message['band']:<8}  "
        f"risk {message['churn_risk']:.2f}  as of {message['as_of'][:16]}  | {components}"
    )


async def watch(kafka: KafkaSettings, topic: str, limit: int | None, from_beginning: bool, idle_timeout: float | None, echo=print) -> int:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        **connection_options(kafka),
        group_id=None,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
    )
    shown = 0
    last_seen = time.monotonic()
    try:
        await consumer.start()
        while limit is None or shown < limit:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    try:
                        echo(format_score(msgspec.json.decode(record.value)))
                    except (msgspec.DecodeError, KeyError, TypeError) as error:
                        echo(f"(unreadable message at offset {record.offset}: {error})")
                    shown += 1
                    last_seen = time.monotonic()
                    if limit is not None and shown >= limit:
                        return shown
            if idle_timeout is not None and time.monotonic() - last_seen > idle_timeout:
                return shown
    finally:
        await consumer.stop()
    return shown
