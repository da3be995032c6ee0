"""The worker's sweep with the due index (stream/processing/sweep.py) visits only the customers
written since the last sweep and those due, and publishes what visiting every customer does,
whatever the events between sweeps, a restore in between, or a sweep period the index did
not plan for."""

from __future__ import annotations

import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scoring.alerts import AlertParameters
from scoring.health import ScoringParameters
from scoring.pipeline import step
from scoring.state import DAY_MS, encode_state, new_state
from stream.processing.sweep import Sweeper
from stream.settings import load_settings
from stream.state.keys import KeysByPartition
from tests.unit.test_due import SENSITIVE
from tests.unit.test_kernel import histories

HOUR_MS = 3_600_000


class Worker:
    """A sweeper and the records of its partitions, without Kafka: events and ticks in order."""

    def __init__(self, due_index: bool, rules: AlertParameters) -> None:
        self.keys = KeysByPartition()
        self.rules = rules
        configured = load_settings(sweep_due_index=due_index, sweep_interval_seconds=3600, state_ttl_days=25)
        self.sweeper = Sweeper(configured, ScoringParameters(), rules, self.keys, publisher=None, sweep_topic=None, clock=lambda: 0.0)  # type: ignore[arg-type]
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


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories(), rules=st.sampled_from([AlertParameters(), SENSITIVE]), restore_at=st.integers(0, 40), jitter=st.integers(0, 50))
def test_the_index_sweep_publishes_what_visiting_everyone_does(history: list, rules: AlertParameters, restore_at: int, jitter: int) -> None:
    events = sorted((event for _value, event, *_ in history), key=lambda event: event.occurred_at_ms)
    full, indexed = Worker(False, rules), Worker(True, rules)
    tick = events[0].occurred_at_ms // HOUR_MS * HOUR_MS + HOUR_MS
    end = events[-1].occurred_at_ms + 40 * DAY_MS
    pending = list(events)
    ticks = 0
    while tick < end:
        while pending and pending[0].occurred_at_ms < tick:
            event = pending.pop(0)
            partition = sum(event.customer_id.encode()) % 2
            assert full.apply(event, partition) == indexed.apply(copy.copy(event), partition)
        assert indexed.sweep(tick) == full.sweep(tick)
        ticks += 1
        if ticks == restore_at:  # the partitions read back from the changelog: placed in full again
            indexed.keys.mark_restored(0)
            indexed.keys.mark_restored(1)
        # Sweeps 1-3 hours apart at random (the worker's timer is wall time).
        tick += HOUR_MS * (1 + (ticks * 7 + jitter) % 3) if pending else DAY_MS // 4
    assert {key: encode_state(state) for key, state in indexed.states.items()} == {key: encode_state(state) for key, state in full.states.items()}  # type: ignore[arg-type]
    assert indexed.visited <= full.visited
