"""Issue 38: the due-time index. A sweep that rescores only the customers ``next_sweep_due``
says are due publishes exactly what rescoring every customer at every sweep does: the same
score lines, the same alerts, the same records at the end."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scoring.alerts import AlertParameters
from scoring.contract import Event
from scoring.health import ScoringParameters
from scoring.replay import Replayer
from scoring.state import DAY_MS, encode_state
import msgspec

from scoring.contract import decode_event
from stream.commands.generate import EventSynthesizer
from tests.unit.test_kernel import histories

HOUR_MS = 3_600_000
#: Every rule on, thresholds low: alerts at nearly every turn of the generated histories.
SENSITIVE = replace(
    AlertParameters(), sharp_drop=True, sharp_drop_points=5.0, payment_trouble=True, payment_failures_30d=1,
    payment_overdue_days=2.0, silence_gap_multiplier=2.0, silence_min_days=1.0, time_band_gap_multiplier=1.0,
    cooldown_hours=6.0, max_alerts_per_customer_30d=0, hysteresis_points=2.0,
)
DIGESTING = replace(SENSITIVE, digest_rules=("silence", "payment_trouble"), max_alerts_per_customer_30d=2)


def both_ways(events: list[Event], rules: AlertParameters | None, every_ms: int, min_change: float, ttl_ms: int, until_ms: int) -> tuple[Replayer, Replayer]:
    """The full scan and the due index over the same events; their outputs must be equal."""
    results = []
    outputs = []
    for due_index in (False, True):
        replayer = Replayer(ScoringParameters(), rules, 32, every_ms, min_change, ttl_ms, due_index=due_index)
        outputs.append(list(replayer.run(events, until_ms)))
        results.append(replayer)
    full, indexed = results
    assert outputs[1] == outputs[0]
    assert indexed.states.keys() == full.states.keys()
    for customer_id, state in full.states.items():
        assert encode_state(indexed.states[customer_id]) == encode_state(state), customer_id
    assert indexed.evicted == full.evicted
    assert indexed.swept <= full.swept
    return full, indexed


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=histories(),
    rules=st.sampled_from([None, AlertParameters(), SENSITIVE, DIGESTING]),
    every_ms=st.sampled_from([HOUR_MS, 6 * HOUR_MS, DAY_MS]),
    min_change=st.sampled_from([1.0, 0.25, 4.0]),
    ttl_days=st.sampled_from([0, 20]),
)
def test_the_due_index_publishes_what_a_full_scan_does(history: list, rules: AlertParameters | None, every_ms: int, min_change: float, ttl_days: int) -> None:
    events = sorted((event for _value, event, *_ in history), key=lambda event: event.occurred_at_ms)
    until = events[-1].occurred_at_ms + 150 * DAY_MS  # long after: decay, deadlines, evictions
    both_ways(events, rules, every_ms, min_change, ttl_days * DAY_MS, until)


def generated(customers: int, total: int, days: int, seed: int) -> list[Event]:
    end = 1_790_000_000_000
    synthesizer = EventSynthesizer(customers, seed, csm=True)
    events = []
    for item in synthesizer.timeline(total, end - days * DAY_MS, end):
        decoded = decode_event(item.customer_id.encode(), msgspec.json.encode(item.value), item.topic, end, 0)
        if isinstance(decoded, Event):
            events.append(decoded)
    return events


def test_on_a_generated_history_it_rescores_far_fewer_customers_for_the_same_output() -> None:
    events = generated(300, 12_000, 120, seed=5)
    until = events[-1].occurred_at_ms + 60 * DAY_MS
    for rules in (AlertParameters(), SENSITIVE):
        full, indexed = both_ways(events, rules, DAY_MS, 1.0, 0, until)
        assert indexed.swept < full.swept, (indexed.swept, full.swept)
