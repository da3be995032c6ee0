"""The sweep's and the fleet export's per-customer indexes, kept on disk beside the records
(the RocksDB store's ``healthscore-index`` column family), so a worker's memory does not grow
with its customers: at 10 million, sets of keys in Python take about 75 bytes per customer
each, more than the whole memory target.

Entries, by prefix (a customer key is any string of 1-256 characters, after the prefix):

- ``p`` + key: the customer was written since the sweep last placed it (its next due moment
  is to be worked out). Written in the same atomic batch as the record itself, at the commit
  and when changelog records are read back, so a restart after SIGKILL loses none.
- ``s`` + minute + key: the sweep's next moment for the customer (stream/processing/sweep.py).
- ``f`` + minute + key: the fleet export's next recount of the customer (stream/worker/fleet.py),
  holding what the fleet totals counted for it (``scoring.fleet_sums.encode_counted``, about
  60 bytes), which the recount takes out again. A customer counted that time alone never
  makes due has its entry at the minute ``NEVER``, which no walk reaches.
- ``c`` + key: an older version's copy of the record the totals counted; no longer written,
  cleared with the fleet's other entries when a partition is counted in full.
- ``x`` + key: the record changed since the fleet export last counted it. Written with the
  record at each commit, like ``p``: the export walks them, so nothing in memory grows with
  the customers a backlog touches between two exports.
- ``S`` + key and ``F`` + key: the minute of the customer's ``s`` and ``f`` entry, so that a
  new moment replaces the old entry and an erasure finds every entry naming the customer.

A minute is 8 bytes big-endian, so keys sort by time. Like :class:`stream.state.due_index.DueIndex`,
an entry may stay behind in an earlier minute: a customer is taken early, never late.

Imports: the standard library and rocksdict (through ``stream.state.rocks``) only; the store
opens the column family.
"""

from __future__ import annotations

from itertools import islice
from typing import Any, Iterator


from stream.state.rocks import rocksdict  # loaded on first use: the in-memory store never needs it
from stream.state.due_index import DUE_BUCKET_MS

PLACE = b"p"
SWEEP_DUE = b"s"
FLEET_DUE = b"f"
COUNTED = b"c"
CHANGED = b"x"
MINUTE_BYTES = 8
#: The minute of a counted customer that time alone never makes due.
NEVER = b"\xff" * MINUTE_BYTES


def minute_entry(prefix: bytes, due_ms: int, key: bytes) -> bytes:
    """The entry of ``key`` due at ``due_ms`` (times before 1970 are taken as 1970: early)."""
    return prefix + max(0, due_ms // DUE_BUCKET_MS).to_bytes(MINUTE_BYTES, "big") + key


def entries(index: Any, start: bytes, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(entry, value) from ``start`` on while entries have ``prefix``. The iterator lives only
    while the caller reads: a column family with an iterator open cannot be closed."""
    cursor = index.iter()
    try:
        cursor.seek(start)
        while cursor.valid():
            entry = cursor.key()
            if not entry.startswith(prefix):
                return
            yield entry, cursor.value()
            cursor.next()
    finally:
        del cursor


class StoredDueIndex:
    """:class:`stream.state.due_index.DueIndex` over a partition's index column family.

    ``write_options`` (rocksdict.WriteOptions) for entries a crash may lose: the fleet
    export's, which it rebuilds by counting a partition in full whenever it opens it, are
    written without the write-ahead log (half the cost of each write)."""

    def __init__(self, index: Any, prefix: bytes, write_options: Any = None) -> None:
        self._index = index
        self._prefix = prefix
        self._write: tuple[Any, ...] = () if write_options is None else (write_options,)

    def schedule(self, key: bytes, due_ms: int | None) -> None:
        """The customer's moment becomes ``due_ms`` (None: nothing is ever due by time alone)."""
        self.forget(key)
        if due_ms is not None:
            entry = minute_entry(self._prefix, due_ms, key)
            self._index.put(entry, b"", *self._write)
            self._index.put(self._prefix.upper() + key, entry[len(self._prefix) : len(self._prefix) + MINUTE_BYTES], *self._write)

    def unschedule(self, key: bytes, due_ms: int | None) -> None:
        self.forget(key)

    def forget(self, key: bytes) -> None:
        """Deletes the customer's entry, wherever it is."""
        where = self._prefix.upper() + key
        minute = self._index.get(where)
        if minute is not None:
            self._index.delete(self._prefix + minute + key, *self._write)
            self._index.delete(where, *self._write)

    def walk(self, at_ms: int, after: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` (entry, customer key) due by ``at_ms``, after the entry ``after``
        (b"": from the first). The entries stay: the caller deletes each once the customer is
        placed again, so a crash in between leaves it to be taken again, never lost."""
        return [(entry, key) for entry, key, _value in due_entries(self._index, self._prefix, at_ms, after, limit)]

    def take(self, at_ms: int) -> set[bytes]:
        """Every customer due by ``at_ms``, taken off the index."""
        due: set[bytes] = set()
        while chunk := self.walk(at_ms, b"", 10_000):
            due.update(key for _entry, key in chunk)
            for entry, _key in chunk:
                self._index.delete(entry)
        return due

    def clear(self) -> None:
        clear_prefix(self._index, self._prefix)

    def __len__(self) -> int:
        return sum(1 for _ in entries(self._index, self._prefix, self._prefix))


class CountedIndex:
    """The fleet export's entries (``f`` + minute + key, holding what the totals counted for the
    customer, and ``F`` + key, its minute): the moment a customer is recounted and what is taken
    out of the totals then, in one entry that the walk of due customers reads with its key."""

    def __init__(self, index: Any, write_options: Any = None) -> None:
        self._index = index
        self._write: tuple[Any, ...] = () if write_options is None else (write_options,)

    def counted(self, key: bytes) -> bytes | None:
        """What the totals counted for the customer (None: nothing)."""
        minute = self._index.get(FLEET_DUE.upper() + key)
        return None if minute is None else self._index.get(FLEET_DUE + minute + key)  # type: ignore[no-any-return]

    def put(self, key: bytes, due_ms: int | None, counted: bytes, taken: bool = False) -> None:
        """The customer counted as ``counted``, next due at ``due_ms`` (None: never by time
        alone). ``taken``: its entry was just taken off by ``walk`` (only its ``F`` entry is
        left, which the new one overwrites)."""
        if not taken:
            self.forget(key)
        for entry, value in counted_entries(key, due_ms, counted):
            self._index.put(entry, value, *self._write)

    def forget(self, key: bytes) -> None:
        """The customer is not counted: its entries go, wherever they are."""
        StoredDueIndex(self._index, FLEET_DUE, *self._write).forget(key)

    def walk(self, at_ms: int, after: bytes, limit: int) -> list[tuple[bytes, bytes, bytes]]:
        """Up to ``limit`` (entry, customer key, what was counted) due by ``at_ms``, after the
        entry ``after``; the caller deletes each entry it takes."""
        return due_entries(self._index, FLEET_DUE, at_ms, after, limit)


def counted_entries(key: bytes, due_ms: int | None, counted: bytes) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
    """The (entry, value) pairs of a customer counted as ``counted`` and next due at ``due_ms``
    (None: never by time alone): its ``f`` entry, then its ``F`` entry naming the minute."""
    entry = FLEET_DUE + NEVER + key if due_ms is None else minute_entry(FLEET_DUE, due_ms, key)
    return (entry, counted), (FLEET_DUE.upper() + key, entry[len(FLEET_DUE) : len(FLEET_DUE) + MINUTE_BYTES])


def put_counted_many(batch: Any, keys: list[bytes], recounted: list[tuple[int | None, bytes | None, Any]]) -> None:
    """Into ``batch`` (a write batch on the index), the entries of each customer of ``keys``
    recounted as (next due, counted, ...): those of :func:`counted_entries`; with counted None
    (erased, or unreadable) its ``F`` entry goes. One loop without a call per customer: it runs
    holding the GIL while the export's other thread waits for it."""
    put, delete, minute_of = batch.put, batch.delete, FLEET_DUE.upper()
    for key, (due_ms, counted, *_rest) in zip(keys, recounted):
        if counted is None:
            delete(minute_of + key)
            continue
        minute = NEVER if due_ms is None else (due_ms // DUE_BUCKET_MS if due_ms > 0 else 0).to_bytes(MINUTE_BYTES, "big")
        put(FLEET_DUE + minute + key, counted)
        put(minute_of + key, minute)


def due_entries(index: Any, prefix: bytes, at_ms: int, after: bytes, limit: int) -> list[tuple[bytes, bytes, bytes]]:
    """Up to ``limit`` (entry, customer key, value) of ``prefix`` + minute + key entries due by
    ``at_ms``, after the entry ``after`` (b"": from the first). RocksDB stops the walk itself at
    the next minute (an upper bound), and ``islice`` reads it without Python code per entry:
    the walk of a chunk is most of what the fleet export does holding the GIL."""
    last_minute = max(0, at_ms // DUE_BUCKET_MS)
    bound = rocksdict.ReadOptions()
    bound.set_iterate_upper_bound(prefix + (last_minute + 1).to_bytes(MINUTE_BYTES, "big") if last_minute + 1 < 256**MINUTE_BYTES else _after_prefix(prefix))
    items = index.items(from_key=after or prefix, read_opt=bound)
    try:
        walked = list(islice(items, limit + 1))
    finally:
        del items  # a column family with an iterator open cannot be closed
    if walked and walked[0][0] == after:
        del walked[0]
    skip = len(prefix) + MINUTE_BYTES
    return [(entry, entry[skip:], value) for entry, value in walked[:limit]]


def _after_prefix(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def clear_prefix(index: Any, prefix: bytes) -> None:
    """Deletes every entry under ``prefix`` (one range tombstone)."""
    index.delete_range(prefix, _after_prefix(prefix))
