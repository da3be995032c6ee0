"""The customer-state table: one msgpack record per customer, backed by a compacted changelog."""

from __future__ import annotations

from typing import Any

import faust

from stream import metrics
from stream.kafka.producer import Delivered
from stream.kafka.topics import changelog_configs
from stream.settings import Settings
from stream.state.keys import KeysByPartition
from stream.state.store import STORE_SCHEME

__all__ = ["KeysByPartition", "customer_state_table", "persisted_offsets"]


def customer_state_table(app: faust.App, settings: Settings, keys_by_partition: KeysByPartition) -> Any:
    """Declares the table on ``app``; records restored from the changelog are indexed by partition."""

    async def index_changelog(event: faust.EventT) -> None:
        keys_by_partition.mark_restored(event.message.partition)
        metrics.CHANGELOG_RECORDS_RESTORED.inc()
        if keys_by_partition.disk is not None:  # the keys are in the databases, with place markers
            return
        keys = keys_by_partition.setdefault(event.message.partition, set())
        if event.message.value is None:  # an erased customer's tombstone: no sweep, no refill, no KPI
            keys.discard(event.message.key)
        else:
            keys.add(event.message.key)

    store: dict[str, Any] = {}
    if settings.state_store == "rocksdb":
        store = {
            "store": f"{STORE_SCHEME}:///customer-state",  # a URL with no path is false: Faust would use its default
            "options": {"rocksdb": settings.rocksdb, "keys_by_partition": keys_by_partition, "directory": app.conf.tabledir},
        }
    return app.Table(
        "customer-state",
        default=None,
        partitions=settings.partitions,
        key_type=bytes,
        value_type=bytes,
        on_changelog_event=index_changelog,
        # As `healthscore topics` creates it (compacted, small segments), should Faust create it.
        extra_topic_configs=changelog_configs(settings),
        recovery_buffer_size=10_000,
        **store,
    )


def persisted_offsets(table: Any, changelog_topic: str) -> Delivered:
    """The callback for delivered changelog records, as Faust's own: a disk store resumes
    recovery after the offset it was told."""

    def persisted(partition: int, offset: int) -> None:
        table.data.set_persisted_offset(faust.types.TP(changelog_topic, partition), offset)

    return persisted
