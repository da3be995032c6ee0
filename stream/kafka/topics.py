"""Creates the project's topics with explicit partition counts.

The four input topics must be co-partitioned (same partition count, keyed by
customer id) because one table holds each customer's state across all four.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from stream.settings import Settings, TopicNames


class TopicLayoutError(RuntimeError):
    pass


#: How long topics just created may take to have a leader for every partition.
LEADERS_TIMEOUT_SECONDS = 30.0


def consumed_topics(settings: Settings) -> list[str]:
    """Topics the worker reads: the four inputs and its sweep ticks, all co-partitioned."""
    return [*settings.topics.inputs(), settings.topics.sweep]


def wanted_topics(settings: Settings) -> list[str]:
    consumed = consumed_topics(settings)
    return [*consumed, *(TopicNames.dead_letter(name) for name in consumed), settings.topics.health, settings.topics.alerts]


async def ensure_topics(settings: Settings, echo=print) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=15000)
    try:
        await admin.start()
        existing = await admin.describe_topics(wanted_topics(settings))
        counts = {t["topic"]: len(t["partitions"]) for t in existing if t.get("error_code", 0) == 0}
        missing = [name for name in wanted_topics(settings) if name not in counts]
        if missing:
            try:
                await admin.create_topics(
                    [NewTopic(name, num_partitions=settings.partitions, replication_factor=1) for name in missing]
                )
            except TopicAlreadyExistsError:
                pass
            await wait_for_leaders(admin, missing, LEADERS_TIMEOUT_SECONDS)
            echo(f"Created {len(missing)} topic(s) with {settings.partitions} partitions: {', '.join(missing)}")
        mismatched = {
            name: count for name, count in counts.items() if name in consumed_topics(settings) and count != settings.partitions
        }
        if mismatched:
            raise TopicLayoutError(
                f"input topics must all have {settings.partitions} partitions (co-partitioned by customer id); found {mismatched}"
            )
        if not missing:
            echo("All topics exist")
    finally:
        await admin.close()


def leaderless(described: list[dict]) -> list[str]:
    """Topics of an admin ``describe_topics`` answer that are unknown or have a partition without a leader."""
    return [
        topic["topic"]
        for topic in described
        if topic.get("error_code", 0) != 0
        or not topic["partitions"]
        or any(partition["leader"] < 0 for partition in topic["partitions"])
    ]


async def wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str], timeout: float) -> None:
    """Returns once every partition of these topics has a leader.

    Kafka answers ``create_topics`` before that (seconds later on a broker that has just
    started): a client writing at once would retry meanwhile, logging each retry as an
    error ("Topic ... not found in cluster metadata").
    """
    deadline = time.monotonic() + timeout
    while True:
        waiting = leaderless(await admin.describe_topics(names))
        if not waiting:
            return
        if time.monotonic() >= deadline:
            raise TopicLayoutError(
                f"{len(waiting)} topic(s) created but still without a leader after {timeout:g} s: {', '.join(waiting)};"
                " is the broker healthy?"
            )
        await asyncio.sleep(0.1)


async def delete_topics_containing(bootstrap: str, tags: list[str]) -> int:
    """Deletes every topic whose name holds one of ``tags`` (a namespace's own topics, Faust's
    changelogs, a peer's); returns how many. For the benches and the tests, which make fresh
    topics per run: left behind, they pile up to thousands of partitions on a developer's broker."""
    if not tags:
        return 0
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        doomed = [topic for topic in await admin.list_topics() if any(tag in topic for tag in tags)]
        for start in range(0, len(doomed), 100):
            await admin.delete_topics(doomed[start : start + 100])
        return len(doomed)
    finally:
        await admin.close()
