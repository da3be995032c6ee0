"""Issue 38: the fleet totals kept incrementally. A customer's contribution and KPIs do not move
before ``unchanged_until`` (but for the ages, which ``aged_kpis`` moves exactly), and integer
sums of contributions give back the totals a full pass computes."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scoring.fleet_sums import add_to, aged_kpis, contribution, empty_sums, remove_from, totals_from, unchanged_until
from scoring.kpis import FleetTotals, customer_kpis
from scoring.state import DAY_MS, apply_event, new_state
from tests.unit.test_kernel import T0, histories

PERIODS = st.sampled_from([(30, 14.0), (7, 2.5), (1, 0.5)])


def states_of(history: list) -> list:
    states: dict[str, object] = {}
    for _value, event, _topic, _partition, _offset in history:
        state = states.setdefault(event.customer_id, new_state(event.customer_id))
        apply_event(state, event)  # type: ignore[arg-type]
    return list(states.values())


def kpis_at(state: object, at_ms: int, response_days: float) -> dict:
    return dataclasses.asdict(customer_kpis(state, at_ms, ("reports", "api"), response_days))  # type: ignore[arg-type]


def same_kpis(expected: dict, got: dict) -> bool:
    return all(got[name] == pytest.approx(value, abs=1e-9) if isinstance(value, float) else got[name] == value for name, value in expected.items())


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories(), period=PERIODS, offset_hours=st.integers(-24 * 130, 0))
def test_nothing_moves_before_the_moment_unchanged_until_gives(history: list, period: tuple, offset_hours: int) -> None:
    """Walks from moment to moment over 400 days: each stretch ends as it began (a change
    the function missed inside a stretch shows at its end)."""
    period_days, response_days = period
    for state in states_of(history):
        at = T0 + offset_hours * 3_600_000 + 1234
        stretches = 0
        while at < T0 + 400 * DAY_MS:
            until = unchanged_until(state, at, period_days, response_days)  # type: ignore[arg-type]
            assert until is None or until > at
            end = min(until if until is not None else T0 + 400 * DAY_MS, T0 + 400 * DAY_MS) - 1
            kpis = kpis_at(state, at, response_days)
            assert contribution(state, end, period_days, response_days) == contribution(state, at, period_days, response_days), (end - T0) / DAY_MS  # type: ignore[arg-type]
            assert same_kpis(kpis_at(state, end, response_days), aged_kpis(kpis, at, end)), (end - T0) / DAY_MS
            at, stretches = end + 1, stretches + 1
        assert stretches < 2_000


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories(), period=PERIODS, offset_days=st.integers(-5, 150))
def test_the_sums_of_contributions_are_the_totals_of_a_full_pass(history: list, period: tuple, offset_days: int) -> None:
    period_days, response_days = period
    at = T0 + offset_days * DAY_MS
    states = states_of(history)
    full = FleetTotals(at, period_days, response_days)
    sums = empty_sums()
    for state in states:
        full.add(state)  # type: ignore[arg-type]
        add_to(sums, contribution(state, at, period_days, response_days))  # type: ignore[arg-type]
    rebuilt = totals_from(sums, at, period_days, response_days)
    for item in dataclasses.fields(FleetTotals):
        expected, got = getattr(full, item.name), getattr(rebuilt, item.name)
        if isinstance(expected, dict):
            assert set(got) >= set(expected) and all(got[key] == pytest.approx(value, rel=1e-9, abs=1e-6) for key, value in expected.items()), item.name
        else:
            assert got == pytest.approx(expected, rel=1e-9, abs=1e-6), item.name
    # Removing every contribution leaves nothing behind, exactly.
    for state in states:
        remove_from(sums, contribution(state, at, period_days, response_days))  # type: ignore[arg-type]
    assert set(sums.values()) <= {0}


def test_a_customer_silent_for_long_enough_never_changes_with_time_again() -> None:
    from scoring.contract import Event, UsageSession

    state = new_state("acme")
    apply_event(state, Event(event_id="e", type="usage.session", customer_id="acme", occurred_at_ms=T0, data=UsageSession("u", 60)))
    assert unchanged_until(state, T0 + 60_000, 30, 14.0) == (T0 // DAY_MS + 1) * DAY_MS  # DAU moves at midnight
    assert unchanged_until(state, T0 + 400 * DAY_MS, 30, 14.0) is None
