"""Which customers live on which partition, and which records changed since the fleet export took them."""

from __future__ import annotations


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
        #: For the sweep's due index (stream/processing/sweep.py): the customers written since the
        #: sweep last took them, and the partitions it must schedule in full (restored, or reopened).
        self.written_since_sweep: dict[int, set[bytes]] = {}
        self.sweep_restored: set[int] = set()

    def mark_restored(self, partition: int) -> None:
        """Records came back from the changelog or a local store: both indexes rebuild the partition."""
        self.restored.add(partition)
        self.sweep_restored.add(partition)

    def written(self, partition: int, key: bytes, before: bytes | None) -> None:
        self.setdefault(partition, set()).add(key)
        self.changed.setdefault(partition, {}).setdefault(key, before)
        self.written_since_sweep.setdefault(partition, set()).add(key)

    def erased(self, partition: int, key: bytes, before: bytes | None) -> None:
        self.get(partition, set()).discard(key)
        self.changed.setdefault(partition, {}).setdefault(key, before)

    def take_written_since_sweep(self, partition: int) -> set[bytes]:
        return self.written_since_sweep.pop(partition, set())

    def take_changes(self, partition: int) -> dict[bytes, bytes | None]:
        """The records changed on ``partition`` since the last call, with their bytes before."""
        return self.changed.pop(partition, {})
