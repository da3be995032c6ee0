"""Versioned customer records: a newer worker reads every older layout (the fixtures under
tests/fixtures/state were written by older code and are never regenerated); an older worker
meeting a newer layout keeps the fields it does not know, in the Python model, and the
Rust kernel declines such a record to it rather than drop them."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from scoring import kernel
from scoring.contract import Event, TopicKind, decode_event
from scoring.health import ScoringParameters
from scoring.pipeline import step
from scoring.state import KNOWN_FIELDS, LAYOUT, LAYOUT_INDEX, decode_record, decode_state, encode_record, encode_state

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "state"
LAYOUT_1 = sorted((FIXTURES / "layout-1").glob("*.msgpack"))
LAYOUT_2 = sorted((FIXTURES / "layout-2").glob("*.msgpack"))
LAYOUT_3 = sorted((FIXTURES / "layout-3").glob("*.msgpack"))
LAYOUT_4 = sorted((FIXTURES / "layout-4").glob("*.msgpack"))
OLDER = [*LAYOUT_1, *LAYOUT_2, *LAYOUT_3, *LAYOUT_4]
#: The fields layout 5 appended, as a record without them reads: no category's first purchase
#: time, no score at a touchpoint.
LAYOUT_5_DEFAULTS = [[], -1.0]
#: The fields layout 4 appended, as a record without them reads: no CSM contact, pulse or invitation.
LAYOUT_4_DEFAULTS = [0, 0, 0, 0, 0, [], [], [], 0, [], [], *LAYOUT_5_DEFAULTS]
needs_kernel = pytest.mark.skipif(not kernel.available(), reason="the Rust kernel is not built")


def as_json(state: object) -> list:
    """The record as its fixture's JSON holds it (map keys as strings)."""
    return json.loads(json.dumps(msgspec.to_builtins(state)))


def test_the_fixtures_are_there() -> None:
    assert len(LAYOUT_1) == len(LAYOUT_2) == len(LAYOUT_3) == len(LAYOUT_4) == 6


@pytest.mark.parametrize("path", LAYOUT_1, ids=lambda path: path.stem)
def test_a_layout_1_record_reads_as_it_was_written_and_is_written_back_in_this_layout(path: Path) -> None:
    raw = path.read_bytes()
    expected = json.loads(path.with_suffix(".json").read_text())
    state, unknown = decode_record(raw)
    assert unknown == () and state.layout == 1
    read = as_json(state)  # positional, as stored
    assert len(expected) == 35 and read == [*expected, 1, None, *LAYOUT_4_DEFAULTS]  # every field of the old record, none lost or shifted
    again = encode_state(state)
    assert as_json(decode_state(again)) == [*expected, LAYOUT, None, *LAYOUT_4_DEFAULTS]


@pytest.mark.parametrize("path", LAYOUT_2, ids=lambda path: path.stem)
def test_a_layout_2_record_reads_as_it_was_written_and_is_written_back_in_this_layout(path: Path) -> None:
    expected = json.loads(path.with_suffix(".json").read_text())
    state, unknown = decode_record(path.read_bytes())
    assert unknown == () and state.layout == 2
    assert len(expected) == 36 and as_json(state) == [*expected, None, *LAYOUT_4_DEFAULTS]  # no exit reason: it was not kept
    assert as_json(decode_state(encode_state(state))) == [*expected[:LAYOUT_INDEX], LAYOUT, None, *LAYOUT_4_DEFAULTS]


@pytest.mark.parametrize("path", LAYOUT_3, ids=lambda path: path.stem)
def test_a_layout_3_record_reads_as_it_was_written_and_is_written_back_in_this_layout(path: Path) -> None:
    expected = json.loads(path.with_suffix(".json").read_text())
    state, unknown = decode_record(path.read_bytes())
    assert unknown == () and state.layout == 3
    assert len(expected) == 37 and as_json(state) == [*expected, *LAYOUT_4_DEFAULTS]  # the exit reason kept
    assert as_json(decode_state(encode_state(state))) == [*expected[:LAYOUT_INDEX], LAYOUT, expected[-1], *LAYOUT_4_DEFAULTS]


@pytest.mark.parametrize("path", LAYOUT_4, ids=lambda path: path.stem)
def test_a_layout_4_record_reads_as_it_was_written_and_is_written_back_in_this_layout(path: Path) -> None:
    expected = json.loads(path.with_suffix(".json").read_text())
    state, unknown = decode_record(path.read_bytes())
    assert unknown == () and state.layout == 4
    assert len(expected) == 48 and as_json(state) == [*expected, *LAYOUT_5_DEFAULTS]  # the relationship, invitations, e-mails kept
    assert as_json(decode_state(encode_state(state))) == [*expected[:LAYOUT_INDEX], LAYOUT, *expected[LAYOUT_INDEX + 1:], *LAYOUT_5_DEFAULTS]


def test_a_category_of_an_older_record_counts_as_bought_long_ago_and_a_new_one_at_its_time() -> None:
    from scoring.contract import Item, PurchaseCompleted

    state = decode_state(LAYOUT_4[1].read_bytes())  # cust-00004: three categories, none with its time
    known = list(state.categories)
    at = state.last_event_ms + 3_600_000

    def buy(category: str, when: int) -> None:
        item = Item(sku="s", quantity=1, unit_price=1.0, category=category)
        step(state, Event(event_id=f"p-{category}-{when}", type="purchase.completed", customer_id=state.customer_id, occurred_at_ms=when,
                          data=PurchaseCompleted(order_id="o", amount=1.0, currency="EUR", items=(item,))), ScoringParameters(), 32)

    buy(known[0], at)
    buy("brand-new", at)
    buy("brand-new", at - 5000)  # arrives late, happened earlier
    assert state.categories == [*known, "brand-new"]
    assert state.category_first_ms == [0] * len(known) + [at - 5000]


def usage_event(customer: str, at_ms: int) -> tuple[bytes, Event]:
    value = json.dumps({"event_id": "later-1", "type": "usage.session", "customer_id": customer, "occurred_at": at_ms,
                        "data": {"user_id": "u-new", "duration_seconds": 90}}).encode()
    event = decode_event(customer.encode(), value, TopicKind.USAGE, at_ms + 1000, 300_000)
    assert isinstance(event, Event)
    return value, event


@needs_kernel
@pytest.mark.parametrize("path", OLDER, ids=lambda path: f"{path.parent.name}-{path.stem}")
def test_the_kernel_reads_an_older_record_and_writes_what_the_model_writes(path: Path) -> None:
    raw = path.read_bytes()
    state = decode_state(raw)
    value, event = usage_event(state.customer_id, state.last_event_ms + 3_600_000)
    parameters = ScoringParameters()
    expected = step(state, event, parameters, 32, (TopicKind.USAGE, 0, 10**9), None)
    outcome, record, *_ = kernel.build(parameters, None).step(
        raw, state.customer_id, value, event.occurred_at_ms, kernel.due_ms(event.data, event.occurred_at_ms), (kernel.STREAM_INDEX[TopicKind.USAGE], 0, 10**9), 32, event.occurred_at_ms,
    )
    assert outcome == expected.outcome.value == "applied"
    assert record == encode_state(state)  # this layout from both


def newer_layout(raw: bytes) -> bytes:
    """A record as a future layout would write it: this layout's fields (layout one more) and two more."""
    fields = msgspec.msgpack.decode(raw)
    fields[LAYOUT_INDEX] = LAYOUT + 1
    return msgspec.msgpack.encode([*fields, {"future": [1, 2]}, "zz"])


def test_a_newer_layouts_fields_are_kept_when_this_code_writes_the_record_back() -> None:
    raw = encode_state(decode_state(LAYOUT_1[0].read_bytes()))
    newer = newer_layout(raw)
    state, unknown = decode_record(newer)
    assert state.layout == LAYOUT + 1 and len(unknown) == 2
    value, event = usage_event(state.customer_id, state.last_event_ms + 3_600_000)
    assert step(state, event, ScoringParameters(), 32, (TopicKind.USAGE, 0, 10**9), None).outcome.value == "applied"
    written = msgspec.msgpack.decode(encode_record(state, unknown))
    assert written[KNOWN_FIELDS:] == [{"future": [1, 2]}, "zz"]  # not dropped
    assert written[LAYOUT_INDEX] == LAYOUT + 1  # still a record of the newer layout
    this_layout = msgspec.msgpack.decode(encode_state(state))
    del written[LAYOUT_INDEX], this_layout[LAYOUT_INDEX]
    assert written[: KNOWN_FIELDS - 1] == this_layout


@needs_kernel
def test_the_kernel_declines_a_newer_layout_rather_than_drop_its_fields() -> None:
    newer = newer_layout(encode_state(decode_state(LAYOUT_1[0].read_bytes())))
    with pytest.raises(ValueError):
        kernel.build(ScoringParameters()).roundtrip(newer)


def short_column(raw: bytes) -> bytes:
    """The record with one day counter's column a day short: no record this code writes (a
    corrupt or foreign one), which indexing by day would run past."""
    state = decode_state(raw)
    assert state.counts.days
    state.counts.refunds_cents.pop()
    return encode_state(state)


def test_a_record_with_a_column_out_of_step_with_its_days_is_refused_by_both() -> None:
    """Refused when read, by the model and by the kernel alike: the worker treats it as unreadable
    (tests/stream/test_batching.py) instead of failing on it at every event and every export."""
    raw = short_column(LAYOUT_4[0].read_bytes())
    with pytest.raises(msgspec.ValidationError, match="not as long as the days"):
        decode_state(raw)
    with pytest.raises(msgspec.ValidationError, match="not as long as the days"):
        decode_record(raw)


@needs_kernel
def test_the_kernel_refuses_a_record_with_a_column_out_of_step_with_its_days() -> None:
    raw = short_column(LAYOUT_4[0].read_bytes())
    with pytest.raises(ValueError, match="not as long as the days"):
        kernel.build(ScoringParameters()).roundtrip(raw)
    with pytest.raises(ValueError, match="not as long as the days"):
        kernel._kernel.fleet_contribution(raw, 0, 30, 14.0)
