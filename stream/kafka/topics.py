"""Creates and checks the project's topics: partition counts, replication and configs.

The four input topics must be co-partitioned (same partition count, keyed by
customer id) because one table holds each customer's state across all four; the sweep
topic and the state changelog follow them.
"""

from __future__ import annotations

import asyncio
import time

from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from stream.kafka.clients import connection_options
from stream.settings import KafkaSettings, Settings, TopicNames


class TopicLayoutError(RuntimeError):
    pass


#: How long topics just created may take to have a leader for every partition.
LEADERS_TIMEOUT_SECONDS = 30.0


DAY_MS = 86_400_000


@dataclass(frozen=True)
class TopicPlan:
    """How a topic of the worker should be: its partitions and the configs we set on it."""

    partitions: int
    configs: dict[str, str]
    co_partitioned: bool  # must have exactly ``partitions`` (keyed by customer, read together)


def consumed_topics(settings: Settings) -> list[str]:
    """Topics the worker reads: the four inputs and its sweep ticks, all co-partitioned."""
    return [*settings.topics.inputs(), settings.topics.sweep]


def changelog_topic(settings: Settings) -> str:
    """The state table's changelog, as Faust names it (stream/state/table.py)."""
    return f"{settings.app_id}-customer-state-changelog"


def changelog_configs(settings: Settings) -> dict[str, str]:
    """Restart time is the time to read the changelog back: small segments let Kafka's
    compaction keep it near one record per customer instead of one per batch."""
    return {
        "cleanup.policy": "compact", "segment.bytes": str(settings.changelog_segment_bytes), "min.cleanable.dirty.ratio": "0.2",
        # Erased and evicted customers' older records are compacted away within this time.
        "max.compaction.lag.ms": str(int(settings.changelog_max_compaction_lag_days * DAY_MS)),
    }


def topic_plans(settings: Settings) -> dict[str, TopicPlan]:
    """Every topic the worker needs, the changelog included, so that it can run with an ACL
    that has no CREATE permission once ``healthscore topics`` made them."""
    topics, partitions = settings.topics, settings.partitions
    common = {"min.insync.replicas": str(topics.min_insync_replicas)} if topics.min_insync_replicas else {}

    def retention(days: float) -> dict[str, str]:
        return {**common, "retention.ms": str(int(days * DAY_MS))}

    plans = {name: TopicPlan(partitions, dict(common), True) for name in consumed_topics(settings)}
    plans[topics.sweep] = TopicPlan(partitions, retention(topics.control_retention_days), True)
    for name in consumed_topics(settings):
        plans[TopicNames.dead_letter(name)] = TopicPlan(partitions, retention(topics.dead_letter_retention_days), False)
    plans[topics.health] = TopicPlan(partitions, retention(topics.health_retention_days), False)
    plans[topics.alerts] = TopicPlan(partitions, retention(topics.alerts_retention_days), False)
    plans[topics.delivery_failed] = TopicPlan(partitions, retention(topics.alerts_retention_days), False)
    plans[topics.ingest_rejected] = TopicPlan(partitions, retention(topics.dead_letter_retention_days), False)
    plans[changelog_topic(settings)] = TopicPlan(partitions, {**common, **changelog_configs(settings)}, True)
    # The proof of each erasure, one record per erased customer (its keyed hash): never expires.
    plans[topics.erasures] = TopicPlan(partitions, {**common, "cleanup.policy": "compact"}, False)
    return plans


def wanted_topics(settings: Settings) -> list[str]:
    return list(topic_plans(settings))


def _admin(settings: Settings) -> AIOKafkaAdminClient:
    """The admin client of `healthscore topics` and the worker's start check: its connection
    settings in one place."""
    return AIOKafkaAdminClient(**connection_options(settings.kafka), request_timeout_ms=15000)


async def _described(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict]:
    """The topics of ``names`` the cluster has, each as ``describe_topics`` answers it."""
    return {t["topic"]: t for t in await admin.describe_topics(names) if t.get("error_code", 0) == 0}


async def ensure_topics(settings: Settings, echo=print) -> None:
    """Creates the missing topics as planned; refuses input topics that are not co-partitioned."""
    plans = topic_plans(settings)
    admin = _admin(settings)
    try:
        await admin.start()
        counts = {name: len(topic["partitions"]) for name, topic in (await _described(admin, list(plans))).items()}
        missing = [name for name in plans if name not in counts]
        if missing:
            replicas = settings.topics.replication_factor
            new = [NewTopic(name, plans[name].partitions, replicas, topic_configs=plans[name].configs) for name in missing]
            try:
                await admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
            await wait_for_leaders(admin, missing, LEADERS_TIMEOUT_SECONDS)
            echo(f"Created {len(missing)} topic(s) with {settings.partitions} partitions and {replicas} replica(s): {', '.join(missing)}")
        mismatched = {name: count for name, count in counts.items() if plans[name].co_partitioned and count != settings.partitions}
        if mismatched:
            raise TopicLayoutError(
                f"input topics must all have {settings.partitions} partitions (co-partitioned by customer id); found {mismatched}"
            )
        if not missing:
            echo("All topics exist")
    finally:
        await admin.close()


async def missing_topics(settings: Settings) -> list[str]:
    """The planned topics the cluster does not have."""
    plans = topic_plans(settings)
    admin = _admin(settings)
    try:
        await admin.start()
        present = await _described(admin, list(plans))
    finally:
        await admin.close()
    return [name for name in plans if name not in present]


async def check_topics(settings: Settings) -> list[str]:
    """What differs between the cluster's topics and the plan (``healthscore topics --check``):
    missing topics, partition counts, replication, and the configs we set. Empty: all as planned."""
    plans = topic_plans(settings)
    admin = _admin(settings)
    try:
        await admin.start()
        described = await _described(admin, list(plans))
        problems = [f"{name}: missing (create it with `healthscore topics`)" for name in plans if name not in described]
        present = [name for name in plans if name in described]
        configs = await _topic_configs(admin, present) if present else {}
    finally:
        await admin.close()
    for name in present:
        problems.extend(_differences(name, plans[name], described[name], configs.get(name, {}), settings))
    return problems


def _differences(name: str, plan: TopicPlan, described: dict, configs: dict[str, str], settings: Settings) -> list[str]:
    problems = []
    partitions = described["partitions"]
    if plan.co_partitioned and len(partitions) != plan.partitions:
        problems.append(f"{name}: {len(partitions)} partitions, {plan.partitions} wanted (co-partitioned with the inputs by customer id)")
    replicas = min((len(partition["replicas"]) for partition in partitions), default=0)
    if replicas < settings.topics.replication_factor:
        problems.append(f"{name}: {replicas} replica(s), topics.replication_factor is {settings.topics.replication_factor}")
    for key, wanted in plan.configs.items():
        found = configs.get(key)
        if found != wanted:
            problems.append(f"{name}: {key} is {found}, {wanted} wanted")
    return problems


async def _topic_configs(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    """Each topic's current configs, name to value."""
    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name) for name in names])
    found: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.resources:
            _, _, _, name, entries = resource[:5]
            found[name] = {entry[0]: entry[1] for entry in entries}
    return found


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


async def delete_topics_containing(kafka: KafkaSettings, tags: list[str]) -> int:
    """Deletes every topic whose name holds one of ``tags`` (a namespace's own topics, Faust's
    changelogs, a peer's); returns how many. For the benches and the tests, which make fresh
    topics per run: left behind, they pile up to thousands of partitions on a developer's broker."""
    if not tags:
        return 0
    admin = AIOKafkaAdminClient(**connection_options(kafka))
    await admin.start()
    try:
        doomed = [topic for topic in await admin.list_topics() if any(tag in topic for tag in tags)]
        for start in range(0, len(doomed), 100):
            await admin.delete_topics(doomed[start : start + 100])
        return len(doomed)
    finally:
        await admin.close()


async def partitions_of(kafka: KafkaSettings, topic: str) -> list[int]:
    """The partition ids of ``topic`` ([] if it does not exist)."""
    admin = AIOKafkaAdminClient(**connection_options(kafka))
    await admin.start()
    try:
        described = await _described(admin, [topic])
    finally:
        await admin.close()
    return sorted(p["partition"] for p in described[topic]["partitions"]) if topic in described else []
