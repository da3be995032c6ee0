"""`healthscore topics` hands back topics that can be written to at once; fresh topics of a
test or bench run are deleted afterwards, and only those."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from stream.kafka.topics import TopicLayoutError, delete_topics_containing, leaderless, wait_for_leaders, wanted_topics
from tests.integration.conftest import Namespace, make_namespace


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


async def topic_names() -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:9092")
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def test_deleting_a_namespace_s_topics_leaves_every_other_topic(services: None, tmp_path: Path) -> None:
    doomed, kept = make_namespace(tmp_path / "doomed"), make_namespace(tmp_path / "kept")
    assert set(wanted_topics(doomed.settings)) | set(wanted_topics(kept.settings)) <= asyncio.run(topic_names())

    assert asyncio.run(delete_topics_containing("127.0.0.1:9092", [doomed.tag])) == len(wanted_topics(doomed.settings))

    deadline = time.monotonic() + 30  # a deletion reaches the broker's metadata a moment later
    left = asyncio.run(topic_names())
    while any(doomed.tag in name for name in left) and time.monotonic() < deadline:
        time.sleep(0.2)
        left = asyncio.run(topic_names())
    assert not any(doomed.tag in name for name in left)
    assert set(wanted_topics(kept.settings)) <= left
    assert asyncio.run(delete_topics_containing("127.0.0.1:9092", [])) == 0
