"""Where the customer records live: Faust's in-memory dict, or one RocksDB database per partition.

Both are read and written one partition at a time (``partition``): the worker always knows
the partition of the record it touches (the input record's, the sweep tick's), so the RocksDB
store needs neither an index from every key to its partition (Faust's own store keeps one: a
dict entry per customer, a gigabyte at 10 million) nor a current event (Faust's asserts one
on every write; the batch path writes without).

The RocksDB store writes a record to disk only once its changelog record is on the broker.
A batch's writes wait in memory (``PartitionRecords.pending``) until the next offset commit;
the commit sends the changelog (stream/state/changelog.py), waits for the producer, and then
``persist`` writes exactly the values it sent, with the partition's last delivered changelog
offset, in one atomic WriteBatch. So the copy on disk is always the changelog up to the offset
stored with it: a restart, even after SIGKILL, reads back only the changelog after that
offset, and never finds on disk an event whose scores were not published (an event found
applied is not scored again). Faust's recovery asks ``persisted_offset`` where to start.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, MutableMapping, Protocol

from faust.stores import STORES
from faust.stores.base import Store
from faust.types import TP

from stream.state.rocks import rocksdict  # loaded on first use: the in-memory store never needs it
from stream.settings import RocksDbSettings
from stream.state.disk_index import CHANGED, COUNTED, PLACE, SWEEP_DUE, CountedIndex, StoredDueIndex
from stream.state.keys import KeysByPartition

log = logging.getLogger("healthscore.worker")

#: Kept in each partition's database in a column family of its own (``META``), apart from the
#: records, so no customer id can ever stand for it: "<changelog offset> <written at, ms>".
OFFSET_KEY = b"changelog-offset"
META = "healthscore-meta"
#: The sweep's and the fleet export's indexes (stream/state/disk_index.py), in a column family of
#: their own; ``INDEXED_KEY`` in META says every record on disk has its place marker.
INDEX = "healthscore-index"
INDEXED_KEY = b"place-markers"
#: Faust finds the store by the table's URL scheme.
STORE_SCHEME = "healthscore-rocksdb"
MB = 1024 * 1024
_ABSENT: Any = object()


class Records(Protocol):
    """The customer records, one partition at a time."""

    def partition(self, partition: int) -> MutableMapping[bytes, bytes]:
        """The partition's records, for the agent (opened if it is not yet)."""
        ...

    def if_open(self, partition: int) -> MutableMapping[bytes, bytes] | None:
        """The partition's records if this worker holds them now (None: revoked, or never held)."""
        ...

    def read_ahead(self, keys: Iterable[tuple[bytes, int]]) -> None:
        """The records of these (key, partition) are about to be read: fetched together."""
        ...

    def forget_read_ahead(self) -> None:
        """The batch that read ahead is over: what it fetched and did not use is dropped."""
        ...


class MemoryRecords:
    """Faust's in-memory store: one dict for every partition."""

    def __init__(self, data: MutableMapping[bytes, bytes]) -> None:
        self._data = data

    def partition(self, partition: int) -> MutableMapping[bytes, bytes]:
        return self._data

    def if_open(self, partition: int) -> MutableMapping[bytes, bytes]:
        return self._data

    def read_ahead(self, keys: Iterable[tuple[bytes, int]]) -> None:
        """A dict read costs less than fetching ahead."""

    def forget_read_ahead(self) -> None:
        pass


class PartitionRecords(MutableMapping[bytes, bytes]):
    """One partition's records: the changes since the last commit (None: deleted) over its database
    (``meta``: the column family holding the changelog offset).

    ``read`` holds what the current batch fetched ahead from disk in one MultiGet (the
    agent reads every record a batch needs: one read per key cost 8 % of the worker in a
    2M-customer backlog, py-spy 2026-12-07). Each value is the disk's as long as the key
    is not written: a write drops it (pending then holds the newer value, and once the
    commit persists it, the disk does), and so does a changelog batch written to disk."""

    __slots__ = ("db", "meta", "index", "pending", "read")

    def __init__(self, db: rocksdict.Rdict) -> None:
        self.db = db
        self.meta = db.get_column_family(META)
        self.index = db.get_column_family(INDEX)
        self.pending: dict[bytes, bytes | None] = {}
        self.read: dict[bytes, bytes | None] = {}

    def close(self) -> None:
        """The column families first: while one (or a handle on it) is held, the database keeps its lock."""
        self.meta.close()
        self.index.close()
        self.db.close()

    def keys_after(self, after: bytes, limit: int) -> list[bytes]:
        """Up to ``limit`` keys on disk after ``after``, in order (pending writes not included)."""
        keys: list[bytes] = []
        for key in self.db.keys(from_key=after):
            if key == after:
                continue
            if len(keys) == limit:
                break
            keys.append(key)
        return keys

    def pending_keys(self) -> list[bytes]:
        """The keys written since the last commit and still there, in order."""
        return sorted(key for key, value in self.pending.items() if value is not None)

    def stored_offset(self) -> tuple[int | None, float]:
        """The changelog offset on disk and when it was written (ms), or (None, 0)."""
        stored = self.meta.get(OFFSET_KEY)
        if stored is None:
            return None, 0.0
        offset, written_ms = stored.decode().split()
        return int(offset), float(written_ms)

    def write(self, batch: rocksdict.WriteBatch, offset: int | None, written: list[bytes] = (), markers: tuple[bytes, ...] = (PLACE,)) -> None:  # type: ignore[assignment]
        """The batch, with the changelog offset it brings the disk to and, for each key ``written``,
        its ``markers`` (stream/state/disk_index.py: the sweep places it, the fleet export
        recounts it), atomically."""
        if offset is not None:
            batch.put(OFFSET_KEY, f"{offset} {int(time.time() * 1000)}".encode(), self.db.get_column_family_handle(META))
        if written:
            index = self.db.get_column_family_handle(INDEX)
            for key in written:
                for marker in markers:
                    batch.put(marker + key, b"", index)
        self.db.write(batch)

    def get(self, key: bytes, default: Any = None) -> Any:
        value = self.pending.get(key, _ABSENT)
        if value is _ABSENT:
            value = self.read.get(key, _ABSENT)
            if value is _ABSENT:
                value = self.db.get(key)
        return default if value is None else value

    def read_ahead(self, keys: list[bytes]) -> None:
        """Fetches the records of these keys from disk in one MultiGet (those pending or fetched
        already are not): their ``get`` is then a dict lookup until a write or ``read.clear()``."""
        pending, read = self.pending, self.read
        wanted = list({key: None for key in keys if key not in pending and key not in read})
        if wanted:
            read.update(zip(wanted, self.db.get(wanted)))  # type: ignore[arg-type]

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """``get`` of each key (None where there is no record), those not pending read from disk
        in one call (RocksDB's MultiGet: one crossing instead of one per key)."""
        pending, get_list = self.pending, self.db.get  # given a list, rocksdict returns a list
        if not pending:
            return get_list(keys)  # type: ignore[arg-type, return-value]
        values = [pending.get(key, _ABSENT) for key in keys]
        read = iter(get_list([key for key, value in zip(keys, values) if value is _ABSENT]))  # type: ignore[arg-type]
        return [next(read) if value is _ABSENT else value for value in values]

    def index_batch(self) -> tuple[rocksdict.WriteBatch, Any]:
        """An empty batch of writes whose column family is the index (written by ``db.write``),
        and the index's handle, which ``delete_range`` must be given: rocksdict 0.3.29's ignores
        the batch's column family and deletes in the records' (tests/stream/test_rocks_store.py)."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        index = self.db.get_column_family_handle(INDEX)
        batch.set_default_column_family(index)
        return batch, index

    def __getitem__(self, key: bytes) -> bytes:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value  # type: ignore[no-any-return]

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.pending[key] = value
        self.read.pop(key, None)

    def __delitem__(self, key: bytes) -> None:
        if self.pop(key, None) is None:
            raise KeyError(key)

    def pop(self, key: bytes, default: Any = None) -> Any:
        value = self.get(key)
        self.pending[key] = None
        self.read.pop(key, None)
        return default if value is None else value

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[bytes]:
        """Every key (from disk, then the pending ones): for tests and tools, not the hot path."""
        pending = self.pending
        for key in self.db.keys():
            if key not in pending:
                yield key
        yield from (key for key, value in list(pending.items()) if value is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _NoMapping(dict):  # type: ignore[type-arg]
    """Faust's table API reads ``store.data``: the records are read per partition instead."""

    def __getitem__(self, key: object) -> Any:
        raise NotImplementedError("customer records are read per partition: stream.state.store.records_of(table)")

    get = __getitem__  # type: ignore[assignment]


class RocksStore(Store):
    """A RocksDB database per partition under the table directory (``customer-state-<partition>.db``).

    Options (the table's ``options``): ``rocksdb`` (RocksDbSettings), ``keys_by_partition``
    (told to read each partition's keys from its database), ``directory``."""

    def __init__(self, url: Any, app: Any, table: Any, **kwargs: Any) -> None:
        super().__init__(url, app, table, **kwargs)
        options = dict(self.options or {})
        self._settings: RocksDbSettings = options["rocksdb"]
        self._keys: KeysByPartition = options["keys_by_partition"]
        self._keys.disk = self  # the keys are read from the databases, not kept in memory
        self._directory = Path(options["directory"])
        self._cache = rocksdict.Cache(self._settings.block_cache_mb * MB)
        self._partitions: dict[int, PartitionRecords] = {}
        #: Highest changelog offset delivered per partition, written with the next ``persist``.
        self._delivered: dict[int, int] = {}
        self.data = _NoMapping()

    # --- what the worker reads and writes -------------------------------------------------

    def partition(self, partition: int) -> PartitionRecords:
        records = self._partitions.get(partition)
        return records if records is not None else self._open(partition)

    def if_open(self, partition: int) -> PartitionRecords | None:
        return self._partitions.get(partition)

    def read_ahead(self, keys: Iterable[tuple[bytes, int]]) -> None:
        by_partition: dict[int, list[bytes]] = {}
        for key, partition in keys:
            by_partition.setdefault(partition, []).append(key)
        for partition, wanted in by_partition.items():
            records = self._partitions.get(partition)
            if records is not None:  # held: a batch's records are on partitions this worker holds
                records.read_ahead(wanted)

    def forget_read_ahead(self) -> None:
        for records in self._partitions.values():
            records.read.clear()

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        """A changelog record was delivered (stream/state/table.py ``persisted_offsets``): its
        offset is written with the values of the next ``persist``."""
        if tp.partition in self._partitions and offset > self._delivered.get(tp.partition, -1):
            self._delivered[tp.partition] = offset

    def persist(self, sent: dict[int, list[tuple[bytes, bytes | None]]]) -> None:
        """Writes the records a commit sent to the changelog (all delivered: the caller flushed
        the producer), with each partition's delivered offset, one atomic batch per partition.
        A pending change newer than what was sent stays pending for the next commit."""
        for partition in set(sent) | set(self._delivered):
            records = self._partitions.get(partition)
            if records is None:  # revoked meanwhile: the next owner reads the changelog
                continue
            pairs = sent.get(partition, ())
            batch = rocksdict.WriteBatch(raw_mode=True)
            for key, value in pairs:
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
            records.write(batch, self._delivered.pop(partition, None), [key for key, value in pairs if value is not None], (PLACE, CHANGED))
            pending = records.pending
            for key, value in pairs:
                if pending.get(key, _ABSENT) is value:
                    del pending[key]

    def forget(self, partition: int, key: bytes) -> bytes | None:
        """An erased customer: every index entry naming it goes (stream/state/disk_index.py);
        returns what the fleet totals counted for it (encode_counted), for the export to remove."""
        records = self.partition(partition)
        fleet = CountedIndex(records.index)
        counted = fleet.counted(key)
        for prefix in (COUNTED, PLACE, CHANGED):
            records.index.delete(prefix + key)
        StoredDueIndex(records.index, SWEEP_DUE).forget(key)
        fleet.forget(key)
        return counted

    # --- what Faust calls -----------------------------------------------------------------

    def persisted_offset(self, tp: TP) -> int | None:
        """Where recovery starts: after the last changelog offset the database holds."""
        return self.partition(tp.partition).stored_offset()[0]

    def apply_changelog_batch(self, batch: Any, to_key: Any, to_value: Any) -> None:
        """Changelog records read back (recovery, standby copies): straight to each partition's
        database with the offset of the last one, atomically."""
        writes: dict[int, rocksdict.WriteBatch] = {}
        offsets: dict[int, int] = {}
        keys: dict[int, dict[bytes, bool]] = {}  # whether each key has a record after the batch
        for event in batch:
            message = event.message
            write = writes.get(message.partition)
            if write is None:
                write = writes[message.partition] = rocksdict.WriteBatch(raw_mode=True)
                keys[message.partition] = {}
            if message.value is None:
                write.delete(message.key)
                self.forget(message.partition, message.key)  # an erasure read back: nothing names it
            else:
                write.put(message.key, message.value)
            keys[message.partition][message.key] = message.value is not None
            offsets[message.partition] = max(message.offset, offsets.get(message.partition, -1))
        for partition, write in writes.items():
            records = self.partition(partition)
            records.read.clear()  # the disk changes under what was fetched ahead
            # What is pending stays: the agent's own writes since its last commit, newer than any
            # changelog record of a partition it owns.
            records.write(write, offsets[partition], [key for key, present in keys[partition].items() if present])

    async def on_rebalance(self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP], generation_id: int = 0) -> None:
        """Closes the databases of partitions no longer held; a newly assigned partition starts
        from its database as on disk (anything pending from an earlier ownership is dropped)."""
        topic = self.table.changelog_topic.get_topic_name()
        held = {tp.partition for tp in assigned if tp.topic == topic}
        fresh = {tp.partition for tp in newly_assigned if tp.topic == topic}
        for partition in list(self._partitions):
            if partition not in held or partition in fresh:
                self._close(partition)

    async def on_stop(self) -> None:
        for partition in list(self._partitions):
            self._close(partition)

    async def backup_partition(self, tp: Any, flush: bool = True, purge: bool = False, keep: int = 1) -> None:
        """Not offered: the changelog is the backup."""

    def restore_backup(self, tp: Any, latest: bool = True, backup_id: int = 0) -> None:
        """Not offered: the changelog is the backup."""

    def reset_state(self) -> None:
        """Deletes every local database (the changelog is untouched: the next start reads it all)."""
        for partition in list(self._partitions):
            self._close(partition)
        shutil.rmtree(self._directory, ignore_errors=True)

    # --- opening and closing --------------------------------------------------------------

    def _path(self, partition: int) -> Path:
        return self._directory / f"{self.table_name}-{partition}.db"

    def _options(self) -> rocksdict.Options:
        settings = self._settings
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        options.create_missing_column_families(True)
        options.set_write_buffer_size(settings.write_buffer_mb * MB)
        options.set_max_write_buffer_number(settings.max_write_buffers)
        options.set_compression_type(rocksdict.DBCompressionType.lz4())
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(self._cache)
        table.set_bloom_filter(10, False)
        options.set_block_based_table_factory(table)
        return options

    def _open(self, partition: int) -> PartitionRecords:
        path = self._path(partition)
        path.parent.mkdir(parents=True, exist_ok=True)
        records = PartitionRecords(self._open_db(path))
        offset, written_ms = records.stored_offset()
        age_hours = (time.time() * 1000 - written_ms) / 3_600_000 if offset is not None else 0.0
        if age_hours > self._settings.max_local_age_hours:
            log.warning("The local copy of state partition %s was last written %.1f h ago (rocksdb.max_local_age_hours %s): "
                        "deleted; the partition is read back from its changelog", partition, age_hours, self._settings.max_local_age_hours)
            records.close()
            rocksdict.Rdict.destroy(str(path))
            records, offset = PartitionRecords(self._open_db(path)), None
        self._partitions[partition] = records
        self._delivered.pop(partition, None)
        self._mark_unplaced(records)
        self._keys.restored.add(partition)  # the fleet totals count it in full
        log.info("State partition %s: about %s records on local disk, changelog read from %s", partition,
                 records.db.property_int_value("rocksdb.estimate-num-keys"), "its start" if offset is None else f"offset {offset + 1}")
        return records

    @staticmethod
    def _mark_unplaced(records: PartitionRecords) -> None:
        """A database written before the place markers existed: every record gets one (once)."""
        if records.meta.get(INDEXED_KEY) is not None:
            return
        index = records.db.get_column_family_handle(INDEX)
        batch = rocksdict.WriteBatch(raw_mode=True)
        for count, key in enumerate(records.db.keys(), 1):
            batch.put(PLACE + key, b"", index)
            if count % 100_000 == 0:
                records.db.write(batch)
                batch = rocksdict.WriteBatch(raw_mode=True)
        batch.put(INDEXED_KEY, b"1", records.db.get_column_family_handle(META))
        records.db.write(batch)

    def _open_db(self, path: Path) -> rocksdict.Rdict:
        try:
            # The index shares the records' options: the block cache and write buffer bounds (RocksDB's
            # defaults, 64 MB buffers and a cache per family, would add hundreds of MB per worker).
            return rocksdict.Rdict(str(path), self._options(), column_families={META: self._options(), INDEX: self._options()})
        except Exception as error:
            raise RuntimeError(
                f"cannot open the state database {path} ({error}); is another worker using the same data_dir? "
                "Give each worker its own data_dir (HEALTHSCORE_DATA_DIR)"
            ) from None

    def _close(self, partition: int) -> None:
        records = self._partitions.pop(partition)
        self._delivered.pop(partition, None)
        self._keys.changed.pop(partition, None)
        records.close()


STORES.aliases[STORE_SCHEME] = f"{__name__}:RocksStore"


def records_of(table: Any) -> Records:
    """The table's records, per partition, whichever store holds them. Faust's in-memory store
    wraps a dict in a mapping whose get and set take several Python calls each (5 % of the
    worker's samples in a py-spy profile, 2026-11-30): the dict itself, where there is one."""
    store = table.data
    if isinstance(store, RocksStore):
        return store
    inner = getattr(store, "data", None)
    return MemoryRecords(inner if isinstance(inner, dict) else store)
