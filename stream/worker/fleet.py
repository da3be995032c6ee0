"""Fleet KPIs and consumer lag, exported as gauges from the records this worker owns, and
each owned customer's KPIs into its Redis hash (GET /customers/{id}/kpis), in the same pass."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from itertools import islice
from typing import Any, Awaitable, Callable, Iterable, Iterator, Mapping

import faust
from faust.types import TP

import msgspec

from scoring import kernel as kernel_module
from scoring.fleet_sums import Sums, add_to, contribution, decode_counted, empty_sums, encode_counted, remove_from, totals_from, unchanged_until
from scoring.health import ScoringParameters, score_state
from scoring.kpis import FleetTotals, customer_kpis
from scoring.output import rfc3339
from scoring.state import decode_state
from stream import metrics
from stream.state.rocks import rocksdict  # loaded on first use: the in-memory store never needs it
from stream.state.disk_index import CHANGED, COUNTED, FLEET_DUE, MINUTE_BYTES, CountedIndex, clear_prefix, entries, put_counted_many
from stream.state.due_index import DUE_BUCKET_MS, DueIndex
from stream.state.keys import COUNTED_ON_DISK, KeysByPartition
from stream.state.store import records_of


def consumer_lag(
    assignment: Iterable[TP], read_offsets: Mapping[TP, int | None], highwater: Callable[[TP], int | None], topics: Iterable[str]
) -> dict[str, int]:
    """Records on each input topic not yet handed to the stream. A partition not fetched
    yet has no known high-water mark (None until the first fetch answers) and counts 0."""
    lag = dict.fromkeys(topics, 0)
    for tp in assignment:
        if tp.topic not in lag:
            continue
        end = highwater(tp)
        if end is None:
            continue
        read = read_offsets.get(tp)  # the last offset handed to the stream
        lag[tp.topic] += max(0, end - (read + 1 if read is not None else 0))
    return lag


log = logging.getLogger(__name__)

#: Where each customer's KPIs go: (customer id, JSON) rows, written only for customers Redis
#: knows; returns the customer ids it did not write (not known to Redis yet).
KpisWriter = Callable[[list[tuple[str, bytes]]], Awaitable[list[str]]]
#: Exports a customer's KPIs are offered again when Redis did not know the customer yet.
KPI_WRITE_ATTEMPTS = 3
#: Customers recomputed between two yields to the stream.
CHUNK = 1000
#: Customers whose KPIs are kept for another try at the next exports, at most. Beyond, a
#: customer's KPIs wait for its next change or window (its score shows ``computed_at``): in a
#: 10-million-customer backlog against a Redis that evicts, a million customers were waiting,
#: and their one write at the end of a pass took about 6 GB for a moment (2026-12-06).
MAX_KPI_RETRIES = 100_000
#: How the export writes its entries on the RocksDB store (what it counted, when each customer
#: is next due, the change markers it took): without the write-ahead log. A crash can lose
#: them, and nothing is lost with them: a partition opened after a start is counted in full,
#: which clears and rewrites them all.
@functools.cache
def unlogged() -> Any:
    options = rocksdict.WriteOptions()
    options.disable_wal = True
    return options


#: Threads the RocksDB export's walk of due customers recounts partitions on, at most (on a
#: two-core VM, in quiet minutes at 10M customers, two took 1.28-1.35x less time than one;
#: about 1.25x in a catch-up at 1M, where the GIL held by rocksdict's write and the Python
#: between the native calls bounds it; more threads: not measured).
FLEET_THREADS = 2
_threads: ThreadPoolExecutor | None = None
#: The bytes the totals counted for a customer due by time alone: what the table holds.
_AS_STORED: Any = object()


@dataclass(frozen=True)
class FleetOptions:
    period_days: int = 30
    survey_response_days: float = 14.0
    key_features: tuple[str, ...] = ()
    acquisition_spend: float | None = None
    #: None: the customers' KPIs are not written (the gauges still are).
    write_kpis: KpisWriter | None = None
    #: The model, for each customer's churn risk (its LTV's expected lifetime); None: no LTV.
    parameters: ScoringParameters | None = None


@dataclass
class PartitionTotals:
    """One partition's fleet totals at ``at_ms`` (integer sums of its customers' contributions)
    and, by minute, the customers whose contribution or KPIs time alone will next change (on
    the RocksDB store that index is on disk: stream/state/disk_index.py)."""

    at_ms: int
    sums: Sums = dataclasses.field(default_factory=empty_sums)
    due: DueIndex = dataclasses.field(default_factory=DueIndex)
    #: The sums the Rust kernel keeps (``scoring._kernel.FleetSums``), beside ``sums`` (what the
    #: Python model counted: records the kernel cannot read, or no kernel); the totals add both.
    native: Any = None
    #: On the RocksDB store, the minute the walk of due entries starts from: every entry before it
    #: was taken (and deleted). Seeking from the index's start instead had RocksDB step over every
    #: entry deleted since its last compaction: 2.5 ms a partition, a minute, at 30,000 customers.
    due_from_minute: int = 0


class FleetExport:
    """Keeps each owned partition's fleet totals up to date and exports them as gauges.

    A customer is recomputed only when its record changed (``KeysByPartition.take_changes``,
    with the bytes the totals counted) or when ``scoring.fleet_sums.unchanged_until`` said time
    alone would change it; a partition newly owned or restored from its changelog is counted
    in full once. Each recomputed customer's KPIs are written to Redis in the same pass."""

    def __init__(
        self,
        app: faust.App,
        table: Any,
        keys_by_partition: KeysByPartition,
        input_topics: Iterable[str],
        sweep_topic: str,
        options: FleetOptions,
        clock: Callable[[], float] = time.time,
        kernel: Any = None,
    ) -> None:
        self._app = app
        self._records = records_of(table)
        self._keys_by_partition = keys_by_partition
        self._input_topics = list(input_topics)
        self._sweep_topic = sweep_topic
        self._options = options
        self._clock = clock
        #: The Rust kernel (scoring/kernel.py) built with ``options.parameters``, or None.
        self._kernel = kernel
        self._partitions: dict[int, PartitionTotals] = {}
        self._kpi_retries: dict[bytes, int] = {}
        #: Customers recomputed by the last export (for the benchmark and the log).
        self.recomputed = 0

    def rewrite_all_kpis(self) -> None:
        """After Redis lost its data: the next export writes every owned customer's KPIs again."""
        for totals in self._partitions.values():
            totals.at_ms = -1  # marks the partition for a full count

    async def export(self) -> None:
        consumer = self._app.consumer
        assignment = consumer.assignment()
        lag = consumer_lag(assignment, consumer._read_offset, consumer.highwater, self._input_topics)
        for name, records in lag.items():
            metrics.CONSUMER_LAG.labels(name).set(records)
        owned = {tp.partition for tp in assignment if tp.topic == self._sweep_topic}
        started = time.perf_counter()
        await self.update(owned, int(self._clock() * 1000))
        publish_fleet(self.totals(owned))
        metrics.FLEET_EXPORT_SECONDS.set(time.perf_counter() - started)
        metrics.FLEET_EXPORT_RECOMPUTED.set(self.recomputed)
        if self._options.acquisition_spend is not None:
            metrics.FLEET_ACQUISITION_SPEND.set(self._options.acquisition_spend)

    def totals(self, owned: Iterable[int]) -> FleetTotals:
        """The owned partitions' totals together, at the last update's time."""
        sums = empty_sums()
        at_ms = 0
        for partition in owned:
            if (part := self._partitions.get(partition)) is not None:
                add_to(sums, part.sums)
                if part.native is not None:
                    add_to(sums, part.native.as_dict())
                at_ms = max(at_ms, part.at_ms)
        return totals_from(sums, at_ms, self._options.period_days, self._options.survey_response_days)

    async def update(self, owned: set[int], now_ms: int) -> None:
        """Brings every owned partition's totals to ``now_ms``, touching only what changed."""
        keys_by_partition = self._keys_by_partition
        for partition in set(self._partitions) - owned:  # moved to another worker
            del self._partitions[partition]
        for partition in set(keys_by_partition.changed) - owned:  # counted in full if it comes back
            del keys_by_partition.changed[partition]
        self.recomputed = 0
        rows: list[tuple[str, bytes]] = []
        retries = dict(self._kpi_retries)  # from earlier passes (this pass's failures wait for the next)
        walking: dict[int, PartitionTotals] = {}  # on the RocksDB store: partitions whose due customers are walked together
        try:
            for partition in sorted(owned):
                part, counted, on_disk = self._to_count(partition, now_ms)
                try:
                    rows = await self._count(partition, part, counted, now_ms, rows)
                except BaseException:  # the changes taken are half counted: count the partition in full next time
                    part.at_ms = -1
                    raise
                if on_disk:
                    walking[partition] = part
                else:
                    part.at_ms = now_ms
            rows = await self._count_due_on_disk(walking, now_ms, rows)
            for partition in list(walking):
                rows = await self._count(partition, walking[partition], self._marked_changed(partition), now_ms, rows)
                walking.pop(partition).at_ms = now_ms
        except BaseException:  # partitions half walked: counted in full next time
            for part in walking.values():
                part.at_ms = -1
            raise
        for row in self._retried_kpis(retries, now_ms):
            rows.append(row)
            if len(rows) >= CHUNK:
                rows = await self._write(rows)
        await self._write(rows, final=True)

    def _to_count(self, partition: int, now_ms: int) -> tuple[PartitionTotals, Iterable[tuple[bytes, Any, bool]], bool]:
        """A partition's totals and whom this pass counts first (customer, the bytes the totals
        counted, whether it has a due entry to replace); True: on the RocksDB store, where these
        are the erasures and the due and changed customers are walked on disk after."""
        keys_by_partition = self._keys_by_partition
        part = self._partitions.get(partition)
        if part is None or part.at_ms < 0 or partition in keys_by_partition.restored:
            keys_by_partition.restored.discard(partition)
            keys_by_partition.take_changes(partition)
            part = self._partitions[partition] = self._new_totals(now_ms)
            return part, ((key, None, False) for key in self._every_key(partition)), False
        if self._index(partition) is None:
            changes: dict[bytes, Any] = keys_by_partition.take_changes(partition)
            taken = part.due.take(now_ms)
            for key in taken:
                changes.setdefault(key, _AS_STORED)
            return part, ((key, before, key not in taken) for key, before in changes.items()), False  # taken: nothing to unschedule
        return part, ((key, before, True) for key, before in keys_by_partition.take_changes(partition).items()), True

    def _new_totals(self, now_ms: int) -> PartitionTotals:
        options = self._options
        native = None
        if self._kernel is not None:
            native = kernel_module._kernel.FleetSums(options.period_days, options.survey_response_days, list(options.key_features))
        return PartitionTotals(now_ms, native=native)

    def _every_key(self, partition: int) -> Iterator[bytes]:
        """The partition's customers for a full count (on the RocksDB store, the entries of an
        earlier count are cleared first)."""
        if (index := self._index(partition)) is not None:
            for prefix in (COUNTED, FLEET_DUE, FLEET_DUE.upper(), CHANGED):
                clear_prefix(index, prefix)
        yield from self._keys_by_partition.walk(partition, CHUNK)

    async def _count(self, partition: int, part: PartitionTotals, counted: Iterable[tuple[bytes, Any, bool]], now_ms: int, rows: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        """Recounts each (customer, what the totals counted, whether it has a due entry to
        replace), yielding to the stream every CHUNK customers; returns the KPI rows not written yet."""
        for index, (key, before, scheduled) in enumerate(counted, 1):
            row = self._recount(partition, part, key, before, scheduled, now_ms)
            if row is not None:
                rows.append(row)
            if index % CHUNK == 0:
                rows = await self._write(rows)
            self.recomputed += 1
        return rows

    async def _count_due_on_disk(self, walking: dict[int, PartitionTotals], now_ms: int, rows: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        """On the RocksDB store, recounts the customers whose time came by ``now_ms`` (just after
        midnight, most of those active in the period) in rounds on the export's threads at once
        (RocksDB's MultiGet and the kernel's recounts run without the GIL; rocksdict's write
        batch holds it): in a round, each thread takes the next partition still walking and
        walks it until it has recounted CHUNK customers, partition after partition, so the
        threads get equal work whatever the partitions hold and a round holds the stream no
        longer than one chunk did. The event loop waits for the round, so the stream cannot
        erase or write a customer of a chunk half way; between rounds the stream runs. A
        partition's walk starts at the minute its last one reached: a customer's next moment
        is always after the time it was counted at, so no entry is written before it (a clock
        set back moves it back)."""
        now_minute = max(0, now_ms // DUE_BUCKET_MS)
        waiting = deque((partition, FLEET_DUE + min(part.due_from_minute, now_minute).to_bytes(MINUTE_BYTES, "big")) for partition, part in walking.items())  # no entry is this key itself
        while waiting:
            failed = threading.Event()
            for walked_in_round in _on_threads(self._due_round, [waiting] * _export_threads(), walking, now_ms, failed):
                for partition, walked, last, chunk_rows, finished in walked_in_round:
                    rows.extend(chunk_rows)
                    self.recomputed += walked
                    if finished:  # the walk met a later minute or the last entry: no second seek
                        walking[partition].due_from_minute = now_minute
                    else:
                        waiting.append((partition, last))
            rows = await self._write(rows)
        return rows

    def _due_round(self, waiting: deque[tuple[int, bytes]], walking: dict[int, PartitionTotals], now_ms: int, failed: threading.Event) -> list[tuple[int, int, bytes, list[tuple[str, bytes]], bool]]:
        """One thread's share of a round: (partition, how many were walked, the last entry walked,
        the KPI rows, whether its walk is over) for each partition it took off ``waiting`` (a
        partition is taken by one thread only), until CHUNK customers or none left; stops early
        once another thread failed."""
        budget = CHUNK
        walked_in_round = []
        try:
            while budget > 0 and not failed.is_set():
                try:
                    partition, after = waiting.popleft()  # atomic: the threads share the queue
                except IndexError:
                    break
                walked, last, chunk_rows = self._due_chunk((partition, after), walking, now_ms, budget)
                walked_in_round.append((partition, walked, last, chunk_rows, walked < budget))
                budget -= walked
        except BaseException:
            failed.set()
            raise
        return walked_in_round

    def _due_chunk(self, walk: tuple[int, bytes], walking: dict[int, PartitionTotals], now_ms: int, limit: int) -> tuple[int, bytes, list[tuple[str, bytes]]]:
        """The next ``limit`` customers at most of a partition's walk (partition, the entry it
        reached): how many were walked, the last entry walked and their KPI rows."""
        partition, after = walk
        records = self._disk_records(partition)
        chunk = CountedIndex(records.index).walk(now_ms, after, limit) if records is not None else []  # None: moved away
        if not chunk:
            return 0, after, []
        return len(chunk), chunk[-1][0], self._recount_chunk_on_disk(records, walking[partition], chunk, now_ms)

    def _recount_chunk_on_disk(self, records: Any, part: PartitionTotals, chunk: list[tuple[bytes, bytes, bytes]], now_ms: int) -> list[tuple[str, bytes]]:
        """One chunk of the due walk ((entry, customer key, what was counted), in the index's
        order): the records in one MultiGet, the recounts in one call of the kernel, and the
        index's changes in one batch (the walked entries deleted one by one: a range deletion
        each made every later write of the partition's memtable slower, 0.33 against 0.19 ms
        a write of about 55 customers in the quiet minutes at 1M; new entries written after
        them in the same batch survive)."""
        keys = [key for _entry, key, _counted in chunk]
        recounted = self._moved_many(part, [counted for _entry, _key, counted in chunk], records.get_many(keys), now_ms)
        batch, _index = records.index_batch()
        for entry, _key, _counted in chunk:
            batch.delete(entry)
        put_counted_many(batch, keys, recounted)  # erased or unreadable: its minute's entry goes too
        records.db.write(batch, unlogged())  # (rocksdict writes holding the GIL)
        if self._kpi_retries:  # a customer recounted has its KPIs in this chunk's rows
            for key, (_due, counted, _row) in zip(keys, recounted):
                if counted is not None:
                    self._kpi_retries.pop(key, None)
        return [row for _due, counted, row in recounted if counted is not None and row is not None]

    def _marked_changed(self, partition: int) -> Iterator[tuple[bytes, Any, bool]]:
        """On the RocksDB store, the customers whose record a commit changed since the last pass
        (their change markers, stream/state/disk_index.py), read a chunk at a time; each marker
        is deleted as its customer is recounted (one written meanwhile is the next pass's)."""
        after = CHANGED
        while (index := self._index(partition)) is not None:
            chunk = [entry for entry, _value in islice(entries(index, after, CHANGED), CHUNK + 1) if entry != after][:CHUNK]
            if not chunk:
                return
            for entry in chunk:
                index.delete(entry, unlogged())
                yield entry[len(CHANGED) :], COUNTED_ON_DISK, True
            after = chunk[-1]

    def _index(self, partition: int) -> Any:
        """The partition's index column family on the RocksDB store (None: in memory, or not held)."""
        records = self._disk_records(partition)
        return None if records is None else records.index

    def _disk_records(self, partition: int) -> Any:
        """The partition's records on the RocksDB store (stream.state.store.PartitionRecords;
        None: in memory, or not held)."""
        disk = self._keys_by_partition.disk
        return disk.if_open(partition) if disk is not None else None

    def _recount(self, partition: int, part: PartitionTotals, key: bytes, before: Any, scheduled: bool, now_ms: int) -> tuple[str, bytes] | None:
        """Replaces the customer's contribution counted at ``part.at_ms`` (from ``before``) by
        its contribution now; returns its KPI row. Synchronous: the stream cannot write between."""
        if self._keys_by_partition.disk is not None:
            index = self._index(partition)
            return None if index is None else self._recount_on_disk(partition, index, part, key, before, scheduled, now_ms)  # None: moved away during the pass
        current = self._stored(partition, key)
        changed = self._keys_by_partition.changed.get(partition)
        written_meanwhile = changed is not None and key in changed  # during this pass, before this customer's turn
        if before is _AS_STORED:  # due by time alone: the totals counted what the table held
            before = changed[key] if written_meanwhile else current  # type: ignore[index]
        old_due, new_due, row, counted = self._move(part, before, part.at_ms, current, now_ms, scheduled)
        if scheduled:
            part.due.unschedule(key, old_due)  # found by its moment
        if written_meanwhile:  # the next export replaces what is counted now
            changed[key] = current  # type: ignore[index]
        if counted:
            part.due.schedule(key, new_due)
        return self._counted_row(key, row) if counted else None

    def _recount_on_disk(self, partition: int, index: Any, part: PartitionTotals, key: bytes, before: Any, scheduled: bool, now_ms: int) -> tuple[str, bytes] | None:
        """The RocksDB store's recount: ``before`` is what the totals counted for the customer
        (``encode_counted``'s bytes, None) or COUNTED_ON_DISK (read from its entry); the new
        contribution is written in its next entry, for the next recount to take out. ``scheduled``
        False: a full count, which cleared the entries first."""
        fleet = CountedIndex(index, unlogged())
        erasures = self._keys_by_partition.changed.get(partition)
        if erasures and key in erasures and (before is COUNTED_ON_DISK or not scheduled):
            # Erased after this pass took the erasures, then written again: the erasure took its
            # entries and handed over what the totals counted, which goes now, not at the next
            # pass too (that pass would also drop this recount's entry without taking it out).
            before = erasures.pop(key)
        elif before is COUNTED_ON_DISK:
            before = fleet.counted(key)
        new_due, counted, row = self._move_counted(part, before, self._stored(partition, key), now_ms)
        if counted is None:
            fleet.forget(key)
            return None
        fleet.put(key, new_due, counted, taken=not scheduled)
        return self._counted_row(key, row)

    def _counted_row(self, key: bytes, row: tuple[str, bytes] | None) -> tuple[str, bytes] | None:
        if self._kpi_retries:
            self._kpi_retries.pop(key, None)
        return row

    def _move(self, part: PartitionTotals, before: bytes | None, counted_at: int, current: bytes | None, now_ms: int, unschedule: bool) -> tuple[int | None, int | None, tuple[str, bytes] | None, bool]:
        """Takes the contribution of ``before`` (counted at ``counted_at``) out of the partition's
        sums and puts that of ``current`` at ``now_ms`` in. Returns when ``before`` was next due
        (when ``unschedule``), when ``current`` is, its KPI row (when they are written), and
        whether ``current`` was counted (False: erased, or unreadable). The Rust kernel does it
        where it is built (native/src/fleet.rs, held equal to this model by
        tests/unit/test_kernel_fleet.py); a record it cannot read is counted here."""
        options = self._options
        same = before is current or (before is not None and before == current)  # due by time alone: one decode
        if self._kernel is not None and part.native is not None:
            try:
                old_due, new_due, row = self._kernel.fleet_recount(
                    part.native, before, counted_at, current, same, now_ms, unschedule, options.write_kpis is not None, options.parameters is not None
                )
                return old_due, new_due, row, current is not None
            except ValueError:  # a layout the kernel does not know: nothing was counted, the model does it
                pass
        old, old_due = _decoded(before), None
        if old is not None:
            remove_from(part.sums, contribution(old, counted_at, options.period_days, options.survey_response_days))
            if unschedule:
                old_due = unchanged_until(old, counted_at, options.period_days, options.survey_response_days)
        new = old if same else _decoded(current)
        if new is None:
            return old_due, None, None, False
        add_to(part.sums, contribution(new, now_ms, options.period_days, options.survey_response_days))
        return old_due, unchanged_until(new, now_ms, options.period_days, options.survey_response_days), self._kpi_row(new, now_ms), True

    def _move_counted(
        self, part: PartitionTotals, counted: bytes | None, current: bytes | None, now_ms: int, kernel: bool = True
    ) -> tuple[int | None, bytes | None, tuple[str, bytes] | None]:
        """``_move`` on the RocksDB store: what is taken out is the contribution counted
        (``encode_counted``'s bytes), not a record. Returns when ``current`` is next due, its
        contribution as kept, and its KPI row; (None, None, None) when it is not counted (erased,
        or unreadable). ValueError: ``counted`` cannot be read (the partition is counted in full).
        ``kernel`` False: the kernel already found it cannot read them; the model alone counts."""
        options = self._options
        if kernel and self._kernel is not None and part.native is not None:
            try:
                return self._kernel.fleet_recount_counted(part.native, counted, current, now_ms, options.write_kpis is not None, options.parameters is not None)  # type: ignore[no-any-return]
            except ValueError:  # nothing was counted: the model does it
                pass
        if counted is not None:
            remove_from(part.sums, decode_counted(counted))
        new = _decoded(current)
        if new is None:
            return None, None, None
        now = contribution(new, now_ms, options.period_days, options.survey_response_days)
        add_to(part.sums, now)
        return unchanged_until(new, now_ms, options.period_days, options.survey_response_days), encode_counted(now), self._kpi_row(new, now_ms)

    def _moved_many(self, part: PartitionTotals, counted: list[bytes], current: list[bytes | None], now_ms: int) -> list[tuple[int | None, bytes | None, tuple[str, bytes] | None]]:
        """``_move_counted`` of each customer of a chunk: one call of the kernel for all, the
        model for those the kernel cannot read."""
        options = self._options
        recounted: list[Any] = [None] * len(counted)
        if self._kernel is not None and part.native is not None:
            recounted = self._kernel.fleet_recount_counted_many(part.native, counted, current, now_ms, options.write_kpis is not None, options.parameters is not None)
        tried = self._kernel is not None and part.native is not None  # None from it: it could not read the item, no use asking again
        return [done if done is not None else self._move_counted(part, old, new, now_ms, kernel=not tried) for done, old, new in zip(recounted, counted, current)]

    def _kpi_row(self, state: Any, now_ms: int) -> tuple[str, bytes] | None:
        return (state.customer_id, customer_kpis_json(state, now_ms, self._options)) if self._options.write_kpis is not None else None

    def _stored(self, partition: int, key: bytes) -> bytes | None:
        records = self._records.if_open(partition)
        return None if records is None else records.get(key)

    def _retried_kpis(self, retries: dict[bytes, int], now_ms: int) -> Iterator[tuple[str, bytes]]:
        """KPI rows of the customers Redis did not know at an earlier export (its score was on its
        way), or could not take, and not recounted since; one at a time, so they are written a
        chunk at a time."""
        for key, attempts in retries.items():
            if self._kpi_retries.get(key) != attempts:
                continue  # recounted in this pass: written (or noted again) with it
            partition = next((number for number in self._partitions if self._keys_by_partition.holds(number, key)), None)
            state = _decoded(None if partition is None else self._stored(partition, key))
            if state is None or self._options.write_kpis is None:  # erased meanwhile
                self._kpi_retries.pop(key, None)
            else:
                yield state.customer_id, customer_kpis_json(state, now_ms, self._options)

    async def _write(self, rows: list[tuple[str, bytes]], final: bool = False) -> list[tuple[str, bytes]]:
        """The customers' KPIs (a Redis failure is logged: they are offered again at the next
        export), then a yield to the stream; returns an empty list for the next rows."""
        write = self._options.write_kpis
        if rows and write is not None:
            try:
                unwritten, failed = await write(rows), False
            except Exception as error:  # the error's text can name a customer's key: only its type is logged
                log.warning("Writing %d customers' KPIs to Redis failed (%s); the next export tries again", len(rows), type(error).__name__)
                unwritten, failed = [customer_id for customer_id, _json in rows], True
            self._note_unwritten(unwritten, failed)
            if self._kpi_retries:
                for customer_id in {customer_id for customer_id, _json in rows} - set(unwritten):
                    self._kpi_retries.pop(customer_id.encode(), None)
        if not final:
            await asyncio.sleep(0)  # let the stream run
        return []

    def _note_unwritten(self, customer_ids: list[str], failed: bool) -> None:
        """Offered again at the next exports: while Redis fails, until it answers; while it does
        not know the customer yet, KPI_WRITE_ATTEMPTS times in all."""
        for customer_id in customer_ids:
            key = customer_id.encode()
            attempts = KPI_WRITE_ATTEMPTS if failed else self._kpi_retries.get(key, KPI_WRITE_ATTEMPTS) - 1
            if attempts > 0 and key not in self._kpi_retries and len(self._kpi_retries) >= MAX_KPI_RETRIES:
                metrics.FLEET_KPI_RETRIES_DROPPED.inc()
            elif attempts > 0:
                self._kpi_retries[key] = attempts
            else:
                self._kpi_retries.pop(key, None)


def _decoded(stored: bytes | None) -> Any:
    """The record, or None (no record, or one the worker's own path reports as unreadable)."""
    if stored is None:
        return None
    try:
        return decode_state(stored)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
        return None


def _export_threads() -> int:
    return min(FLEET_THREADS, len(os.sched_getaffinity(0)))


def _on_threads(work: Callable[..., Any], items: list[Any], *arguments: Any) -> list[Any]:
    """``work(item, *arguments)`` for each item, on up to FLEET_THREADS threads when the machine
    has more than one core; the caller waits for all (results in the items' order; the first
    failure, in that order, raised once every item is done)."""
    global _threads
    threads = _export_threads()
    if threads < 2 or len(items) < 2:
        return [work(item, *arguments) for item in items]
    if _threads is None:
        _threads = ThreadPoolExecutor(threads, thread_name_prefix="fleet-export")
    running = [_threads.submit(work, item, *arguments) for item in items]
    wait(running)  # all of them, even when one failed: none may run on once the stream does
    return [future.result() for future in running]


def customer_kpis_json(state: Any, now_ms: int, options: FleetOptions) -> bytes:
    """``scoring.kpis.customer_kpis`` with the time it was computed at, as JSON."""
    health = score_state(state, max(now_ms, state.last_event_ms), options.parameters) if options.parameters is not None else None
    churn_risk = health.churn_risk if health is not None else None
    kpis = msgspec.json.encode(customer_kpis(state, now_ms, options.key_features, options.survey_response_days, churn_risk))
    return b'{"as_of":"%s",%s' % (rfc3339(now_ms).encode(), kpis[1:])  # msgspec encodes the dataclass itself (asdict took 40 %)


def publish_fleet(totals: FleetTotals) -> None:
    for band, count in totals.bands.items():
        metrics.CUSTOMERS_BY_BAND.labels(band).set(count)
    for state, count in (
        ("total", totals.customers),
        ("active", totals.active),
        ("active_at_period_start", totals.active_at_period_start),
        ("new_in_period", totals.new_in_period),
        ("lost_in_period", totals.lost_in_period),
    ):
        metrics.FLEET_CUSTOMERS.labels(state).set(count)
    metrics.FLEET_BUYERS.labels("one_or_more").set(totals.buyers)
    metrics.FLEET_BUYERS.labels("two_or_more").set(totals.repeat_buyers)
    metrics.FLEET_BUYERS.labels("regular").set(totals.regular_customers)
    metrics.FLEET_BUYERS.labels("existing").set(totals.existing_buyers)
    metrics.FLEET_BUYERS.labels("upsold").set(totals.upsold)
    metrics.FLEET_CUSTOMERS.labels("csm_touched").set(totals.csm_touched)
    metrics.FLEET_SCORE_CHANGE_SINCE_TOUCHPOINT_SUM.set(totals.score_change_since_touchpoint_sum)
    metrics.FLEET_CUSTOMERS.labels("answered_survey").set(totals.survey_participants)
    for kind, amount in totals.mrr_movement.items():
        metrics.FLEET_MRR_MOVEMENT.labels(kind).set(amount)
    for action, count in totals.emails.items():
        metrics.FLEET_EMAILS.labels(action).set(count)
    metrics.FLEET_CUSTOMERS.labels("emailed").set(totals.customers_emailed)
    metrics.FLEET_CUSTOMERS.labels("unsubscribed").set(totals.customers_unsubscribed)
    metrics.FLEET_SURVEY_INVITATIONS.labels("answered").set(totals.invitations_answered)
    metrics.FLEET_SURVEY_INVITATIONS.labels("missed").set(totals.invitations_missed)
    metrics.FLEET_ORDERS.set(totals.orders)
    metrics.FLEET_REVENUE_SUM.set(totals.revenue)
    metrics.FLEET_ABANDONED_CHECKOUTS.set(totals.abandoned_checkouts)
    for window, users in totals.active_users.items():
        metrics.FLEET_ACTIVE_USERS.labels(window).set(users)
    for category, count in totals.nps.items():
        metrics.FLEET_SURVEY_ANSWERS.labels("nps", category).set(count)
    metrics.FLEET_SURVEY_ANSWERS.labels("csat", "satisfied").set(totals.csat_satisfied)
    metrics.FLEET_SURVEY_ANSWERS.labels("csat", "all").set(totals.csat_answers)
    metrics.FLEET_SURVEY_ANSWERS.labels("ces", "all").set(totals.ces_answers)
    metrics.FLEET_CES_SCORE_SUM.set(totals.ces_sum)
    metrics.FLEET_SURVEY_ANSWERS.labels("cli", "all").set(totals.cli_answers)
    metrics.FLEET_CLI_POINTS_SUM.set(totals.cli_points_sum)
    metrics.FLEET_SECURE_CUSTOMERS.labels("answered").set(totals.csi_answered)
    metrics.FLEET_SECURE_CUSTOMERS.labels("secure").set(totals.csi_secure)
    metrics.FLEET_RESOLUTION_SECONDS_SUM.set(totals.resolution_seconds_sum)
    metrics.FLEET_RESOLUTIONS.set(totals.resolutions)
    metrics.FLEET_MRR.set(totals.mrr)
    metrics.FLEET_PERIOD_DAYS.set(totals.period_days)
