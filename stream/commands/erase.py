"""``healthscore erase``: send erasure requests to the workers, and read back their audit trail.

A request goes to the control topic keyed by the customer id, so the worker that owns the
customer applies it in order with its events (stream/processing/erasure.py). The audit
topic holds one record per erased customer under its keyed hash; ``--status`` hashes the
id the same way and looks for it.
"""

from __future__ import annotations

import msgspec

from stream.kafka.clients import connection_options
from scoring.privacy import ErasureRecord, ErasureRequest
from stream.settings import KafkaSettings


async def send_requests(kafka: KafkaSettings, topic: str, requests: list[ErasureRequest]) -> None:
    """Each request keyed by its customer id: the Java partitioner (murmur2) puts it on the customer's partition."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**connection_options(kafka), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for request in requests:
            await producer.send_and_wait(topic, msgspec.json.encode(request), key=request.customer_id.encode())
    finally:
        await producer.stop()


async def audit_records(kafka: KafkaSettings, topic: str, subject: str) -> list[ErasureRecord]:
    """The audit records of one customer (by its keyed hash), oldest first."""
    from stream.kafka.reading import read_to_end

    found: list[ErasureRecord] = []

    def note(record) -> None:
        if record.key == subject.encode() and record.value is not None:
            found.append(msgspec.json.decode(record.value, type=ErasureRecord))

    await read_to_end(kafka, topic, note)
    return found


def new_request(key: bytes, customer_id: str, reason: str, now: float, allow_return: bool = False) -> ErasureRequest:
    """A request stamped ``now``, with a fresh id and the customer's keyed hash."""
    import uuid

    from scoring.privacy import subject_hash

    return ErasureRequest(int(now * 1000), uuid.uuid4().hex, customer_id, subject_hash(key, customer_id), reason, allow_return)
