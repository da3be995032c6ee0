"""Issue 38: the fleet export recomputes only customers whose record changed or whose window
edge passed, and still equals a full recomputation: the gauges' totals and every customer's
KPIs as the API serves them, with records written while the export yields to the stream,
customers erased, partitions moved away and restored."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import tempfile
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scoring import kernel
from scoring.fleet_sums import add_to, contribution, empty_sums, unchanged_until
from scoring.health import ScoringParameters
from scoring.kpis import customer_kpis
from scoring.pipeline import step
from scoring.state import DAY_MS, decode_state, encode_state, new_state
from stream.kafka.producer import Outputs
from stream.settings import Settings
from stream.state.table import KeysByPartition, customer_state_table
from stream.state.working_set import WorkingSet
from stream.worker import fleet
from stream.worker.fleet import FleetExport, FleetOptions
from stream.worker.app import faust_app
from stream.worker.web import served_kpis
from tests.unit.test_kernel import T0, histories

PARAMETERS = ScoringParameters()
OPTIONS = dict(period_days=7, survey_response_days=2.5, key_features=("reports",))


def partition_of(customer: str) -> int:
    return zlib.crc32(customer.encode()) % 3


class Table:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)


class World:
    """A table written through the worker's WorkingSet, and an export that sees it. With
    ``directory``, the table is the RocksDB store (the export's indexes on disk), and writes
    reach the disk at commits made at random moments (``chooser``)."""

    def __init__(
        self, events: list, unknown_to_redis: set[str], directory: Path | None = None, chooser: random.Random | None = None, native: bool = False
    ) -> None:
        self.keys = KeysByPartition()
        self.table: Any = Table()
        if directory is not None:
            configured = Settings(state_store="rocksdb", data_dir=directory)
            self.table = customer_state_table(faust_app(configured), configured, self.keys)
        self.chooser = chooser or random.Random(0)
        self.pending = list(events)  # applied one per KPI write, as the stream would while the export yields
        self.redis: dict[str, bytes] = {}
        self.streaming = True
        self.unknown = set(unknown_to_redis)
        self.erase_while_exporting: list[str] = []
        recounter = kernel.build(PARAMETERS) if native else None  # the worker's, where it is built
        self.export = FleetExport(None, self.table, self.keys, [], "sweep", FleetOptions(**OPTIONS, write_kpis=self.write_kpis), kernel=recounter)  # type: ignore[arg-type]

    def apply(self, event: object) -> None:
        customer = event.customer_id  # type: ignore[attr-defined]
        working = WorkingSet(self.table, self.keys, Outputs(), "changelog")
        working.run(customer.encode(), partition_of(customer), customer, lambda state: step(state, event, PARAMETERS, 32))  # type: ignore[arg-type]
        working.write_back()
        self.maybe_commit()

    def maybe_commit(self) -> None:
        if self.chooser.random() < 0.5:
            self.commit()

    def commit(self) -> None:
        """What the offset commit does on the RocksDB store: the pending writes to disk, with
        their change markers (the export counts a change once a commit has written it)."""
        if self.keys.disk is not None:
            store = self.keys.disk
            store.persist({partition: list(store.partition(partition).pending.items()) for partition in range(3)})

    def stored(self, key: bytes) -> bytes | None:
        if self.keys.disk is None:
            return self.table.data.get(key)
        return self.keys.disk.partition(partition_of(key.decode())).get(key)  # type: ignore[no-any-return]

    def customers(self, partition: int) -> list[bytes]:
        return list(self.keys.walk(partition))

    def restore(self, event: object) -> None:
        """What a changelog restore does: the store written directly, the partition marked."""
        customer = event.customer_id  # type: ignore[attr-defined]
        stored = self.stored(customer.encode())
        state = decode_state(stored) if stored is not None else new_state(customer)
        step(state, event, PARAMETERS, 32)  # type: ignore[arg-type]
        partition = partition_of(customer)
        if self.keys.disk is not None:
            self.maybe_commit()
            message = SimpleNamespace(partition=partition, offset=0, key=customer.encode(), value=encode_state(state))
            self.keys.disk.apply_changelog_batch([SimpleNamespace(message=message)], None, None)
            self.keys.mark_restored(partition)
            return
        self.table.data[customer.encode()] = encode_state(state)
        self.keys.setdefault(partition, set()).add(customer.encode())
        self.keys.restored.add(partition)

    def erase(self, customer: str) -> None:
        working = WorkingSet(self.table, self.keys, Outputs(), "changelog")
        working.erase(customer.encode(), partition_of(customer))
        self.maybe_commit()

    async def write_kpis(self, rows: list[tuple[str, bytes]]) -> list[str]:
        if self.erase_while_exporting and self.streaming:  # the stream erases a customer while the export yields
            self.erase(self.erase_while_exporting.pop())
        unwritten = [customer for customer, _json in rows if customer in self.unknown]
        self.unknown.clear()  # known to Redis from now on (its first score was flushed)
        self.redis.update((customer, encoded) for customer, encoded in rows if customer not in unwritten)
        if self.pending and self.streaming:  # the stream runs while the export yields
            self.apply(self.pending.pop())
        return unwritten


def full_sums(world: World, owned: set[int], at_ms: int) -> dict[str, int]:
    sums = empty_sums()
    for partition in owned:
        for key in world.customers(partition):
            add_to(sums, contribution(decode_state(world.stored(key)), at_ms, OPTIONS["period_days"], OPTIONS["survey_response_days"]))
    return {name: value for name, value in sums.items() if value}


def exported_sums(world: World, owned: set[int]) -> dict[str, int]:
    sums = empty_sums()
    for partition in owned:
        part = world.export._partitions[partition]
        add_to(sums, part.sums)
        if part.native is not None:
            add_to(sums, part.native.as_dict())
    return {name: value for name, value in sums.items() if value}


def check(world: World, owned: set[int], at_ms: int) -> None:
    assert exported_sums(world, owned) == full_sums(world, owned, at_ms)
    for partition in owned:
        for key in world.customers(partition):
            state = decode_state(world.stored(key))
            expected = msgspec.json.decode(msgspec.json.encode(dataclasses.asdict(customer_kpis(state, at_ms, ("reports",), 2.5))))
            served = served_kpis(world.redis[state.customer_id], at_ms)
            for name, value in expected.items():
                assert served[name] == (pytest.approx(value, abs=1e-9) if isinstance(value, float) else value), (state.customer_id, name)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(parts=st.lists(histories(), min_size=1, max_size=3), steps=st.lists(st.integers(0, 40 * 24), min_size=2, max_size=8), seed=st.integers(0, 1000),
       on_disk=st.booleans(), native=st.booleans() if kernel.available() else st.just(False))
def test_the_incremental_export_equals_a_full_recomputation(parts: list, steps: list, seed: int, on_disk: bool, native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """In memory, and on the RocksDB store (the counted records and due entries on disk); the
    customers recounted by the Python model or by the Rust kernel."""
    with tempfile.TemporaryDirectory() as directory:
        incremental_equals_full(parts, steps, seed, Path(directory) if on_disk else None, monkeypatch, native)


def incremental_equals_full(parts: list, steps: list, seed: int, directory: Path | None, monkeypatch: pytest.MonkeyPatch, native: bool = False) -> None:
    monkeypatch.setattr(fleet, "CHUNK", 2)  # (the same for every example) yield often: records change during the pass
    events = [msgspec.structs.replace(event, customer_id=f"{index}-{event.customer_id}") for index, history in enumerate(parts) for _v, event, *_rest in history]
    chooser = random.Random(seed)
    chooser.shuffle(events)
    customers = sorted({event.customer_id for event in events})
    world = World(events[len(events) // 2:], unknown_to_redis=set(customers[:2]), directory=directory, chooser=chooser, native=native)
    for event in events[: len(events) // 2]:
        world.apply(event)
    owned = {0, 1, 2}
    now = T0 - 60 * DAY_MS
    for hours in steps:
        now += hours * 3_600_000 + chooser.randrange(3_600_000)
        if chooser.random() < 0.2:
            world.erase(chooser.choice(customers))
        if chooser.random() < 0.3 and world.pending:
            world.restore(world.pending.pop())  # a record read back from the changelog
        if chooser.random() < 0.2:
            world.erase_while_exporting = [chooser.choice(customers)]  # while the export yields
        moved = {chooser.randrange(3)} if chooser.random() < 0.2 else set()
        asyncio.run(world.export.update(owned - moved, now))
        if moved:
            continue  # the next update counts the partition that came back in full
        world.streaming = False  # what the check reads stays as the export last saw it
        world.erase_while_exporting = []
        world.commit()
        asyncio.run(world.export.update(owned, now))  # KPIs not written the first time are offered again
        check(world, owned, now)
        world.streaming = True
    if world.keys.disk is not None:
        asyncio.run(world.keys.disk.on_stop())


RECOUNTERS = pytest.mark.parametrize("native", [False, pytest.param(True, marks=pytest.mark.skipif(not kernel.available(), reason="the Rust kernel is not built"))])


@RECOUNTERS
def test_only_changed_and_due_customers_are_recomputed(native: bool) -> None:
    from scoring.contract import Event, UsageSession

    world = World([], set(), native=native)
    at = T0 // DAY_MS * DAY_MS + 12 * 3_600_000
    for index in range(50):
        world.apply(Event(event_id=f"e{index}", type="usage.session", customer_id=f"c{index}", occurred_at_ms=at - 400 * DAY_MS, data=UsageSession("u", 60)))
    world.apply(Event(event_id="new", type="usage.session", customer_id="c0", occurred_at_ms=at - 3_600_000, data=UsageSession("u", 60)))
    asyncio.run(world.export.update({0, 1, 2}, at))
    assert world.export.recomputed == 50  # the first count of each partition is a full one
    asyncio.run(world.export.update({0, 1, 2}, at + 60_000))
    assert world.export.recomputed == 0  # nothing changed, no window edge passed
    world.apply(Event(event_id="again", type="usage.session", customer_id="c7", occurred_at_ms=at, data=UsageSession("u", 60)))
    asyncio.run(world.export.update({0, 1, 2}, at + 120_000))
    assert world.export.recomputed == 1
    asyncio.run(world.export.update({0, 1, 2}, at + DAY_MS))  # midnight passed: the two active today are due
    assert world.export.recomputed == 2
    check(world, {0, 1, 2}, at + DAY_MS)


@RECOUNTERS
def test_a_customer_due_and_written_while_the_export_yields_is_counted_once(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from scoring.contract import Event, UsageSession

    monkeypatch.setattr(fleet, "CHUNK", 1)
    at = T0 // DAY_MS * DAY_MS + 12 * 3_600_000
    world = World([], set(), native=native)
    b, a = [name for name in ("b", "c", "d", "e") if partition_of(name) == partition_of("a")][0], "a"  # one partition
    for customer in (b, a):
        world.apply(Event(event_id="e1", type="usage.session", customer_id=customer, occurred_at_ms=at - 3_600_000, data=UsageSession("u", 60)))
    world.streaming = False
    asyncio.run(world.export.update({0, 1, 2}, at))
    world.apply(Event(event_id="e2", type="usage.session", customer_id=b, occurred_at_ms=at, data=UsageSession("u", 60)))
    # While the export yields after recounting b (changed), a (due at midnight) gets an event.
    world.pending = [Event(event_id="e3", type="usage.session", customer_id="a", occurred_at_ms=at - 7_200_000, data=UsageSession("v", 60))]
    world.streaming = True
    asyncio.run(world.export.update({0, 1, 2}, at + DAY_MS))
    assert not world.pending
    world.streaming = False
    asyncio.run(world.export.update({0, 1, 2}, at + DAY_MS))
    check(world, {0, 1, 2}, at + DAY_MS)


@RECOUNTERS
def test_on_disk_the_due_walk_resumes_where_it_stopped_and_goes_back_with_the_clock(native: bool, tmp_path: Path) -> None:
    """The RocksDB store's export walks due entries from the minute the last export reached (not
    over every entry deleted before it); a clock set back an hour still finds every customer."""
    from scoring.contract import Event, UsageSession

    world = World([], set(), directory=tmp_path, native=native)
    at = T0 // DAY_MS * DAY_MS + 12 * 3_600_000
    for index in range(30):
        world.apply(Event(event_id=f"e{index}", type="usage.session", customer_id=f"c{index}", occurred_at_ms=at - index * 3_600_000, data=UsageSession("u", 60)))
    world.commit()
    world.streaming = False
    for now in (at, at + 60_000, at + DAY_MS, at + DAY_MS - 3_600_000, at + DAY_MS + 60_000, at + 8 * DAY_MS, at + 31 * DAY_MS):
        asyncio.run(world.export.update({0, 1, 2}, now))
        check(world, {0, 1, 2}, now)
    assert all(part.due_from_minute == (at + 31 * DAY_MS) // 60_000 for part in world.export._partitions.values())
    asyncio.run(world.keys.disk.on_stop())


@RECOUNTERS
def test_on_disk_a_customer_changed_before_its_moment_leaves_no_entry_behind(native: bool, tmp_path: Path) -> None:
    """A customer whose record changes before its next moment is recounted at its new moment
    only: the entry of the old one (holding what was counted then) goes, or its walk would
    take that contribution out a second time."""
    from scoring.contract import Event, PurchaseCompleted, UsageSession
    from stream.state.disk_index import FLEET_DUE, entries

    world = World([], set(), directory=tmp_path, native=native)
    at = T0 // DAY_MS * DAY_MS + 12 * 3_600_000
    customers = [f"c{index}" for index in range(12)]
    for index, customer in enumerate(customers):
        # Its next moment: its session leaving the 30-day window, this afternoon (not midnight).
        world.apply(Event(event_id="e1", type="usage.session", customer_id=customer, occurred_at_ms=at - 30 * DAY_MS + (index + 1) * 600_000, data=UsageSession("u", 60)))
    world.commit()
    world.streaming = False
    asyncio.run(world.export.update({0, 1, 2}, at))
    for customer in customers[:6]:  # recounted before that moment, with another
        world.apply(Event(event_id="e2", type="purchase.completed", customer_id=customer, occurred_at_ms=at + 60_000, data=PurchaseCompleted("o1", 25.0, "EUR")))
    world.commit()
    for now in [at + 120_000, *(at + hours * 3_600_000 for hours in range(3, 60, 3)), at + 31 * DAY_MS]:
        asyncio.run(world.export.update({0, 1, 2}, now))
        check(world, {0, 1, 2}, now)
        on_disk = [entry for partition in range(3) for entry, _value in entries(world.keys.disk.partition(partition).index, FLEET_DUE, FLEET_DUE)]
        assert sorted(entry[len(FLEET_DUE) + 8 :] for entry in on_disk) == sorted(customer.encode() for customer in customers)  # one each
    asyncio.run(world.keys.disk.on_stop())


def in_partition_zero(count: int) -> list[str]:
    return [customer for customer in (f"c{index}" for index in range(60)) if partition_of(customer) == 0][:count]


def counted_at_noon(customers: list[str], directory: Path | None, native: bool) -> tuple[World, int]:
    """A world whose customers each had a session 30 days (less ten minutes) before noon of
    T0's day, counted by a first export at that noon (returned), the stream paused."""
    from scoring.contract import Event, UsageSession

    world = World([], set(), directory=directory, native=native)
    at = T0 // DAY_MS * DAY_MS + 12 * 3_600_000
    for customer in customers:
        world.apply(Event(event_id="e1", type="usage.session", customer_id=customer, occurred_at_ms=at - 30 * DAY_MS + 600_000, data=UsageSession("u", 60)))
    world.commit()
    world.streaming = False
    asyncio.run(world.export.update({0, 1, 2}, at))
    return world, at


@RECOUNTERS
@pytest.mark.parametrize("on_disk", [False, True])
def test_a_customer_erased_while_the_export_yields_is_taken_out_once(native: bool, on_disk: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A customer due with another, erased while the export yields to the stream (in memory
    before its turn; on disk a chunk of due customers is recounted before the export yields):
    its erasure takes out what was counted (at the next pass), once, and no entry of it stays."""
    monkeypatch.setattr(fleet, "CHUNK", 2)
    same = in_partition_zero(3)
    erased_first, due_first, erased_meanwhile = sorted(same)
    world, at = counted_at_noon(same, tmp_path if on_disk else None, native)
    due = unchanged_until(decode_state(world.stored(due_first.encode())), at, OPTIONS["period_days"], OPTIONS["survey_response_days"])
    assert due is not None and due == unchanged_until(decode_state(world.stored(erased_meanwhile.encode())), at, OPTIONS["period_days"], OPTIONS["survey_response_days"])
    world.erase(erased_first)  # the next pass starts with an erasure: the due ones come after it
    world.erase_while_exporting, world.streaming = [erased_meanwhile], True
    asyncio.run(world.export.update({0, 1, 2}, due))  # both due: the first's row is written, then the other erased
    assert not world.erase_while_exporting
    world.streaming = False
    world.commit()
    for now in (due + 60_000, due + DAY_MS):
        asyncio.run(world.export.update({0, 1, 2}, now))
        check(world, {0, 1, 2}, now)
    assert world.customers(0) == [due_first.encode()]
    if on_disk:
        from stream.state.disk_index import FLEET_DUE, entries

        index = world.keys.disk.partition(0).index
        assert [entry for entry, _value in entries(index, FLEET_DUE.upper(), FLEET_DUE.upper())] == [FLEET_DUE.upper() + due_first.encode()]
        asyncio.run(world.keys.disk.on_stop())


@pytest.mark.skipif(not kernel.available(), reason="the Rust kernel is not built")
@pytest.mark.parametrize("on_disk", [False, True])
def test_a_record_the_kernel_cannot_read_is_counted_by_the_python_model(on_disk: bool, tmp_path: Path) -> None:
    """A record beyond the kernel's 64-bit integers (as a newer layout would be): the kernel
    refuses it before counting anything, the model counts it, and the totals stay exact. On
    disk the record turns unreadable after the kernel counted it, and readable again after
    the model did: each takes out what the other counted (scoring.fleet_sums.encode_counted)."""
    from scoring.contract import Event, UsageSession

    at = T0 // DAY_MS * DAY_MS + 12 * 3_600_000
    world = World([], set(), directory=tmp_path if on_disk else None, native=True)
    for customer in ("a", "b", "c", "d"):
        world.apply(Event(event_id="e1", type="usage.session", customer_id=customer, occurred_at_ms=at - 3_600_000, data=UsageSession("u", 60)))
    world.commit()
    world.streaming = False
    readable = world.stored(b"a")
    state = decode_state(readable)
    state.events_applied = 2**63

    def write_a(record: bytes) -> None:
        if on_disk:  # as a commit writes it: with its change marker
            world.keys.disk.persist({partition_of("a"): [(b"a", record)]})
        else:
            world.table.data[b"a"] = record

    if not on_disk:
        write_a(encode_state(state))
    for now in (at, at + 60_000, at + DAY_MS, at + 40 * DAY_MS, at + 41 * DAY_MS):
        if on_disk and now == at + 60_000:
            write_a(encode_state(state))
        if on_disk and now == at + 40 * DAY_MS:
            write_a(readable)
        asyncio.run(world.export.update({0, 1, 2}, now))
        check(world, {0, 1, 2}, now)
        if now == at + DAY_MS:
            part = world.export._partitions[partition_of("a")]
            assert part.sums and part.native.as_dict()  # a counted by the model, the others by the kernel
    if on_disk:
        asyncio.run(world.keys.disk.on_stop())


def test_kpis_wait_out_a_redis_outage_and_a_failed_pass_is_counted_in_full_next_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from scoring.contract import Event, UsageSession

    at = T0 // DAY_MS * DAY_MS + 12 * 3_600_000
    world = World([], set())
    world.streaming = False
    for index in range(6):
        world.apply(Event(event_id=f"e{index}", type="usage.session", customer_id=f"c{index}", occurred_at_ms=at - 3_600_000, data=UsageSession("u", 60)))
    answering = world.write_kpis

    async def down(rows: list[tuple[str, bytes]]) -> list[str]:
        raise ConnectionError("Redis is down")

    world.export._options = dataclasses.replace(world.export._options, write_kpis=down)
    for minute in range(5):  # more exports than KPI_WRITE_ATTEMPTS: nothing is given up while Redis fails
        asyncio.run(world.export.update({0, 1, 2}, at + minute * 60_000))
    world.export._options = dataclasses.replace(world.export._options, write_kpis=answering)
    asyncio.run(world.export.update({0, 1, 2}, at + 5 * 60_000))
    assert sorted(world.redis) == [f"c{index}" for index in range(6)]

    world.apply(Event(event_id="x", type="usage.session", customer_id="c1", occurred_at_ms=at, data=UsageSession("v", 60)))
    original = fleet.contribution
    monkeypatch.setattr(fleet, "contribution", lambda *args: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError):
        asyncio.run(world.export.update({0, 1, 2}, at + 6 * 60_000))
    monkeypatch.setattr(fleet, "contribution", original)
    asyncio.run(world.export.update({0, 1, 2}, at + 7 * 60_000))
    check(world, {0, 1, 2}, at + 7 * 60_000)


def test_kpis_waiting_for_redis_are_bounded_and_written_a_chunk_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a 10-million-customer backlog against a Redis that evicts, a million customers' KPIs
    waited for another try and went in one write at the end of a pass (5.8 GB). Now at most
    MAX_KPI_RETRIES wait (the others are counted and written at their next change), and the
    retries go a CHUNK at a time."""
    from scoring.contract import Event, UsageSession
    from stream import metrics

    monkeypatch.setattr(fleet, "MAX_KPI_RETRIES", 4)
    monkeypatch.setattr(fleet, "CHUNK", 3)
    at = T0 // DAY_MS * DAY_MS + 12 * 3_600_000
    customers = [f"c{index}" for index in range(10)]
    world = World([], set())
    world.streaming = False
    for index, customer in enumerate(customers):
        world.apply(Event(event_id=f"e{index}", type="usage.session", customer_id=customer, occurred_at_ms=at - 3_600_000, data=UsageSession("u", 60)))
    writes: list[list[str]] = []

    async def down(rows: list[tuple[str, bytes]]) -> list[str]:
        writes.append([customer for customer, _json in rows])
        raise ConnectionError("Redis is down")

    dropped_before = metrics.FLEET_KPI_RETRIES_DROPPED._value.get()
    world.export._options = dataclasses.replace(world.export._options, write_kpis=down)
    asyncio.run(world.export.update({0, 1, 2}, at))
    assert sorted(customer for rows in writes for customer in rows) == customers  # each once: retried at the next pass
    assert len(world.export._kpi_retries) == 4
    assert metrics.FLEET_KPI_RETRIES_DROPPED._value.get() - dropped_before == 6

    writes.clear()
    asyncio.run(world.export.update({0, 1, 2}, at + 60_000))  # nothing changed: only the retries
    assert sorted(customer for rows in writes for customer in rows) == sorted(key.decode() for key in world.export._kpi_retries)
    assert writes and max(len(rows) for rows in writes) <= 3


@RECOUNTERS
@pytest.mark.parametrize("on_disk", [False, True])
def test_a_customer_erased_and_written_again_during_a_pass_then_erased_again_is_taken_out(native: bool, on_disk: bool, tmp_path: Path) -> None:
    """Erased while the export yields (after the pass took the erasures), written again and
    committed before the pass recounts its change: that recount takes out what the erasure
    handed over, so a second erasure before the next pass hands over the new count. On disk
    the second erasure used to keep the first's bytes (the erasures wait by key), and the new
    count stayed in the totals for good."""
    from scoring.contract import Event, UsageSession

    erased, other = in_partition_zero(2)
    world, at = counted_at_noon([erased, other], tmp_path if on_disk else None, native)
    due = unchanged_until(decode_state(world.stored(erased.encode())), at, OPTIONS["period_days"], OPTIONS["survey_response_days"])
    assert due is not None
    world.chooser = SimpleNamespace(random=lambda: 0.0)  # every write committed at once
    again = Event(event_id="e2", type="usage.session", customer_id=erased, occurred_at_ms=due - 60_000, data=UsageSession("u", 30))
    world.erase_while_exporting, world.pending, world.streaming = [erased], [again], True
    asyncio.run(world.export.update({0, 1, 2}, due))  # at its first yield: erased, then written again
    assert not world.erase_while_exporting and not world.pending and world.stored(erased.encode()) is not None
    world.streaming = False
    world.erase(erased)
    for now in (due + 60_000, due + DAY_MS):
        asyncio.run(world.export.update({0, 1, 2}, now))
        check(world, {0, 1, 2}, now)
    assert world.customers(0) == [other.encode()]
    if on_disk:
        asyncio.run(world.keys.disk.on_stop())


@RECOUNTERS
def test_on_disk_a_due_customer_whose_record_turned_unreadable_leaves_the_totals_and_the_index(native: bool, tmp_path: Path) -> None:
    """A record neither the kernel nor the model can read (a corrupt one), found by the due
    walk: what was counted for it is taken out, and its entries go, the minute's one too."""
    from stream.state.disk_index import FLEET_DUE

    world, at = counted_at_noon(["a", "b"], tmp_path, native)
    due = unchanged_until(decode_state(world.stored(b"a")), at, OPTIONS["period_days"], OPTIONS["survey_response_days"])
    records = world.keys.disk.partition(partition_of("a"))
    records.db.put(b"a", b"\xc1 not a record")  # behind the commit's back: no change marker
    asyncio.run(world.export.update({0, 1, 2}, due))
    assert [entry for entry in records.index.keys() if entry.endswith(b"a") and entry[:1] in (FLEET_DUE, FLEET_DUE.upper())] == []
    expected = contribution(decode_state(world.stored(b"b")), due, OPTIONS["period_days"], OPTIONS["survey_response_days"])
    assert exported_sums(world, {0, 1, 2}) == {name: value for name, value in expected.items() if value}
    asyncio.run(world.keys.disk.on_stop())


@RECOUNTERS
def test_on_disk_a_walk_that_fails_in_one_partition_counts_every_walking_partition_in_full_next_time(native: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The due walks of the partitions go together, two threads at once taking the next
    partition: when one fails, every partition walking in that pass has half-counted changes,
    and the next pass counts each in full. The other thread's chunk is not still running once
    the stream runs again (it is waited for), and it takes no further partition."""
    import threading
    import time

    monkeypatch.setattr(fleet, "_export_threads", lambda: 2)  # as on a machine with two cores or more
    customers = [f"c{index}" for index in range(12)]
    world, at = counted_at_noon(customers, tmp_path, native)
    assert {partition_of(customer) for customer in customers} == {0, 1, 2}
    due = max(unchanged_until(decode_state(world.stored(customer.encode())), at, OPTIONS["period_days"], OPTIONS["survey_response_days"]) for customer in customers)  # type: ignore[type-var]
    walked: list[int] = []
    original = fleet.FleetExport._recount_chunk_on_disk
    partition_one_started = threading.Event()

    def failing_in_partition_zero(export: fleet.FleetExport, records: Any, part: Any, chunk: list, now_ms: int) -> list:
        partition = partition_of(chunk[0][1].decode())
        walked.append(partition)
        if partition == 0:
            partition_one_started.wait(5)  # the other thread is in partition 1's chunk
            raise RuntimeError("a disk error")
        partition_one_started.set()
        time.sleep(0.2)  # partition 1, on the other thread: still running when partition 0 failed
        rows = original(export, records, part, chunk, now_ms)
        walked.append(partition + 10)
        return rows

    monkeypatch.setattr(fleet.FleetExport, "_recount_chunk_on_disk", failing_in_partition_zero)
    with pytest.raises(RuntimeError, match="a disk error"):
        asyncio.run(world.export.update({0, 1, 2}, due))
    assert walked in ([0, 1, 11], [1, 0, 11])  # partition 1's chunk finished; partition 2's walk never started
    assert [world.export._partitions[partition].at_ms for partition in (0, 1, 2)] == [-1, -1, -1]
    monkeypatch.setattr(fleet.FleetExport, "_recount_chunk_on_disk", original)
    asyncio.run(world.export.update({0, 1, 2}, due + 60_000))
    check(world, {0, 1, 2}, due + 60_000)
    asyncio.run(world.keys.disk.on_stop())


@RECOUNTERS
@pytest.mark.parametrize("threads", [1, 2])
def test_on_disk_a_round_of_the_due_walk_gives_each_thread_a_chunk_taken_from_partition_after_partition(native: bool, threads: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread's share of a round is CHUNK customers, whichever partitions they are in: a
    partition with few due customers does not leave a thread idle, a partition with many is
    resumed in the next round, and the totals still equal a full recomputation."""
    monkeypatch.setattr(fleet, "_export_threads", lambda: threads)
    monkeypatch.setattr(fleet, "CHUNK", 4)
    customers = [f"c{index}" for index in range(30)]
    world, at = counted_at_noon(customers, tmp_path, native)
    due = max(unchanged_until(decode_state(world.stored(customer.encode())), at, OPTIONS["period_days"], OPTIONS["survey_response_days"]) for customer in customers)  # type: ignore[type-var]
    shares: list[list[tuple[int, int]]] = []
    original = fleet.FleetExport._due_round

    def recording(export: fleet.FleetExport, *arguments: Any) -> list:
        walked_in_round = original(export, *arguments)
        shares.append([(partition, walked) for partition, walked, *_rest in walked_in_round])
        return walked_in_round

    monkeypatch.setattr(fleet.FleetExport, "_due_round", recording)
    asyncio.run(world.export.update({0, 1, 2}, due))
    check(world, {0, 1, 2}, due)
    per_partition = {partition: sum(1 for customer in customers if partition_of(customer) == partition) for partition in (0, 1, 2)}
    assert {partition: sum(walked for share in shares for part, walked in share if part == partition) for partition in (0, 1, 2)} == per_partition
    assert all(sum(walked for _partition, walked in share) <= 4 for share in shares)
    if threads == 1:  # (on two, which thread takes what depends on their timing)
        assert [sum(walked for _partition, walked in share) for share in shares][:-1] == [4] * (30 // 4)  # full shares, then the rest
        assert any(len({partition for partition, walked in share if walked}) > 1 for share in shares)  # a share spanning partitions
    asyncio.run(world.keys.disk.on_stop())
