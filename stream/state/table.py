"""The customer-state table: one msgpack record per customer, backed by a compacted changelog."""

from __future__ import annotations

from typing import Any

import faust

from stream import metrics
from stream.kafka.producer import Delivered
from stream.kafka.topics import changelog_configs
from stream.settings import Settings

class KeysByPartition(dict[int, set[bytes]]):
    """Which customers live on which partition (for the sweep, the Redis refill and the fleet
    export): filled as records are written and as the table is restored from its changelog.

    It also notes, for the fleet export (stream/worker/fleet.py), which records changed since
    the export last took them, with the bytes each had then (None: no record), and which
    partitions were restored from their changelog (their totals are rebuilt)."""

    def __init__(self) -> None:
        super().__init__()
        self.changed: dict[int, dict[bytes, bytes | None]] = {}
        self.restored: set[int] = set()

    def written(self, partition: int, key: bytes, before: bytes | None) -> None:
        self.setdefault(partition, set()).add(key)
        self.changed.setdefault(partition, {}).setdefault(key, before)

    def erased(self, partition: int, key: bytes, before: bytes | None) -> None:
        self.get(partition, set()).discard(key)
        self.changed.setdefault(partition, {}).setdefault(key, before)

    def take_changes(self, partition: int) -> dict[bytes, bytes | None]:
        """The records changed on ``partition`` since the last call, with their bytes before."""
        return self.changed.pop(partition, {})


def customer_state_table(app: faust.App, settings: Settings, keys_by_partition: KeysByPartition) -> Any:
    """Declares the table on ``app``; records restored from the changelog are indexed by partition."""

    async def index_changelog(event: faust.EventT) -> None:
        keys = keys_by_partition.setdefault(event.message.partition, set())
        keys_by_partition.restored.add(event.message.partition)
        if event.message.value is None:  # an erased customer's tombstone: no sweep, no refill, no KPI
            keys.discard(event.message.key)
        else:
            keys.add(event.message.key)
        metrics.CHANGELOG_RECORDS_RESTORED.inc()

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
    )


def persisted_offsets(table: Any, changelog_topic: str) -> Delivered:
    """The callback for delivered changelog records, as Faust's own: a disk store resumes
    recovery after the offset it was told."""

    def persisted(partition: int, offset: int) -> None:
        table.data.set_persisted_offset(faust.types.TP(changelog_topic, partition), offset)

    return persisted
