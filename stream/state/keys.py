"""Which customers live on which partition, and which records changed since the fleet export took them."""

from __future__ import annotations

from typing import Any, Iterator

#: For the fleet export on the RocksDB store: the bytes the totals counted are on disk
#: (the fleet entries of stream/state/disk_index.py), not in memory.
COUNTED_ON_DISK: Any = object()


class KeysByPartition(dict[int, set[bytes]]):
    """Which customers live on which partition (for the sweep, the Redis refill and the fleet
    export): filled as records are written and as the table is restored from its changelog.
    With the RocksDB store (``disk`` set) nothing is kept per customer: the keys are read
    from each partition's database, so memory does not grow with the customers.

    It also notes, for the fleet export (stream/worker/fleet.py), which records changed since
    the export last took them, with the bytes each had then (None: no record), and which
    partitions were restored from their changelog (their totals are rebuilt). With the
    RocksDB store only erasures are noted here (with the record the totals counted, read
    from disk as the index forgets the customer); the commit marks other changes on disk."""

    def __init__(self) -> None:
        super().__init__()
        self.changed: dict[int, dict[bytes, bytes | None]] = {}
        self.restored: set[int] = set()
        #: For the sweep's due index (stream/processing/sweep.py) on the in-memory store: the
        #: customers written since the sweep last took them, and the partitions it must schedule
        #: in full (restored). The RocksDB store keeps place markers on disk instead.
        self.written_since_sweep: dict[int, set[bytes]] = {}
        self.sweep_restored: set[int] = set()
        #: The RocksDB store (stream/state/store.py), when the records are there.
        self.disk: Any = None

    def walk(self, partition: int, chunk: int = 1000) -> Iterator[bytes]:
        """Every customer of the partition once, for a pass that yields to the stream between
        chunks: a snapshot of the set in memory; from the RocksDB store, the keys not committed
        yet, then the database's in order, read ``chunk`` at a time (no iterator is held
        between reads, so the partition can be closed meanwhile: the walk then ends)."""
        if self.disk is None:
            yield from list(self.get(partition, ()))
            return
        records = self.disk.if_open(partition)
        if records is None:
            return
        pending = records.pending_keys()
        seen = set(records.pending)  # written or erased since the commit (taken before any yield)
        yield from pending
        after = b""
        while (records := self.disk.if_open(partition)) is not None and (keys := records.keys_after(after, chunk)):
            yield from (key for key in keys if key not in seen)
            after = keys[-1]

    def count(self, partition: int) -> int:
        """How many customers the partition has (the RocksDB store's estimate)."""
        if self.disk is None:
            return len(self.get(partition, ()))
        records = self.disk.if_open(partition)
        return 0 if records is None else int(records.db.property_int_value("rocksdb.estimate-num-keys") or 0)

    def holds(self, partition: int, key: bytes) -> bool:
        if self.disk is None:
            return key in self.get(partition, ())
        records = self.disk.if_open(partition)
        return records is not None and key in records

    def mark_restored(self, partition: int) -> None:
        """Records came back from the changelog or a local store: both indexes rebuild the partition
        (the RocksDB store's sweep index takes the place markers written with them instead)."""
        self.restored.add(partition)
        if self.disk is None:
            self.sweep_restored.add(partition)

    def written(self, partition: int, key: bytes, before: bytes | None) -> None:
        if self.disk is not None:  # the commit writes the record's change marker with it
            return
        # get, not setdefault(partition, set()): that builds three empty containers per event.
        keys = self.get(partition)
        if keys is None:
            keys = self[partition] = set()
        keys.add(key)
        changes = self.changed.get(partition)
        if changes is None:
            changes = self.changed[partition] = {}
        if key not in changes:
            changes[key] = before
        written = self.written_since_sweep.get(partition)
        if written is None:
            written = self.written_since_sweep[partition] = set()
        written.add(key)

    def erased(self, partition: int, key: bytes, before: bytes | None) -> None:
        if self.disk is not None:
            # Nothing naming the customer stays in the index: the fleet's next export removes
            # what it counted from a copy in memory, as with the in-memory store.
            changes = self.changed.setdefault(partition, {})
            counted = self.disk.forget(partition, key)
            changes.setdefault(key, counted)
            return
        self.get(partition, set()).discard(key)
        self.changed.setdefault(partition, {}).setdefault(key, before)

    def take_written_since_sweep(self, partition: int) -> set[bytes]:
        return self.written_since_sweep.pop(partition, set())

    def take_changes(self, partition: int) -> dict[bytes, bytes | None]:
        """The records changed on ``partition`` since the last call, with their bytes before."""
        return self.changed.pop(partition, {})
