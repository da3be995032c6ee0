"""Issue 38: the fleet export's recount in the Rust kernel (native/src/fleet.rs) against the
model it must equal: ``scoring.fleet_sums.contribution`` and ``unchanged_until``, and
``stream.worker.fleet.customer_kpis_json``, on records the pipeline wrote, at many moments
and for several periods; and FleetExport's totals and KPI rows with and without the kernel."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scoring import kernel
from scoring.alerts import AlertParameters
from scoring.churn import ChurnModel
from scoring.fleet_sums import contribution, decode_counted, encode_counted, unchanged_until
from scoring.health import ScoringParameters
from scoring.pipeline import step
from scoring.contract import decode_event
from scoring.state import DAY_MS, decode_state, encode_state, new_state
from stream.commands.generate import EventSynthesizer
from stream.worker.fleet import FleetOptions, customer_kpis_json
from tests.unit.test_kernel import T0, histories, needs_kernel

PERIODS = st.sampled_from([(30, 14.0), (7, 2.5), (1, 0.5), (90, 30.0)])
KEY_FEATURES = ("reports", "api")
CHURN_MODEL = ChurnModel(0.4, (-3.0, -1.0, 0.5, -0.2, -0.9, -1.1, 1.3, 0.6, -0.35), 45.0)


def records_of(history: list, parameters: ScoringParameters) -> list[bytes]:
    """The records the pipeline writes for a history (with published scores and CSM contacts)."""
    stored: dict[str, bytes] = {}
    for _value, event, topic, partition, offset in history:
        previous = stored.get(event.customer_id)
        state = decode_state(previous) if previous is not None else new_state(event.customer_id)
        step(state, event, parameters, 32, (topic, partition, offset), AlertParameters())
        stored[event.customer_id] = encode_state(state)
    return list(stored.values())


def generated_records(customers: int, events: int, days: int, seed: int, parameters: ScoringParameters) -> dict[str, bytes]:
    """The records of the generator's mix (``days`` up to T0) as the pipeline writes them."""
    stored: dict[str, bytes] = {}
    for generated in EventSynthesizer(customers, seed=seed).timeline(events, T0 - days * DAY_MS, T0):
        event = decode_event(generated.customer_id.encode(), msgspec.json.encode(generated.value), generated.topic, T0 + 1, 300_000)
        previous = stored.get(event.customer_id)
        state = decode_state(previous) if previous is not None else new_state(event.customer_id)
        step(state, event, parameters, 32, None, AlertParameters())
        stored[event.customer_id] = encode_state(state)
    return stored


def assert_same_recount(native: Any, record: bytes, at_ms: int, period_days: int, response_days: float, parameters: ScoringParameters) -> None:
    state = decode_state(record)
    assert kernel._kernel.fleet_contribution(record, at_ms, period_days, response_days) == contribution(state, at_ms, period_days, response_days)
    assert kernel._kernel.fleet_unchanged_until(record, at_ms, period_days, response_days) == unchanged_until(state, at_ms, period_days, response_days)
    # What the RocksDB store keeps of it: the same bytes, read back to the same contribution.
    due, counted, _row = native.fleet_recount_counted(kernel._kernel.FleetSums(period_days, response_days, []), None, record, at_ms, False, False)
    assert counted == encode_counted(contribution(state, at_ms, period_days, response_days))
    assert decode_counted(counted) == contribution(state, at_ms, period_days, response_days) and due == unchanged_until(state, at_ms, period_days, response_days)
    for ltv in (False, True):
        options = FleetOptions(period_days, response_days, KEY_FEATURES, parameters=parameters if ltv else None)
        expected = customer_kpis_json(state, at_ms, options)
        assert native.fleet_kpis_json(record, at_ms, list(KEY_FEATURES), response_days, ltv) == expected, (at_ms - T0) / DAY_MS


@needs_kernel
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories(), period=PERIODS, offsets=st.lists(st.integers(-24 * 130, 24 * 200), min_size=1, max_size=6), calibrated=st.booleans())
def test_any_record_gives_the_same_contribution_moment_and_kpi_row(history: list, period: tuple, offsets: list, calibrated: bool) -> None:
    parameters = ScoringParameters(key_features=("reports",), churn_model=CHURN_MODEL if calibrated else None)
    native = kernel.build(parameters)
    period_days, response_days = period
    for record in records_of(history, parameters):
        for hours in offsets:
            assert_same_recount(native, record, T0 + hours * 3_600_000 + 1234, period_days, response_days, parameters)


@needs_kernel
def test_the_generators_mix_gives_the_same_contribution_moment_and_kpi_row() -> None:
    """Every kind of event of the generator's mix, 300 customers over 60 days, read at moments
    from the middle of the history to four months after it."""
    parameters = ScoringParameters(key_features=KEY_FEATURES)
    native = kernel.build(parameters)
    for record in generated_records(300, 12_000, 60, 5, parameters).values():
        for days in (-20, 0, 1, 31, 95, 120):
            assert_same_recount(native, record, T0 + days * DAY_MS + 4321, 30, 14.0, parameters)


@needs_kernel
def test_fleet_recount_moves_the_sums_and_says_when_the_customer_is_next_due() -> None:
    parameters = ScoringParameters(key_features=KEY_FEATURES)
    native = kernel.build(parameters)
    stored = generated_records(40, 1_500, 40, 9, parameters)
    sums = kernel._kernel.FleetSums(30, 14.0, list(KEY_FEATURES))
    expected: dict[str, int] = {}
    for record in stored.values():
        old_due, new_due, row = native.fleet_recount(sums, None, 0, record, False, T0, True, True, True)
        state = decode_state(record)
        assert old_due is None and new_due == unchanged_until(state, T0, 30, 14.0)
        assert row == (state.customer_id, customer_kpis_json(state, T0, FleetOptions(30, 14.0, KEY_FEATURES, parameters=parameters)))
        for key, value in contribution(state, T0, 30, 14.0).items():
            expected[key] = expected.get(key, 0) + value
    assert sums.as_dict() == {key: value for key, value in expected.items() if value}
    # Ten days later every customer recounted by time alone: its old part leaves, its new part comes.
    later = T0 + 10 * DAY_MS
    for record in stored.values():
        state = decode_state(record)
        old_due, new_due, row = native.fleet_recount(sums, record, T0, record, True, later, True, False, False)
        assert (old_due, new_due, row) == (unchanged_until(state, T0, 30, 14.0), unchanged_until(state, later, 30, 14.0), None)
        for key, value in contribution(state, T0, 30, 14.0).items():
            expected[key] -= value
        for key, value in contribution(state, later, 30, 14.0).items():
            expected[key] = expected.get(key, 0) + value
    assert sums.as_dict() == {key: value for key, value in expected.items() if value}
    # Erased: only the old part leaves. A record the kernel cannot read changes nothing.
    erased = next(iter(stored.values()))
    before = sums.as_dict()
    with pytest.raises(ValueError):
        native.fleet_recount(sums, erased, later, b"\xc1 not a record", False, later, True, True, False)
    assert sums.as_dict() == before
    assert native.fleet_recount(sums, erased, later, None, False, later, False, True, False) == (None, None, None)
    for key, value in contribution(decode_state(erased), later, 30, 14.0).items():
        expected[key] -= value
    assert sums.as_dict() == {key: value for key, value in expected.items() if value}


@needs_kernel
def test_the_counted_recount_takes_out_what_either_side_counted() -> None:
    """The RocksDB store's recount (fleet_recount_counted): what the kernel counted, or what the
    model counted (a record the kernel could not read), is taken out exactly; a band outside
    the three too. Bytes it cannot read, as a record or as a contribution, change nothing."""
    parameters = ScoringParameters(key_features=KEY_FEATURES)
    native = kernel.build(parameters)
    stored = list(generated_records(30, 1_000, 40, 3, parameters).values())
    sums = kernel._kernel.FleetSums(30, 14.0, list(KEY_FEATURES))
    counted = [native.fleet_recount_counted(sums, None, record, T0, True, True) for record in stored]
    state = decode_state(stored[0])
    options = FleetOptions(30, 14.0, KEY_FEATURES, parameters=parameters)
    assert counted[0] == (unchanged_until(state, T0, 30, 14.0), encode_counted(contribution(state, T0, 30, 14.0)), (state.customer_id, customer_kpis_json(state, T0, options)))
    later = T0 + 10 * DAY_MS
    for record, (_due, kept, _row) in zip(stored, counted):
        assert native.fleet_recount_counted(sums, kept, record, later, False, False)[2] is None
    expected: dict[str, int] = {}
    for record in stored:
        for key, value in contribution(decode_state(record), later, 30, 14.0).items():
            expected[key] = expected.get(key, 0) + value
    assert sums.as_dict() == {key: value for key, value in expected.items() if value}
    # Counted by the model, with an older model's band: the kernel takes it out by its name.
    by_model = {**contribution(state, later, 30, 14.0), "bands.legacy": 1}
    for band in ("healthy", "at_risk", "critical"):
        by_model.pop(f"bands.{band}", None)
    assert decode_counted(encode_counted(by_model)) == by_model
    before = sums.as_dict()
    for unreadable in (b"\xc1", encode_counted(by_model)[:-3], encode_counted(by_model) + b"\x00"):
        with pytest.raises(ValueError):
            native.fleet_recount_counted(sums, unreadable, stored[0], later, False, False)
        with pytest.raises(ValueError):
            decode_counted(unreadable)
    with pytest.raises(ValueError):
        native.fleet_recount_counted(sums, encode_counted(by_model), b"\xc1 not a record", later, False, False)
    assert sums.as_dict() == before
    assert native.fleet_recount_counted(sums, encode_counted(by_model), None, later, True, True) == (None, None, None)
    removed = dict(before)
    for key, value in by_model.items():
        removed[key] = removed.get(key, 0) - value
    assert sums.as_dict() == {key: value for key, value in removed.items() if value}


@needs_kernel
def test_a_chunk_recounted_in_one_call_equals_one_call_each() -> None:
    """fleet_recount_counted_many (the RocksDB export's due walk): the same results and sums
    as fleet_recount_counted customer by customer; an item it cannot read is None and changes
    nothing (the caller recounts it with the model), the others are recounted all the same."""
    parameters = ScoringParameters(key_features=KEY_FEATURES)
    native = kernel.build(parameters)
    stored: list[bytes | None] = list(generated_records(40, 1_500, 40, 3, parameters).values())
    one_by_one = kernel._kernel.FleetSums(30, 14.0, list(KEY_FEATURES))
    chunk = kernel._kernel.FleetSums(30, 14.0, list(KEY_FEATURES))
    first = [native.fleet_recount_counted(one_by_one, None, record, T0, True, True) for record in stored]
    assert native.fleet_recount_counted_many(chunk, [None] * len(stored), stored, T0, True, True) == first
    assert chunk.as_dict() == one_by_one.as_dict()
    later = T0 + 12 * DAY_MS
    counted = [kept for _due, kept, _row in first]
    stored[3], counted[5], stored[7] = b"\xc1 not a record", b"\xc1", None  # unreadable, unreadable, erased
    results = native.fleet_recount_counted_many(chunk, counted, stored, later, True, False)
    assert results[3] is None and results[5] is None and results[7] == (None, None, None)
    for index, (old, new) in enumerate(zip(counted, stored)):
        if index not in (3, 5):
            assert results[index] == native.fleet_recount_counted(one_by_one, old, new, later, True, False)
    assert chunk.as_dict() == one_by_one.as_dict()
    with pytest.raises(ValueError):
        native.fleet_recount_counted_many(chunk, counted[:2], stored[:3], later, True, False)
    assert chunk.as_dict() == one_by_one.as_dict()
