"""`healthscore topics` hands back topics that can be written to at once."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from stream.topics import TopicLayoutError, leaderless, wait_for_leaders, wanted_topics
from tests.integration.conftest import Namespace


async def describe(bootstrap: str, names: list[str]) -> list[dict]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return await admin.describe_topics(names)
    finally:
        await admin.close()


def test_created_topics_have_a_leader_for_every_partition_when_creation_returns(namespace: Namespace) -> None:
    """The namespace fixture has just created them with ensure_topics; nothing has waited since."""
    settings = namespace.settings
    answer = asyncio.run(describe(settings.kafka_bootstrap, wanted_topics(settings)))
    assert leaderless(answer) == []
    assert {len(topic["partitions"]) for topic in answer} == {settings.partitions}


def test_a_topic_that_never_gets_a_leader_is_a_clear_error(services: None) -> None:
    missing = f"never-created-{uuid.uuid4().hex[:8]}"

    async def wait() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:9092")
        await admin.start()
        try:
            await wait_for_leaders(admin, [missing], timeout=0.5)
        finally:
            await admin.close()

    with pytest.raises(TopicLayoutError, match=f"without a leader after 0.5 s: {missing}; is the broker healthy"):
        asyncio.run(wait())
