"""The RocksDB store (stream/state/store.py): what is on disk is always the changelog up to the
offset stored with it, so a restart reads back only what came after."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from pydantic import ValidationError

from stream.kafka.producer import Outputs
from stream.settings import Settings
from stream.state.changelog import DeferredChangelog
from stream.state.disk_index import CHANGED, COUNTED, FLEET_DUE, PLACE, SWEEP_DUE, CountedIndex, StoredDueIndex
from stream.state.keys import KeysByPartition
from stream.state.store import OFFSET_KEY, RocksStore, records_of
from stream.state.table import customer_state_table, persisted_offsets
from stream.state.working_set import WorkingSet
from stream.worker.app import faust_app

CHANGELOG = "healthscore-customer-state-changelog"


def open_table(data_dir: Path, **settings: Any) -> tuple[Any, RocksStore, KeysByPartition]:
    """A worker's table over the RocksDB store in ``data_dir`` (no broker is contacted)."""
    configured = Settings(state_store="rocksdb", data_dir=data_dir, **settings)
    keys = KeysByPartition()
    table = customer_state_table(faust_app(configured), configured, keys)
    store = table.data
    assert isinstance(store, RocksStore) and records_of(table) is store
    return table, store, keys


class DeliveringProducer:
    """Sends like the worker's producer: offsets per partition, each delivery reported."""

    def __init__(self, during_send: Any = None) -> None:
        self.next_offset: dict[int, int] = {}
        self.pending: list[tuple[Any, int, int]] = []
        self.during_send = during_send
        self.flushes = 0

    async def send_records(self, topic: str, records: dict, on_delivered: Any = None) -> None:
        for partition, items in records.items():
            offset = self.next_offset.get(partition, 0) + len(items)
            self.next_offset[partition] = offset
            self.pending.append((on_delivered, partition, offset - 1))
        if self.during_send is not None:
            self.during_send()

    async def flush(self) -> None:
        self.flushes += 1
        for on_delivered, partition, offset in self.pending:
            on_delivered(partition, offset)
        self.pending.clear()


def commit(table: Any, changes: list[tuple[int, bytes, bytes | None]], producer: DeliveringProducer | None = None) -> DeliveringProducer:
    """A batch writes ``changes``, then the commit sends the changelog and persists."""
    store = records_of(table)
    outputs = Outputs()
    for partition, key, value in changes:
        records = store.partition(partition)
        if value is None:
            records.pop(key, None)
        else:
            records[key] = value
        outputs.add(CHANGELOG, partition, key, value)
    producer = producer or DeliveringProducer()
    deferred = DeferredChangelog(table, CHANGELOG, persisted_offsets(table, CHANGELOG))
    deferred.take(outputs)
    asyncio.run(deferred.flush(producer))  # type: ignore[arg-type]
    return producer


def test_writes_reach_the_disk_only_with_the_changelog_and_its_offset(tmp_path: Path) -> None:
    table, store, keys = open_table(tmp_path)
    records = store.partition(2)
    records[b"acme"] = b"v1"
    assert records.get(b"acme") == b"v1" and records.db.get(b"acme") is None  # pending until the commit
    assert store.persisted_offset(faust.types.TP(CHANGELOG, 2)) is None

    producer = commit(table, [(2, b"acme", b"v2"), (2, b"beta", b"b1"), (5, b"gamma", b"g1")])
    assert producer.flushes == 1  # delivered before anything is written to disk
    assert records.db.get(b"acme") == b"v2" and records.db.get(b"beta") == b"b1"
    assert records.pending == {}
    assert store.persisted_offset(faust.types.TP(CHANGELOG, 2)) == 1
    assert store.persisted_offset(faust.types.TP(CHANGELOG, 5)) == 0

    commit(table, [(2, b"acme", None)], producer)  # erased: a tombstone, then gone from disk
    assert records.db.get(b"acme") is None and b"acme" not in records
    assert store.persisted_offset(faust.types.TP(CHANGELOG, 2)) == 2
    asyncio.run(store.on_stop())

    # A restart: the records and the offset are on disk; the keys are read from it, not kept.
    table, store, keys = open_table(tmp_path)
    assert store.persisted_offset(faust.types.TP(CHANGELOG, 2)) == 2
    assert list(keys.walk(2)) == [b"beta"] and 2 in keys.restored and dict(keys) == {}
    assert store.partition(2).get(b"beta") == b"b1"
    assert set(store.partition(2)) == {b"beta"}  # the offset is not among the records
    asyncio.run(store.on_stop())


def test_a_change_made_while_the_commit_sends_stays_pending_and_off_the_disk(tmp_path: Path) -> None:
    """The disk gets the value the changelog got; a newer one waits for the next commit, so the
    disk never holds a change the changelog lacks (nor misses one it holds below its offset)."""
    table, store, _ = open_table(tmp_path)

    def batch_meanwhile() -> None:
        store.partition(1)[b"acme"] = b"newer"

    commit(table, [(1, b"acme", b"sent")], DeliveringProducer(during_send=batch_meanwhile))
    records = store.partition(1)
    assert records.db.get(b"acme") == b"sent"
    assert records.get(b"acme") == b"newer" and records.pending == {b"acme": b"newer"}
    asyncio.run(store.on_stop())


def test_a_failed_send_writes_nothing_to_disk(tmp_path: Path) -> None:
    table, store, _ = open_table(tmp_path)

    class Failing(DeliveringProducer):
        async def send_records(self, topic: str, records: dict, on_delivered: Any = None) -> None:
            raise ConnectionError("broker gone")

    with pytest.raises(ConnectionError):
        commit(table, [(0, b"acme", b"v1")], Failing())
    records = store.partition(0)
    assert records.db.get(b"acme") is None and records.get(b"acme") == b"v1"
    assert store.persisted_offset(faust.types.TP(CHANGELOG, 0)) is None
    asyncio.run(store.on_stop())


def test_changelog_records_read_back_go_to_disk_with_their_offset(tmp_path: Path) -> None:
    table, store, _ = open_table(tmp_path)

    def event(partition: int, offset: int, key: bytes, value: bytes | None) -> Any:
        return SimpleNamespace(message=SimpleNamespace(partition=partition, offset=offset, key=key, value=value))

    store.apply_changelog_batch([event(0, 10, b"a", b"1"), event(0, 11, b"b", b"2"), event(0, 12, b"a", None), event(3, 4, b"c", b"3")], None, None)
    assert store.partition(0).db.get(b"a") is None and store.partition(0).db.get(b"b") == b"2"
    assert store.persisted_offset(faust.types.TP(CHANGELOG, 0)) == 12
    assert store.persisted_offset(faust.types.TP(CHANGELOG, 3)) == 4
    asyncio.run(store.on_stop())


def test_a_rebalance_closes_what_is_no_longer_held_and_starts_a_new_assignment_from_disk(tmp_path: Path) -> None:
    table, store, keys = open_table(tmp_path)
    commit(table, [(0, b"a", b"1"), (1, b"b", b"1"), (2, b"c", b"1")])
    store.partition(1)[b"b"] = b"left from an earlier ownership"
    tp = lambda partition: faust.types.TP(CHANGELOG, partition)  # noqa: E731
    asyncio.run(store.on_rebalance({tp(0), tp(1), faust.types.TP("input", 2)}, {tp(2)}, {tp(1)}))
    assert store.if_open(2) is None and list(keys.walk(2)) == []  # revoked: closed, no longer swept or counted
    assert store.if_open(0) is not None  # kept as it was
    assert store.partition(1).get(b"b") == b"1"  # newly assigned: as on disk, read on from its offset
    asyncio.run(store.on_stop())


def test_a_local_copy_older_than_the_limit_is_read_back_from_the_changelog(tmp_path: Path) -> None:
    table, store, _ = open_table(tmp_path)
    commit(table, [(0, b"a", b"1")])
    store.partition(0).meta.put(OFFSET_KEY, f"0 {int((time.time() - 3 * 3600) * 1000)}".encode())
    asyncio.run(store.on_stop())

    table, store, keys = open_table(tmp_path, rocksdb={"max_local_age_hours": 2})
    assert store.persisted_offset(faust.types.TP(CHANGELOG, 0)) is None
    assert store.partition(0).get(b"a") is None and list(keys.walk(0)) == []
    asyncio.run(store.on_stop())


def test_faust_table_reads_are_refused_rather_than_answered_empty(tmp_path: Path) -> None:
    table, store, _ = open_table(tmp_path)
    with pytest.raises(NotImplementedError, match="per partition"):
        store.data.get(b"a")
    asyncio.run(store.on_stop())


def test_rocksdb_needs_per_commit_changelog_writes(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match='changelog_writes = "per_commit"'):
        Settings(state_store="rocksdb", changelog_writes="per_batch", data_dir=tmp_path)


def test_a_customer_id_equal_to_the_offset_key_is_just_a_customer(tmp_path: Path) -> None:
    """Any string is a valid customer id (docs/events.md): the offset lives apart from the records."""
    table, store, keys = open_table(tmp_path)
    commit(table, [(0, OFFSET_KEY, b"a customer's record"), (0, b"acme", b"1")])
    assert store.persisted_offset(faust.types.TP(CHANGELOG, 0)) == 1
    asyncio.run(store.on_stop())
    table, store, keys = open_table(tmp_path)
    assert store.partition(0).get(OFFSET_KEY) == b"a customer's record"
    assert sorted(keys.walk(0)) == [b"acme", OFFSET_KEY] and store.persisted_offset(faust.types.TP(CHANGELOG, 0)) == 1
    asyncio.run(store.on_stop())


def index_entries_naming(records: Any, key: bytes) -> list[bytes]:
    return [entry for entry in records.index.keys() if key in entry]


def test_an_erased_customer_leaves_nothing_naming_it_in_the_index(tmp_path: Path) -> None:
    """The sweep's and the fleet export's entries and the place marker all go at the erasure
    (the export gets what it counted in memory, to remove it from its totals), and the commit
    that writes the tombstone writes no marker for it."""
    table, store, keys = open_table(tmp_path)
    commit(table, [(0, b"acme", b"v1"), (0, b"other", b"v1")])
    records = store.partition(0)
    assert index_entries_naming(records, b"acme") == [PLACE + b"acme", CHANGED + b"acme"]
    StoredDueIndex(records.index, SWEEP_DUE).schedule(b"acme", 5 * 60_000)
    StoredDueIndex(records.index, SWEEP_DUE).schedule(b"acme", 9 * 60_000)  # moved: the old entry goes
    CountedIndex(records.index).put(b"acme", 7 * 60_000, b"counted")  # the fleet's entry, with what it counted
    records.index.put(COUNTED + b"acme", b"\0" * 8 + b"an older version's copy")
    assert [key for _entry, key in StoredDueIndex(records.index, SWEEP_DUE).walk(10 * 60_000, b"", 10)] == [b"acme"]

    WorkingSet(table, keys, Outputs(), CHANGELOG).erase(b"acme", 0)
    assert index_entries_naming(records, b"acme") == []
    assert keys.changed[0][b"acme"] == b"counted"
    commit(table, [(0, b"acme", None)])
    assert index_entries_naming(records, b"acme") == [] and records.db.get(b"acme") is None
    assert index_entries_naming(records, b"other") == [PLACE + b"other", CHANGED + b"other"]

    # The same erasure read back from the changelog (another worker's disk, say).
    StoredDueIndex(records.index, SWEEP_DUE).schedule(b"other", 60_000)
    store.apply_changelog_batch([SimpleNamespace(message=SimpleNamespace(partition=0, offset=9, key=b"other", value=None))], None, None)
    assert index_entries_naming(records, b"other") == []
    asyncio.run(store.on_stop())


def test_a_range_deleted_from_the_index_leaves_the_records_alone(tmp_path: Path) -> None:
    """The fleet export deletes the due entries it walked in one range (stream/worker/fleet.py);
    a customer whose key falls inside that range (any string is a customer id) keeps its record.
    rocksdict 0.3.29's WriteBatch.delete_range ignores the batch's column family: without the
    handle index_batch returns, the range went from the records."""
    table, store, keys = open_table(tmp_path)
    inside = [FLEET_DUE + b"\0" * 7 + b"\x01" + name for name in (b"a", b"b", b"c")]
    commit(table, [(0, key, b"record") for key in inside])
    records = store.partition(0)
    for key in inside:
        records.index.put(key, b"counted")
    batch, index = records.index_batch()
    batch.delete_range(inside[0], inside[-1] + b"\0", index)
    batch.put(inside[1], b"written after the range")
    records.db.write(batch)
    assert [records.db.get(key) for key in inside] == [b"record"] * 3
    assert [records.index.get(key) for key in inside] == [None, b"written after the range", None]
    asyncio.run(store.on_stop())


def test_reading_many_records_sees_the_writes_not_committed_yet(tmp_path: Path) -> None:
    """get_many (the fleet export's read of a chunk) answers as get does, key by key: a write or
    an erasure waiting for the next commit wins over the disk."""
    table, store, keys = open_table(tmp_path)
    commit(table, [(0, b"a", b"a1"), (0, b"b", b"b1"), (0, b"c", b"c1")])
    records = store.partition(0)
    assert records.get_many([b"c", b"a", b"nobody"]) == [b"c1", b"a1", None]
    records[b"b"] = b"b2"
    del records[b"c"]
    records[b"new"] = b"n1"
    wanted = [b"a", b"b", b"c", b"new", b"nobody"]
    assert records.get_many(wanted) == [records.get(key) for key in wanted] == [b"a1", b"b2", None, b"n1", None]
    asyncio.run(store.on_stop())


def test_the_walk_of_due_entries_stops_at_the_minute_and_the_limit_and_resumes_after_an_entry(tmp_path: Path) -> None:
    """RocksDB bounds the walk (the entries of later minutes, the never-due ones and the next
    prefix's are not read); ``after`` is left out, ``limit`` respected."""
    table, store, keys = open_table(tmp_path)
    commit(table, [(0, b"acme", b"v1")])
    records = store.partition(0)
    fleet = CountedIndex(records.index)
    for minute, customer in [(3, b"c"), (3, b"a"), (5, b"b"), (6, b"late"), (None, b"never")]:
        fleet.put(customer, None if minute is None else minute * 60_000 + 59_999, customer + b"-counted")
    records.index.put(FLEET_DUE.upper() + b"zz", b"not an f entry")
    walked = fleet.walk(5 * 60_000, b"", 10)
    assert [(key, counted) for _entry, key, counted in walked] == [(b"a", b"a-counted"), (b"c", b"c-counted"), (b"b", b"b-counted")]
    assert [key for _entry, key, _counted in fleet.walk(5 * 60_000, b"", 2)] == [b"a", b"c"]
    assert [key for _entry, key, _counted in fleet.walk(5 * 60_000, walked[0][0], 10)] == [b"c", b"b"]
    assert fleet.walk(2 * 60_000, b"", 10) == [] and fleet.walk(5 * 60_000, walked[-1][0], 10) == []
    assert [key for _entry, key, _counted in fleet.walk(2**62, b"", 10)] == [b"a", b"c", b"b", b"late"]
    assert [key for _entry, key, _counted in fleet.walk(256**8 * 60_000, b"", 10)] == [b"a", b"c", b"b", b"late", b"never"]  # no minute after it
    asyncio.run(store.on_stop())


def test_a_chunks_counted_entries_in_one_batch_are_those_counted_entries_gives(tmp_path: Path) -> None:
    """The fleet export's loop over a recounted chunk writes, for each customer, exactly
    :func:`counted_entries`' entries (a moment before 1970 at minute 0, none at NEVER) and,
    for a customer not counted any more, deletes its ``F`` entry."""
    from stream.state.disk_index import counted_entries, put_counted_many

    table, store, keys = open_table(tmp_path)
    commit(table, [(0, b"acme", b"v1")])
    records = store.partition(0)
    records.index.put(FLEET_DUE.upper() + b"gone", b"\0" * 8)
    chunk = [(b"a", (125_000, b"a-counted", ("a", b"{}"))), (b"b", (None, b"b-counted", None)), (b"c", (-5, b"c-counted", None)),
             (b"gone", (None, None, None)), (b"d", (10**13 + 1, b"d-counted", None))]
    batch, index = records.index_batch()
    put_counted_many(batch, [key for key, _ in chunk], [recounted for _, recounted in chunk])
    records.db.write(batch)
    expected = dict(entry for key, (due, counted, _row) in chunk if counted is not None for entry in counted_entries(key, due, counted))
    assert {entry: value for entry, value in records.index.items() if entry[:1] in (FLEET_DUE, FLEET_DUE.upper())} == expected
    assert expected[FLEET_DUE.upper() + b"c"] == b"\0" * 8
    asyncio.run(store.on_stop())


def test_records_read_ahead_answer_as_the_disk_until_written_and_after_their_commit(tmp_path: Path) -> None:
    """A batch fetches its records ahead (one MultiGet): a write, the commit that persists it,
    an erasure and changelog records read back must each be seen as if read from disk."""
    table, store, keys = open_table(tmp_path)
    commit(table, [(0, b"a", b"a1"), (0, b"b", b"b1"), (0, b"c", b"c1"), (1, b"d", b"d1")])
    store.read_ahead([(b"a", 0), (b"b", 0), (b"c", 0), (b"nobody", 0), (b"d", 1), (b"a", 0)])
    records = store.partition(0)
    assert records.read == {b"a": b"a1", b"b": b"b1", b"c": b"c1", b"nobody": None}
    assert [records.get(key) for key in (b"a", b"b", b"c", b"nobody")] == [b"a1", b"b1", b"c1", None]
    assert b"d" in store.partition(1) and b"nobody" not in records

    commit(table, [(0, b"a", b"a2"), (0, b"c", None)])  # written then persisted: the disk's new values
    assert records.get(b"a") == b"a2" and records.get(b"c") is None and b"c" not in records
    records[b"b"] = b"b2"  # written, not committed
    assert records.get(b"b") == b"b2"

    def event(partition: int, offset: int, key: bytes, value: bytes | None) -> Any:
        return SimpleNamespace(message=SimpleNamespace(partition=partition, offset=offset, key=key, value=value))

    store.apply_changelog_batch([event(1, 10, b"d", b"d9")], None, None)  # a standby's copy moves on
    assert store.partition(1).get(b"d") == b"d9"
    store.read_ahead([(b"a", 0), (b"b", 0)])  # b pending: not fetched
    assert records.read == {b"nobody": None, b"a": b"a2"}
    WorkingSet(table, keys, Outputs(), CHANGELOG).write_back()  # the batch ends: forgotten
    assert records.read == {} and store.partition(1).read == {}
    asyncio.run(store.on_stop())
