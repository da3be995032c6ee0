"""The worker's sweep with the due index (stream/processing/sweep.py) visits only the customers
written since the last sweep and those due, and publishes what visiting every customer does,
whatever the events between sweeps, a restore in between, or a sweep period the index did
not plan for."""

from __future__ import annotations

import asyncio
import copy
import tempfile
from pathlib import Path
from typing import Any, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scoring import kernel
from scoring.alerts import AlertParameters
from scoring.health import ScoringParameters, band_for, score_state
from scoring.pipeline import step
from scoring.state import DAY_MS, decode_state, encode_state, new_state
from stream.processing.sweep import Sweeper, SweepTick
from stream.settings import load_settings
from stream.state.keys import KeysByPartition
from stream.state.table import customer_state_table
from stream.worker.app import faust_app
from tests.unit.test_due import SENSITIVE
from tests.unit.test_kernel import histories

HOUR_MS = 3_600_000


class Worker:
    """A sweeper and the records of its partitions, without Kafka: events and ticks in order."""

    def __init__(self, due_index: bool, rules: AlertParameters, in_kernel: bool = False) -> None:
        self.keys = KeysByPartition()
        self.rules = rules
        configured = load_settings(sweep_due_index=due_index, sweep_interval_seconds=3600, state_ttl_days=25)
        native = kernel.build_where_possible(ScoringParameters(), rules, in_kernel)  # the due search in Rust, as the worker runs it
        self.sweeper = Sweeper(configured, ScoringParameters(), rules, self.keys, publisher=None, sweep_topic=None, clock=lambda: 0.0, native=native)  # type: ignore[arg-type]
        self.states: dict[bytes, object] = {}
        self.visited = 0

    def apply(self, event: object, partition: int) -> list:
        key = event.customer_id.encode()  # type: ignore[attr-defined]
        state = self.states.setdefault(key, new_state(event.customer_id))  # type: ignore[attr-defined]
        result = step(state, event, ScoringParameters(), 32, rules=self.rules)  # type: ignore[arg-type]
        self.keys.written(partition, key, None)
        return [result.publish, result.alerts.raised]

    def sweep(self, at_ms: int) -> list:
        published = []
        for partition in sorted(self.keys):
            chunk, after = self.sweeper._chunk(partition, at_ms, b"")
            while True:
                for key in chunk:
                    self.visited += 1
                    expired: list[bytes] = []
                    result = self.sweeper.swept(self.states[key], at_ms, key, expired, partition)  # type: ignore[arg-type]
                    if expired:
                        del self.states[key]
                        self.keys[partition].discard(key)
                    elif result is not None and (result.publish is not None or result.alerts.raised):
                        published.append((key, result.publish, result.alerts.raised))
                if after is None:
                    break
                chunk, after = self.sweeper._chunk(partition, at_ms, after)
        return published


def side_by_side(
    events: list, full: Worker, other: Any, jitter: int, between: Callable[[int], None] = lambda ticks: None,
    days_after: int = 40, quiet_step: int = DAY_MS // 4,
) -> None:
    """The events and sweeps 1-3 hours apart at random (the worker's timer is wall time) to both
    workers in order, then a sweep every ``quiet_step``; each sweep must publish the same.
    ``between(ticks)`` runs before each sweep (a commit, a restore, a restart)."""
    tick = events[0].occurred_at_ms // HOUR_MS * HOUR_MS + HOUR_MS
    end = events[-1].occurred_at_ms + days_after * DAY_MS
    pending, ticks = list(events), 0
    while tick < end:
        while pending and pending[0].occurred_at_ms < tick:
            event = pending.pop(0)
            partition = sum(event.customer_id.encode()) % 2
            assert full.apply(event, partition) == other.apply(copy.copy(event), partition)
        between(ticks)
        assert sorted(other.sweep(tick), key=lambda item: item[0]) == sorted(full.sweep(tick), key=lambda item: item[0])
        ticks += 1
        tick += HOUR_MS * (1 + (ticks * 7 + jitter) % 3) if pending else quiet_step


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=histories(), rules=st.sampled_from([AlertParameters(), SENSITIVE]), restore_at=st.integers(0, 40), jitter=st.integers(0, 50),
    in_kernel=st.booleans(),
)
def test_the_index_sweep_publishes_what_visiting_everyone_does(history: list, rules: AlertParameters, restore_at: int, jitter: int, in_kernel: bool) -> None:
    events = sorted((event for _value, event, *_ in history), key=lambda event: event.occurred_at_ms)
    full, indexed = Worker(False, rules), Worker(True, rules, in_kernel)

    def restore(ticks: int) -> None:
        if ticks == restore_at:  # the partitions read back from the changelog: placed in full again
            indexed.keys.mark_restored(0)
            indexed.keys.mark_restored(1)

    side_by_side(events, full, indexed, jitter, restore)
    assert {key: encode_state(state) for key, state in indexed.states.items()} == {key: encode_state(state) for key, state in full.states.items()}  # type: ignore[arg-type]
    assert indexed.visited <= full.visited


class StoredWorker:
    """The same sweeper over the RocksDB store (stream/state/disk_index.py): records written
    pending, brought to disk by commits at random moments (each with its place markers), a
    sweep walked tick by tick through its phases, and a restart (close, reopen) in between."""

    def __init__(self, rules: AlertParameters, directory: Path, chunk_size: int) -> None:
        self.rules = rules
        self.directory = directory
        self.chunk_size = chunk_size
        self.visited = 0
        self.open()

    def open(self) -> None:
        configured = load_settings(sweep_due_index=True, sweep_interval_seconds=3600, state_ttl_days=25, sweep_chunk_size=self.chunk_size,
                                   state_store="rocksdb", data_dir=self.directory)
        self.keys = KeysByPartition()
        self.table = customer_state_table(faust_app(configured), configured, self.keys)
        self.store = self.table.data
        self.sweeper = Sweeper(configured, ScoringParameters(), self.rules, self.keys, publisher=None, sweep_topic=None, clock=lambda: 0.0)  # type: ignore[arg-type]

    def restart(self) -> None:
        self.commit()
        asyncio.run(self.store.on_stop())
        self.open()

    def commit(self) -> None:
        """What the offset commit does once the changelog is delivered: the pending writes to disk."""
        sent = {partition: list(self.store.partition(partition).pending.items()) for partition in (0, 1)}
        self.store.persist(sent)

    def state(self, key: bytes, partition: int) -> object:
        stored = self.store.partition(partition).get(key)
        return decode_state(stored) if stored is not None else None

    def write(self, key: bytes, partition: int, state: object) -> None:
        records = self.store.partition(partition)
        encoded = encode_state(state)  # type: ignore[arg-type]
        if records.get(key) != encoded:  # the worker writes a record back only when a step changed it
            records[key] = encoded

    def apply(self, event: object, partition: int) -> list:
        key = event.customer_id.encode()  # type: ignore[attr-defined]
        state = self.state(key, partition) or new_state(event.customer_id)  # type: ignore[attr-defined]
        result = step(state, event, ScoringParameters(), 32, rules=self.rules)  # type: ignore[arg-type]
        self.write(key, partition, state)
        self.keys.written(partition, key, None)
        return [result.publish, result.alerts.raised]

    def sweep(self, at_ms: int) -> list:
        published = []
        for partition in (0, 1):
            tick = SweepTick(at_ms, 0.0)
            while True:
                chunk = self.sweeper._next_chunk(partition, tick)
                for key, entry in zip(chunk.keys, chunk.entries):
                    self.visited += 1
                    expired: list[bytes] = []
                    state = self.state(key, partition)
                    result = self.sweeper.swept(state, at_ms, key, expired, partition, chunk.placing, entry)  # type: ignore[arg-type]
                    if expired:
                        self.store.partition(partition).pop(key)
                        continue
                    self.write(key, partition, state)
                    if result is not None and (result.publish is not None or result.alerts.raised):
                        published.append((key, result.publish, result.alerts.raised))
                if chunk.next_after is None:
                    break
                after = chunk.next_after.hex() if chunk.next_phase == "due" else chunk.next_after.decode()
                tick = SweepTick(at_ms, 0.0, after, chunk.next_phase)
        return sorted(published, key=lambda item: item[0])

    def states(self) -> dict[bytes, bytes]:
        return {key: self.store.partition(partition)[key] for partition in (0, 1) for key in self.keys.walk(partition)}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories(), rules=st.sampled_from([AlertParameters(), SENSITIVE]), restart_at=st.integers(0, 40), jitter=st.integers(0, 50),
       commits=st.integers(0, 3), chunk_size=st.sampled_from([1, 3, 500]))
def test_the_index_on_disk_publishes_what_visiting_everyone_does(
    history: list, rules: AlertParameters, restart_at: int, jitter: int, commits: int, chunk_size: int
) -> None:
    """Place markers and due entries on disk: the same scores, alerts and records as a full scan,
    with commits before some sweeps only (customers written since are found in memory) and a
    restart (the indexes read back from disk, nothing placed in full again)."""
    events = sorted((event for _value, event, *_ in history), key=lambda event: event.occurred_at_ms)
    with tempfile.TemporaryDirectory() as directory:
        full, stored = Worker(False, rules), StoredWorker(rules, Path(directory), chunk_size)

        def commit_or_restart(ticks: int) -> None:
            if ticks == restart_at:
                stored.restart()
            if (ticks + commits) % 3 != 0:  # else the sweep finds the writes still pending
                stored.commit()

        side_by_side(events, full, stored, jitter, commit_or_restart)
        assert stored.states() == {key: encode_state(state) for key, state in full.states.items()}  # type: ignore[arg-type]
        assert stored.visited <= 2 * full.visited + 10
        asyncio.run(stored.store.on_stop())


def test_a_score_at_a_band_edge_keeps_its_band_through_floating_point_noise() -> None:
    """Found by the test above: a customer whose only component (sentiment, decaying toward its
    neutral 50) sat on the healthy edge had a composite of 49.99999999999999 one hour and
    50.00000000000001 the next; the band followed that noise (healthy, at risk, healthy with
    the same 50.0 shown), so the full scan published band flips the due index rightly did not
    foresee. The band is read from the score as shown (model revision 6)."""
    from scoring.contract import CheckoutAbandoned, Event, PurchaseCompleted, PurchaseRefunded, SurveyAnswered

    at = 1_790_000_000_000

    def event(kind: str, data: object, occurred_at_ms: int = at, event_id: str = "evt-0") -> Event:
        return Event(event_id=event_id, type=kind, customer_id="cust-1", occurred_at_ms=occurred_at_ms, data=data)  # type: ignore[arg-type]

    completed = PurchaseCompleted(order_id="a", amount=0.0, currency="EUR", items=())
    refunded = PurchaseRefunded(order_id="a", amount=0.0)
    events = [
        event("survey.answered", SurveyAnswered(survey="csat", score=3.0), at - 140_400_000, "evt-1"),
        event("purchase.refunded", refunded, at - 54_000_000, "evt-2"),
        event("checkout.abandoned", CheckoutAbandoned()), *[event("purchase.completed", completed)] * 4, *[event("purchase.refunded", refunded)] * 2,
        event("purchase.completed", completed), event("checkout.abandoned", CheckoutAbandoned()), *[event("purchase.completed", completed)] * 2,
    ]
    full, indexed = Worker(False, AlertParameters()), Worker(True, AlertParameters())
    side_by_side(events, full, indexed, 0, days_after=20, quiet_step=HOUR_MS)  # (evicted after state_ttl_days, 25)
    state = full.states[b"cust-1"]
    for hour in range(48):
        health = score_state(state, at + hour * HOUR_MS, ScoringParameters())  # type: ignore[arg-type]
        assert health is not None and health.band == band_for(health.score, ScoringParameters())
