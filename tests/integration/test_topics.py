"""`healthscore topics` hands back topics that can be written to at once; fresh topics of a
test or bench run are deleted afterwards, and only those."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from stream.kafka.topics import (
    TopicLayoutError,
    changelog_topic,
    delete_topics_containing,
    leaderless,
    wait_for_leaders,
    wanted_topics,
)
from stream.settings import KafkaSettings
from tests.integration.conftest import Namespace, make_namespace, run_cli


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

    assert asyncio.run(delete_topics_containing(KafkaSettings(), [doomed.tag])) == len(wanted_topics(doomed.settings))

    deadline = time.monotonic() + 30  # a deletion reaches the broker's metadata a moment later
    left = asyncio.run(topic_names())
    while any(doomed.tag in name for name in left) and time.monotonic() < deadline:
        time.sleep(0.2)
        left = asyncio.run(topic_names())
    assert not any(doomed.tag in name for name in left)
    assert set(wanted_topics(kept.settings)) <= left
    assert asyncio.run(delete_topics_containing(KafkaSettings(), [])) == 0



def test_topics_makes_the_changelog_and_the_retentions_and_check_finds_them_as_configured(namespace: Namespace) -> None:
    """The namespace fixture ran ensure_topics (what `healthscore topics` runs)."""
    settings = namespace.settings
    configs = asyncio.run(topic_configs(settings.kafka_bootstrap, [changelog_topic(settings), namespace.topic("alerts")]))
    assert configs[changelog_topic(settings)]["cleanup.policy"] == "compact"
    assert configs[namespace.topic("alerts")]["retention.ms"] == str(30 * 86_400_000)
    checked = run_cli(namespace.env, "topics", "--check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "All topics as configured" in checked.stdout


def test_check_names_every_difference_and_fails(namespace: Namespace) -> None:
    checked = run_cli({**namespace.env, **dict(
        HEALTHSCORE_TOPICS__REPLICATION_FACTOR="3",
        HEALTHSCORE_TOPICS__ALERTS_RETENTION_DAYS="10",
        HEALTHSCORE_TOPICS__HEALTH=f"{namespace.tag}-never-created",
    )}, "topics", "--check")
    assert checked.returncode == 1
    lines = checked.stdout.splitlines()
    assert f"{namespace.tag}-never-created: missing (create it with `healthscore topics`)" in lines
    assert f"{namespace.topic('purchases')}: 1 replica(s), topics.replication_factor is 3" in lines
    assert f"{namespace.topic('alerts')}: retention.ms is {30 * 86_400_000}, {10 * 86_400_000} wanted" in lines
    assert "difference(s) from the settings" in checked.stderr


def test_without_runtime_creation_a_missing_topic_stops_the_worker_with_its_name(namespace: Namespace) -> None:
    started = run_cli({**namespace.env, "HEALTHSCORE_TOPICS__ALLOW_RUNTIME_CREATION": "false",
                       "HEALTHSCORE_TOPICS__ALERTS": f"{namespace.tag}-no-alerts-topic"}, "worker")
    assert started.returncode != 0
    assert f"topics.allow_runtime_creation is false and these topics are missing on 127.0.0.1:9092: {namespace.tag}-no-alerts-topic" in started.stderr
    assert "Traceback" not in started.stderr


async def topic_configs(bootstrap: str, names: list[str]) -> dict[str, dict[str, str]]:
    from stream.kafka.topics import _topic_configs

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return await _topic_configs(admin, names)
    finally:
        await admin.close()
