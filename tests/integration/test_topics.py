"""Fresh topics per test or bench run are deleted afterwards, and only those."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from stream.topics import delete_topics_containing, wanted_topics
from tests.integration.conftest import make_namespace


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

    left = asyncio.run(topic_names())
    assert not any(doomed.tag in name for name in left)
    assert set(wanted_topics(kept.settings)) <= left
    assert asyncio.run(delete_topics_containing("127.0.0.1:9092", [])) == 0
