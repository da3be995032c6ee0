"""The Rust kernel (scoring/kernel.py, native/) against the model it must equal.

Differential: the same validated events go through ``scoring.pipeline.step`` with the
alert rules and ``scoring.output``'s messages, and through the kernel; the records, the
score messages and the alert messages must come out byte for byte the same, and the
scores field for field, to the last bit of every float.
"""

from __future__ import annotations

import math
import os
from collections import Counter
import shutil
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scoring import kernel
from scoring.alerts import AlertParameters
from scoring.churn import ChurnModel
from scoring.compiled import PURE_PYTHON_VARIABLE
from scoring.contract import (
    LATEST_MS,
    MAX_DURATION_SECONDS,
    MAX_COMMENT,
    MAX_ITEMS,
    MAX_MONEY,
    MAX_QUANTITY,
    MAX_SURVEY_SCALE,
    Event,
    RejectReason,
    TopicKind,
    UsageSession,
    decode_event,
)
from scoring.health import ScoringParameters, score_state
from scoring.output import alert_message, encode_json, health_message
from scoring.due import DueSearch, next_sweep_due
from scoring.pipeline import due_for_sweep, step, sweep
from scoring.state import COUNTER_MAX, COUNTERS, DAY_MS, decode_state, encode_state, new_state
from stream.commands.generate import EventSynthesizer

T0 = 1_790_000_000_000
DEDUP_CAPACITY = 32
needs_kernel = pytest.mark.skipif(not kernel.available(), reason="the Rust kernel is not built")


@pytest.mark.skipif(bool(os.environ.get(PURE_PYTHON_VARIABLE)), reason=f"{PURE_PYTHON_VARIABLE} is set")
def test_the_kernel_is_built_where_cargo_is() -> None:
    # scripts/setup.sh installs with cargo present (this project's machines have it).
    if shutil.which("cargo") is None:
        pytest.skip("no Rust toolchain on this machine")
    assert kernel.available()


def score_row(health: Any) -> tuple:
    """A HealthScore as the kernel's ``score`` returns it."""
    return (
        health.score,
        health.band,
        health.churn_risk,
        [(name, c.score, c.weight, c.contribution) for name, c in health.components.items()],
        health.as_of_ms,
        health.confidence,
        list(health.changes.items()),
    )


#: (sweep_min_score_change, sweep period, state_ttl) the due search is compared with: the
#: worker's defaults (hourly, no eviction), a daily sweep that evicts after 180 days, and the
#: replay's replay_sweep_scores = "band_changes" (an infinite minimum change).
DUE_CASES = [(1.0, 3_600_000, 0), (5.0, DAY_MS, 180 * DAY_MS), (math.inf, DAY_MS, 0)]


def assert_same_due(native: Any, record: bytes, at_ms: int, parameters: ScoringParameters, rules: AlertParameters | None) -> None:
    """The kernel's due search gives the model's moment, to the millisecond."""
    state = decode_state(record)
    for min_change, period_ms, ttl_ms in DUE_CASES:
        expected = next_sweep_due(state, at_ms, parameters, rules, min_change, period_ms, ttl_ms, period_ms)
        assert native.next_sweep_due(record, at_ms, min_change, period_ms, ttl_ms, period_ms) == expected, (at_ms, min_change, state)


#: Every rule on (the defaults leave two off), with the per-customer budget.
ALL_RULES = AlertParameters(sharp_drop=True, payment_trouble=True, max_alerts_per_customer_30d=2)


class Both:
    """Runs every event through the model and the kernel, each with its own store, and compares."""

    def __init__(self, parameters: ScoringParameters, rules: AlertParameters | None = ALL_RULES) -> None:
        self.parameters = parameters
        self.rules = rules
        self.kernel = kernel.build(parameters, rules)
        self.model_store: dict[bytes, bytes] = {}
        self.kernel_store: dict[bytes, bytes] = {}
        self.published = 0
        self.alerts = 0
        self.digests = 0
        self.suppressed = 0
        self.rules_raised: Counter[str] = Counter()
        self.actions = 0

    def apply(self, value: bytes, event: Event, topic: TopicKind, partition: int, offset: int) -> None:
        key = event.customer_id.encode()
        stored = self.model_store.get(key)
        state = decode_state(stored) if stored is not None else new_state(event.customer_id)
        expected = step(state, event, self.parameters, DEDUP_CAPACITY, (topic, partition, offset), self.rules)
        self.model_store[key] = encode_state(state)
        computed_at_ms = event.occurred_at_ms + 1234  # the worker stamps its clock; any time will do

        outcome, record, published, raised, suppressed = self.kernel.step(
            self.kernel_store.get(key),
            event.customer_id,
            value,
            event.occurred_at_ms,
            kernel.due_ms(event.data, event.occurred_at_ms),
            (kernel.STREAM_INDEX[topic], partition, offset),
            DEDUP_CAPACITY,
            computed_at_ms,
        )
        self.kernel_store[key] = record
        assert outcome == expected.outcome.value, event
        assert record == self.model_store[key], (event, decode_state(record), state)
        version = self.parameters.model_version
        if expected.publish is None:
            assert published is None, event
        else:
            self.published += 1
            assert published is not None, event
            message = encode_json(health_message(event.customer_id, expected.publish, computed_at_ms, version, event.event_id))
            assert published == (message, expected.publish.score, expected.publish.churn_risk), event
        assert raised == [
            (alert.alert_id, alert.rule, alert.severity, encode_json(alert_message(alert, computed_at_ms, version)))
            for alert in expected.alerts.raised
        ], event
        assert suppressed == list(expected.alerts.suppressed), event
        self.alerts += len(raised)
        self.rules_raised.update(alert.rule for alert in expected.alerts.raised)
        self.actions += sum(1 for alert in expected.alerts.raised if alert.recommended_action)
        self.digests += sum(1 for alert in expected.alerts.raised if alert.rule == "digest")
        self.suppressed += len(suppressed)
        assert_same_due(self.kernel, record, event.occurred_at_ms, self.parameters, self.rules)
        # The kernel scores a stored record at any time as the model does.
        if expected.publish is not None:
            later = event.occurred_at_ms + 5 * DAY_MS
            again = decode_state(record)
            previous = again.published
            model_later = score_state(again, later, self.parameters, previous.contributions, previous.score) if previous else None
            health_later = self.kernel.score(record, later)
            assert health_later == (score_row(model_later) if model_later is not None else None), event


@needs_kernel
@pytest.mark.parametrize(
    "parameters",
    [
        ScoringParameters(),
        ScoringParameters(
            key_features=("reports", "api"),
            segment_weights={"enterprise": {"usage": 0.5, "purchases": 0.0, "support": 0.3, "sentiment": 0.1, "payments": 0.1}},
            usage_half_life_days=3.0,
        ),
        # A churn model as `healthscore calibrate` writes one (every feature weighing in).
        ScoringParameters(churn_model=ChurnModel(-1.3, (-2.1, -0.8, -0.4, 0.3, -0.6, -1.7, 0.9, 0.75, -0.2), 30.0)),
    ],
    ids=["defaults", "key-features-and-segments", "calibrated"],
)
@pytest.mark.parametrize(
    "rules",
    [
        ALL_RULES,
        AlertParameters(sharp_drop=True, payment_trouble=True, max_alerts_per_customer_30d=0, cooldown_hours=0.0),
        AlertParameters(sharp_drop=True, payment_trouble=True, digest_rules=("payment_trouble", "sharp_drop")),
    ],
    ids=["budget", "no-budget-no-cooldown", "digests"],
)
def test_the_generators_mix_gives_the_same_records_messages_and_scores(parameters: ScoringParameters, rules: AlertParameters) -> None:
    both = Both(parameters, rules)
    synthesizer = EventSynthesizer(150, seed=11)
    encoder = msgspec.json.Encoder()
    for offset, generated in enumerate(synthesizer.timeline(6000, T0 - 60 * DAY_MS, T0)):
        value = encoder.encode(generated.value)
        event = decode_event(generated.customer_id.encode(), value, generated.topic, T0 + 1, 300_000)
        assert isinstance(event, Event)
        both.apply(value, event, TopicKind(generated.topic), 0, offset)
    assert both.published > 1000
    assert both.alerts > 50
    if rules is ALL_RULES:
        assert both.suppressed > 0  # the budget and cooldown paths ran
    if rules.cooldown_hours == 0 and rules.max_alerts_per_customer_30d == 0:
        assert both.suppressed == 0
    if rules.digest_rules:
        assert both.digests > 10
    # Every rule the generator's customers give reasons for ran through both models.
    expected_rules = {"band_downgrade", "cancellation", "detractor", "purchase_activity", "payment_trouble"} - set(rules.digest_rules)
    assert expected_rules <= set(both.rules_raised), both.rules_raised
    assert both.actions == both.alerts  # the default playbook has an action for every rule


@needs_kernel
@pytest.mark.parametrize(
    "applied_rules, rules",
    [(ALL_RULES, ALL_RULES), (AlertParameters(), AlertParameters()), (None, None), (AlertParameters(cancellation=False), ALL_RULES)],
    ids=["all-rules", "default-rules", "no-rules", "a-rule-turned-on-since"],
)
def test_the_due_search_gives_the_same_moment_through_weeks_of_sweeps(applied_rules: AlertParameters | None, rules: AlertParameters | None) -> None:
    """Records as sweeps leave them (scores decayed and published by time, alert bands and
    episodes moved by silence), and as events left them before their first sweep (with a rule
    turned on since: cancellations not yet alerted): before and after every sweep of every
    customer, hourly for a day then every other day for eight weeks, the kernel's due search agrees
    with the model's."""
    parameters = ScoringParameters()
    both = Both(parameters, applied_rules)
    encoder = msgspec.json.Encoder()
    for offset, generated in enumerate(EventSynthesizer(60, seed=5).timeline(1200, T0 - 60 * DAY_MS, T0)):
        value = encoder.encode(generated.value)
        event = decode_event(generated.customer_id.encode(), value, generated.topic, T0 + 1, 300_000)
        assert isinstance(event, Event)
        both.apply(value, event, TopicKind(generated.topic), 0, offset)
    native = kernel.build(parameters, rules)
    moments = [T0 + hour * 3_600_000 for hour in range(1, 25)] + [T0 + day * DAY_MS for day in range(2, 58, 2)]
    published = 0
    for at_ms in moments:
        for key, record in both.model_store.items():
            assert_same_due(native, record, at_ms - 1, parameters, rules)  # the search before a sweep
            state = decode_state(record)
            if due_for_sweep(state, at_ms, 3_600_000):
                published += sweep(state, at_ms, parameters, rules).publish is not None
            record = both.model_store[key] = encode_state(state)
            assert_same_due(native, record, at_ms, parameters, rules)
    assert published > 150  # time moved the scores: the searches ran over records sweeps changed


@needs_kernel
def test_a_record_the_kernel_cannot_read_gets_the_models_due_moment() -> None:
    """scoring.due.DueSearch falls back to the Python search rather than failing the sweep."""
    parameters = ScoringParameters()
    state = new_state("c1")
    step(state, Event("e1", "usage.session", "c1", T0, UsageSession("u", 60)), parameters, DEDUP_CAPACITY, rules=ALL_RULES)
    state.events_applied = 2**63  # beyond the kernel's 64-bit integers
    native = kernel.build(parameters, ALL_RULES)
    with pytest.raises(ValueError):
        native.next_sweep_due(encode_state(state), T0, 1.0, 3_600_000, 0, 3_600_000)
    search = DueSearch(parameters, ALL_RULES, 1.0, 3_600_000, 0, native)
    assert search.next_due(state, T0) == next_sweep_due(state, T0, parameters, ALL_RULES, 1.0, 3_600_000, 0, 3_600_000) > T0


# Events of every type for a couple of customers, with few distinct ids and times spread
# over more than the 90-day window: duplicates, redeliveries, late events, reopened and
# resolved tickets, invoices paid and unpaid, plans with segment weights, cancellations.
EVENT_TYPES = [
    ("purchase.completed", TopicKind.PURCHASES),
    ("purchase.refunded", TopicKind.PURCHASES),
    ("checkout.abandoned", TopicKind.PURCHASES),
    ("usage.session", TopicKind.USAGE),
    ("usage.feature", TopicKind.USAGE),
    ("email.sent", TopicKind.USAGE),
    ("email.opened", TopicKind.USAGE),
    ("email.clicked", TopicKind.USAGE),
    ("email.unsubscribed", TopicKind.USAGE),
    ("ticket.opened", TopicKind.TICKETS),
    ("ticket.resolved", TopicKind.TICKETS),
    ("ticket.reopened", TopicKind.TICKETS),
    ("survey.answered", TopicKind.TICKETS),
    ("survey.sent", TopicKind.TICKETS),
    ("csm.touchpoint", TopicKind.TICKETS),
    ("csm.pulse", TopicKind.TICKETS),
    ("invoice.issued", TopicKind.PAYMENTS),
    ("payment.succeeded", TopicKind.PAYMENTS),
    ("payment.failed", TopicKind.PAYMENTS),
    ("subscription.updated", TopicKind.PAYMENTS),
    ("subscription.cancelled", TopicKind.PAYMENTS),
]
small_ids = st.sampled_from(["a", "b", "c", "reports", "api"])
amounts = st.one_of(st.integers(0, 500), st.floats(0, 10_000, allow_nan=False, allow_infinity=False))


#: The largest values the contract accepts (docs/events.md, "Bounds").
extreme_amounts = st.sampled_from([MAX_MONEY, MAX_MONEY - 0.01, 0.0])


@st.composite
def payloads(draw: st.DrawFn, event_type: str, at_ms: int, amounts: st.SearchStrategy = amounts, counts: st.SearchStrategy = st.integers(1, 50)) -> dict:
    if event_type == "purchase.completed":
        items = draw(st.lists(st.fixed_dictionaries({"sku": small_ids, "quantity": st.integers(1, 3), "unit_price": amounts}, optional={"category": st.one_of(st.none(), small_ids, st.just(""))}), max_size=3))
        return {"order_id": draw(small_ids), "amount": draw(amounts), "currency": "EUR", "items": items}
    if event_type == "purchase.refunded":
        return {"order_id": draw(small_ids), "amount": draw(amounts)}
    if event_type == "checkout.abandoned":
        return draw(st.sampled_from([{}, {"cart_value": 12.5}]))
    if event_type == "usage.session":
        return {"user_id": draw(small_ids), "duration_seconds": min(draw(amounts), MAX_DURATION_SECONDS)}
    if event_type == "usage.feature":
        payload = {"user_id": draw(small_ids), "feature": draw(small_ids)}
        if draw(st.booleans()):
            payload["count"] = draw(counts)
        return payload
    if event_type == "ticket.opened":
        return {"ticket_id": draw(small_ids), "priority": draw(st.sampled_from(["low", "normal", "high", "urgent"]))}
    if event_type in ("ticket.resolved", "ticket.reopened"):
        return {"ticket_id": draw(small_ids)}
    if event_type == "survey.answered":
        survey = draw(st.sampled_from(["nps", "csat", "ces", "cli", "csi"]))
        comment = draw(st.sampled_from([None, None, "", "too slow", 'said "no" \\ then\nleft', "é" * MAX_COMMENT]))
        extra = {} if comment is None else {"comment": comment}
        questions = ["satisfied", "buy_again", "recommend"] if survey == "csi" else [None, "q7", "recommend", "é" * 256]
        question = draw(st.sampled_from(questions))
        if question is not None:
            extra["question"] = question
        if draw(st.booleans()):
            extra["touchpoint"] = draw(st.sampled_from(["ticket-1", "qbr", "", "é" * 256]))
        if draw(st.booleans()):
            return {"survey": survey, "score": draw(st.floats(0, 10)), "scale": [0, 10], **extra}
        low, high = {"nps": (0, 10), "csat": (1, 5), "ces": (1, 7), "cli": (1, 6), "csi": (0, 1)}[survey]
        return {"survey": survey, "score": draw(st.integers(low, high)), **extra}
    if event_type.startswith("email."):
        return draw(st.sampled_from([{}, {"campaign": "spring"}, {"message_id": "m-1", "campaign": ""}, {"campaign": "é" * 256}]))
    if event_type == "survey.sent":
        payload = {"survey": draw(st.sampled_from(["nps", "csat", "ces", "cli", "csi"]))}
        if draw(st.booleans()):
            payload["touchpoint"] = draw(st.sampled_from(["ticket-1", "", "é" * 256]))
        return payload
    if event_type == "csm.touchpoint":
        payload = {"channel": draw(st.sampled_from(["call", "meeting", "email", "qbr"]))}
        sentiment = draw(st.sampled_from([None, "positive", "neutral", "negative", "negative"]))
        if sentiment is not None:
            payload["sentiment"] = sentiment
        if draw(st.booleans()):
            payload["outcome"] = draw(st.sampled_from(["renewal agreed", "", "é" * 256]))
        return payload
    if event_type == "csm.pulse":
        payload = {"rating": draw(st.integers(1, 5))}
        if draw(st.booleans()):
            payload["reasons"] = draw(st.sampled_from([[], ["champion_left"], ["budget", "adoption", "x" * 256] + ["r"] * 5]))
        expiry = draw(st.sampled_from([None, None, at_ms + draw(st.integers(-10, 120)) * DAY_MS, "2026-12-31T00:00:00+01:00"]))
        if expiry is not None:
            payload["expires_at"] = expiry
        return payload
    if event_type == "invoice.issued":
        due = at_ms + draw(st.integers(-40, 40)) * DAY_MS
        return {"invoice_id": draw(small_ids), "amount": draw(amounts), "due_at": draw(st.sampled_from([due, "2026-09-01T10:00:00+02:00"]))}
    if event_type in ("payment.succeeded", "payment.failed"):
        return {"invoice_id": draw(small_ids), "amount": draw(amounts)}
    if event_type == "subscription.updated":
        payload: dict = {"mrr": draw(st.sampled_from([0, 49, 99.5, 300]))}
        plan = draw(st.sampled_from([None, "", "enterprise", "starter"]))
        if plan is not None:
            payload["plan"] = plan
        return payload
    return draw(st.sampled_from([{}, {"reason": "price"}, {"reason": ""}, {"reason": "moved to \"Rival\""}]))


@st.composite
def histories(
    draw: st.DrawFn, amounts: st.SearchStrategy = amounts, counts: st.SearchStrategy = st.integers(1, 50), types: list = EVENT_TYPES
) -> list[tuple[bytes, Event, TopicKind, int, int]]:
    messages = []
    offsets = {kind: 0 for kind in TopicKind}
    for _ in range(draw(st.integers(1, 40))):
        event_type, topic = draw(st.sampled_from(types))
        at_ms = T0 - draw(st.integers(0, 120 * 24)) * 3_600_000 - draw(st.integers(0, 3_599_999))
        customer = draw(st.sampled_from(["cust-1", "cust-2"]))
        value = msgspec.json.encode(
            {
                "event_id": f"evt-{draw(st.integers(0, 30))}",
                "type": event_type,
                "customer_id": customer,
                "occurred_at": at_ms,
                "data": draw(payloads(event_type, at_ms, amounts, counts)),
            }
        )
        event = decode_event(customer.encode(), value, topic, T0 + 1, 300_000)
        assert isinstance(event, Event), event
        # Mostly the next offset; sometimes a redelivery, sometimes another partition.
        offsets[topic] += draw(st.sampled_from([1, 1, 1, 0, -1]))
        messages.append((value, event, topic, draw(st.sampled_from([0, 0, 0, 1])), offsets[topic]))
    return messages


@needs_kernel
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories(), with_segments=st.booleans(), rules=st.sampled_from([
    None,
    AlertParameters(),
    ALL_RULES,
    AlertParameters(sharp_drop=True, payment_trouble=True, max_alerts_per_customer_30d=1, time_band_gap_multiplier=1.0, silence_gap_multiplier=1.0),
    AlertParameters(sharp_drop=True, payment_trouble=True, digest_rules=("payment_trouble", "band_downgrade", "silence")),
    AlertParameters(hysteresis_points=0.0, sharp_drop_points=2.0, sharp_drop_window_days=2.5, payment_failures_30d=1, payment_overdue_days=0.5, cooldown_hours=0.0, band_downgrade=False, sharp_drop=True, payment_trouble=True, max_alerts_per_customer_30d=0),
]))
def test_any_history_gives_the_same_records_messages_and_scores(history: list, with_segments: bool, rules: AlertParameters | None) -> None:
    parameters = ScoringParameters(
        key_features=("reports",) if with_segments else (),
        segment_weights={"enterprise": {"usage": 0.6, "support": 0.4}} if with_segments else {},
        churn_model=ChurnModel(0.4, (-3.0, -1.0, 0.5, -0.2, -0.9, -1.1, 1.3, 0.6, -0.35), 45.0) if with_segments else None,
    )
    both = Both(parameters, rules)
    for value, event, topic, partition, offset in history:
        both.apply(value, event, topic, partition, offset)


@needs_kernel
def test_an_alert_held_back_by_the_cooldown_is_reported_the_same() -> None:
    # Cancelled, resubscribed, cancelled again within the 24-hour cooldown: the second
    # cancellation opens a new episode whose alert is held back.
    both = Both(ScoringParameters())
    history = [
        ("subscription.updated", {"mrr": 99}, 0),
        ("subscription.cancelled", {}, 3_600_000),
        ("subscription.updated", {"mrr": 99}, 7_200_000),
        ("subscription.cancelled", {}, 10_800_000),
    ]
    for offset, (event_type, data, after_ms) in enumerate(history):
        value = msgspec.json.encode(
            {"event_id": f"e{offset}", "type": event_type, "customer_id": "acme", "occurred_at": T0 - DAY_MS + after_ms, "data": data}
        )
        event = decode_event(b"acme", value, TopicKind.PAYMENTS, T0, 300_000)
        assert isinstance(event, Event)
        both.apply(value, event, TopicKind.PAYMENTS, 0, offset)
    assert both.suppressed >= 1  # the model and the kernel agreed on each one (Both.apply)


@needs_kernel
def test_the_csm_relationship_and_survey_invitations_score_the_same() -> None:
    """A managed account: a call, a pulse that expires, a survey left unanswered, a negative
    meeting; both models publish the same messages, needs_fresh_pulse included."""
    both = Both(ScoringParameters())
    history = [
        ("usage.session", {"user_id": "u1", "duration_seconds": 600}, 0, TopicKind.USAGE),
        ("csm.touchpoint", {"channel": "call", "sentiment": "positive", "outcome": "renewal talk"}, 1, TopicKind.TICKETS),
        ("csm.pulse", {"rating": 4, "reasons": ["champion_engaged"], "expires_at": T0 - 30 * DAY_MS}, 2, TopicKind.TICKETS),
        ("survey.sent", {"survey": "nps"}, 3, TopicKind.TICKETS),
        ("usage.session", {"user_id": "u1", "duration_seconds": 600}, 20, TopicKind.USAGE),
        ("csm.touchpoint", {"channel": "meeting", "sentiment": "negative"}, 30, TopicKind.TICKETS),
        ("usage.session", {"user_id": "u2", "duration_seconds": 600}, 45, TopicKind.USAGE),
    ]
    messages = []
    for offset, (event_type, data, day, topic) in enumerate(history):
        value = msgspec.json.encode({"event_id": f"e{offset}", "type": event_type, "customer_id": "acme", "occurred_at": T0 - 60 * DAY_MS + day * DAY_MS, "data": data})
        event = decode_event(b"acme", value, topic, T0, 300_000)
        assert isinstance(event, Event), event
        both.apply(value, event, topic, 0, offset)
        state = decode_state(both.model_store[b"acme"])
        if state.published is not None:
            health = score_state(state, state.last_event_ms, both.parameters)
            messages.append((day, health.needs_fresh_pulse, "relationship" in health.components, health.components["sentiment"].score if "sentiment" in health.components else None))
    assert messages[-1] == (45, True, True, pytest.approx((12.5 + 25.0 * 0.5 ** (28 / 90)) / (0.25 + 0.5 ** (28 / 90))))
    assert decode_state(both.model_store[b"acme"]).pulse_reasons == ["champion_engaged"]


@needs_kernel
@pytest.mark.parametrize("fields", [1, 3, 10, 24, 26, 29, 32, 33, 34, 35, 36, 37, 38, 41, 43, 44, 45, 46, 47])
def test_a_record_from_an_older_version_reads_with_the_defaults_of_newer_fields(fields: int) -> None:
    state = new_state("acme")
    state.last_event_ms = T0
    state.mrr = 49.0
    full = msgspec.msgpack.decode(encode_state(state))
    older = msgspec.msgpack.encode(full[:fields])
    assert kernel.build(ScoringParameters()).roundtrip(older) == encode_state(decode_state(older))


@needs_kernel
@pytest.mark.parametrize(
    "stored",
    [b"", b"\x90", b"\xc0", msgspec.msgpack.encode(["acme"] + [0] * 40), msgspec.msgpack.encode(["acme", "not a time"]), encode_state(new_state("acme")) + b"\x00"],
    ids=["empty", "no-customer", "nil", "too-long", "wrong-type", "trailing-bytes"],
)
def test_a_record_the_model_could_not_have_written_is_refused_with_a_reason(stored: bytes) -> None:
    with pytest.raises(ValueError):
        kernel.build(ScoringParameters()).roundtrip(stored)


@needs_kernel
def test_bgnbd_is_refused_rather_than_left_out() -> None:
    from scoring.bgnbd import BgNbdParameters

    parameters = ScoringParameters(bgnbd=BgNbdParameters(r=0.24, alpha=4.4, a=0.79, b=2.4))
    assert not kernel.supports(parameters)
    with pytest.raises(ValueError, match="BG/NBD"):
        kernel.build(parameters)


@needs_kernel
def test_the_kernel_bench_measures_both_paths_on_the_same_events() -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "kernel_cost.py"
    spec = importlib.util.spec_from_file_location("kernel_cost_bench", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.measure(events=600, customers=30, days=30.0, rounds=2)
    assert result["events"] == 600
    assert len(result["model_microseconds_per_event"]) == len(result["kernel_microseconds_per_event"]) == 2
    import statistics

    assert result["model_median"] == statistics.median(result["model_microseconds_per_event"])
    assert result["kernel_median"] == statistics.median(result["kernel_microseconds_per_event"])
    assert result["kernel_speedup"] == result["model_median"] / result["kernel_median"]


def saturated_record(customer_id: str, below_max: int) -> bytes:
    """A record whose every day counter of the last 130 days is ``below_max`` under the cap."""
    state = new_state(customer_id)
    state.last_event_ms = T0 - 1
    state.first_event_ms = T0 - 130 * DAY_MS
    counts = state.counts
    counts.days = list(range((T0 - 130 * DAY_MS) // DAY_MS, T0 // DAY_MS + 1))
    for name in COUNTERS:
        setattr(counts, name, [COUNTER_MAX - below_max] * len(counts.days))
    return encode_state(state)


@needs_kernel
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=histories(extreme_amounts, st.sampled_from([MAX_QUANTITY, 1]), [t for t in EVENT_TYPES if t[0].startswith(("purchase", "usage", "payment", "checkout", "ticket.opened"))]),
    below_max=st.sampled_from([0, 1, MAX_QUANTITY, int(MAX_MONEY * 100)]),
)
def test_no_sequence_of_valid_events_overflows_or_diverges(history: list, below_max: int) -> None:
    """The largest values the contract accepts, on counters at or near their cap: both models
    saturate the same way, and every record still encodes (no OverflowError, no wrap)."""
    both = Both(ScoringParameters(), ALL_RULES)
    for customer in ("cust-1", "cust-2"):
        both.model_store[customer.encode()] = both.kernel_store[customer.encode()] = saturated_record(customer, below_max)
    for value, event, topic, partition, offset in history:
        both.apply(value, event, topic, partition, offset)
    for record in both.model_store.values():
        counts = decode_state(record).counts
        assert all(0 <= value <= COUNTER_MAX for name in COUNTERS for value in getattr(counts, name))


# The kernel validates raw messages itself when the contract surely accepts them
# (native/src/validate.rs) and declines the rest. It must never accept what the contract
# refuses, must read what it accepts as the contract does, and must take the usual case.
NOW_MS = T0 + 1
SKEW_MS = 300_000
ODD_VALUES = [
    None, True, False, -1, 0, 1.5, -0.0, 10**20, "", "x" * 300, "é" * 256, [], {}, [0, 10], "low", "nps", [["a", 1, 2.0]], [{"sku": "a", "quantity": 1, "unit_price": 1}],
    "2026-01-01T10:00:00Z", "2026-01-01 10:00:00+00:00", "1999-12-31T23:59:59Z", "2026-01-01T10:00:00.1234567+01:00",
    "2026-02-30T10:00:00Z", "2026-01-01T10:00:00+24:00", 946_684_799_999, T0 + SKEW_MS + 2, "usage.session", "payment.failed",
    # The bounds (docs/events.md, "Bounds"): just inside and just beyond each.
    MAX_MONEY, MAX_MONEY + 1, 2e17, 10**30, MAX_QUANTITY, MAX_QUANTITY + 1, MAX_DURATION_SECONDS + 1, MAX_SURVEY_SCALE + 1,
    [-MAX_SURVEY_SCALE - 1, 10], LATEST_MS - 1, LATEST_MS, "2100-01-01T00:00:00Z", "x" * 257, "é" * 257, "2026-01-01",
    [{"sku": "a", "quantity": 1, "unit_price": 1}] * (MAX_ITEMS + 1), [{"sku": "a", "quantity": 1, "unit_price": 1, "category": "c" * 257}],
    "c" * MAX_COMMENT, "é" * (MAX_COMMENT + 1), "c" * (MAX_COMMENT + 1), "cli", "csi", "satisfied", "buy_again",
    "qbr", "negative", 5, 6, ["a"] * 9, ["x" * 257], "survey.sent", "csm.pulse", "email.opened",
]


def message_of(event_type: str, customer: str, at: object, data: object, event_id: str = "e1") -> dict:
    return {"event_id": event_id, "type": event_type, "customer_id": customer, "occurred_at": at, "data": data}


@st.composite
def timestamps(draw: st.DrawFn) -> object:
    """Event times as producers send them: epoch ms, or RFC 3339 with a fraction and an offset."""
    at_ms = T0 - draw(st.integers(0, 100 * DAY_MS))
    if draw(st.booleans()):
        return at_ms
    import datetime as dt

    offset = dt.timedelta(minutes=draw(st.sampled_from([0, 60, -330, 345, -720, 840])))
    moment = dt.datetime.fromtimestamp(at_ms / 1000, dt.timezone(offset)).replace(microsecond=draw(st.integers(0, 999_999)))
    text = moment.isoformat(timespec=draw(st.sampled_from(["seconds", "milliseconds", "microseconds"])))
    return text.replace("+00:00", "Z") if draw(st.booleans()) else text


@st.composite
def messages(draw: st.DrawFn) -> tuple[bytes, bytes, TopicKind]:
    """Valid messages of every type, and the same broken in one place."""
    event_type, topic = draw(st.sampled_from(EVENT_TYPES))
    at = draw(timestamps())
    body = message_of(event_type, "cust-1", at, draw(payloads(event_type, T0 - DAY_MS)))
    key = b"cust-1"
    mutation = draw(st.sampled_from(["none", "none", "envelope", "data", "drop", "key", "topic", "bytes"]))
    if mutation == "envelope":
        body[draw(st.sampled_from(sorted(body)))] = draw(st.sampled_from(ODD_VALUES))
    elif mutation == "data" and isinstance(body["data"], dict):
        body["data"][draw(st.sampled_from(sorted(body["data"]) + ["reason", "count", "scale", "items", "plan", "comment", "question", "touchpoint", "expires_at", "reasons", "sentiment", "campaign", "message_id"]))] = draw(st.sampled_from(ODD_VALUES))
    elif mutation == "drop":
        target = body if draw(st.booleans()) or not body["data"] else body["data"]
        del target[draw(st.sampled_from(sorted(target)))]
    elif mutation == "key":
        key = draw(st.sampled_from([b"cust-2", b"", b"cust-1 "]))
    elif mutation == "topic":
        topic = draw(st.sampled_from(list(TopicKind)))
    value = msgspec.json.encode(body)
    if mutation == "bytes":
        as_array = msgspec.json.encode(list(body.values()))  # serde would read a struct from an array
        not_utf8 = value.replace(b'"event_id":"', b'"event_id":"\xff', 1)  # raw bytes that are not UTF-8
        value = draw(st.sampled_from([value[:-1], value + b"x", value.replace(b'"event_id"', b'"event_id":"again","event_id"', 1), b"[]", b"null", as_array, not_utf8]))
    if mutation == "data" and isinstance(body.get("data"), dict) and draw(st.booleans()):
        body["data"] = list(body["data"].values())  # likewise the payload, and each item
        value = msgspec.json.encode(body)
    return key, value, topic


@needs_kernel
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=messages())
def test_the_kernel_accepts_only_what_the_contract_accepts_and_reads_it_the_same(message: tuple[bytes, bytes, TopicKind]) -> None:
    key, value, topic = message
    native = kernel.build(ScoringParameters(), AlertParameters())
    taken = native.step_raw(None, key, value, kernel.STREAM_INDEX[topic], NOW_MS, SKEW_MS, 0, 7, DEDUP_CAPACITY, NOW_MS)
    expected = decode_event(key, value, topic, NOW_MS, SKEW_MS)
    if taken is None:
        return  # left to the contract, which decides and names the reason
    assert isinstance(expected, Event), (expected, value)
    customer_id, occurred_at_ms, result = taken
    assert (customer_id, occurred_at_ms) == (expected.customer_id, expected.occurred_at_ms)
    validated_here = native.step(
        None, expected.customer_id, value, expected.occurred_at_ms, kernel.due_ms(expected.data, expected.occurred_at_ms),
        (kernel.STREAM_INDEX[topic], 0, 7), DEDUP_CAPACITY, NOW_MS,
    )
    assert result == validated_here  # and step is held equal to the model above


@needs_kernel
def test_the_kernel_validates_every_message_of_the_generators_mix_itself() -> None:
    native = kernel.build(ScoringParameters(), AlertParameters())
    encoder = msgspec.json.Encoder()
    declined = 0
    for offset, generated in enumerate(EventSynthesizer(50, seed=5).timeline(3000, T0 - 30 * DAY_MS, T0)):
        key, value = generated.customer_id.encode(), encoder.encode(generated.value)
        taken = native.step_raw(None, key, value, kernel.STREAM_INDEX[TopicKind(generated.topic)], NOW_MS, SKEW_MS, 0, offset, DEDUP_CAPACITY, NOW_MS)
        declined += taken is None
    assert declined == 0


@needs_kernel
@pytest.mark.parametrize(
    "at",
    ["2026-11-20T09:30:00Z", "2026-11-20T09:30:00+01:00", "2026-11-20T09:30:00.5-05:30", "2024-02-29T23:59:59.999999Z", "2026-11-20T09:30:00.123Z"],
)
def test_an_rfc3339_event_time_is_read_to_the_same_millisecond(at: str) -> None:
    native = kernel.build(ScoringParameters(), None)
    value = msgspec.json.encode(message_of("usage.session", "acme", at, {"user_id": "u1", "duration_seconds": 3}))
    now_ms = 1_900_000_000_000
    taken = native.step_raw(None, b"acme", value, kernel.STREAM_INDEX[TopicKind.USAGE], now_ms, SKEW_MS, 0, 1, DEDUP_CAPACITY, now_ms)
    expected = decode_event(b"acme", value, TopicKind.USAGE, now_ms, SKEW_MS)
    assert taken is not None and isinstance(expected, Event)
    assert taken[1] == expected.occurred_at_ms


def _near_tie(whole: int, digits: int, side: int) -> tuple[float, int]:
    """``whole.00…05`` rounded to the digit before its 5, or the float just below or above it."""
    tie = float(f"{whole}.{'0' * digits}5")
    return (tie if side == 0 else math.nextafter(tie, side * math.inf)), digits + 1


def _round_cases() -> st.SearchStrategy[tuple[float, int]]:
    """Any float, and decimals on or next to a tie, where the shortcut must step aside."""
    anywhere = st.tuples(st.floats(allow_nan=False, allow_infinity=False), st.integers(min_value=0, max_value=6))
    near_ties = st.builds(_near_tie, st.integers(min_value=-(10**6), max_value=10**6), st.integers(min_value=0, max_value=5), st.sampled_from([-1, 0, 1]))
    scores = st.tuples(st.floats(min_value=-200, max_value=200), st.sampled_from([2, 4]))
    return st.one_of(anywhere, near_ties, scores)


@needs_kernel
@settings(max_examples=3000, deadline=None)
@given(case=_round_cases())
def test_the_kernels_rounding_is_pythons_round_to_the_bit(case: tuple[float, int]) -> None:
    """Scores and risks are rounded in the kernel without a decimal string where no tie is near."""
    from scoring._kernel import py_round

    value, digits = case
    assert repr(py_round(value, digits)) == repr(round(value, digits))


@needs_kernel
def test_a_message_the_kernel_declines_is_named_by_the_contract_in_both_paths() -> None:
    """Invalid UTF-8 and an empty key are left to the contract, which names them (a tombstone
    never reaches the kernel: the worker leaves a null value to the contract)."""
    native = kernel.build(ScoringParameters(), AlertParameters())
    value = msgspec.json.encode(message_of("usage.session", "cust-1", T0 - DAY_MS, {"user_id": "u", "duration_seconds": 5}))
    stream = kernel.STREAM_INDEX[TopicKind.USAGE]
    not_utf8 = value.replace(b'"u"', b'"\xff"')
    assert native.step_raw(None, b"cust-1", not_utf8, stream, NOW_MS, SKEW_MS, 0, 1, DEDUP_CAPACITY, NOW_MS) is None
    assert decode_event(b"cust-1", not_utf8, TopicKind.USAGE, NOW_MS, SKEW_MS).reason is RejectReason.INVALID_UTF8
    assert native.step_raw(None, b"", value, stream, NOW_MS, SKEW_MS, 0, 2, DEDUP_CAPACITY, NOW_MS) is None
    assert isinstance(decode_event(b"", value, TopicKind.USAGE, NOW_MS, SKEW_MS), Event)  # rekeyed by the worker


@needs_kernel
def test_users_are_fingerprinted_with_the_configured_key_the_same_in_both_paths() -> None:
    from scoring.state import user_fingerprint

    assert user_fingerprint("user-42", b"key-one") != user_fingerprint("user-42", b"key-two")
    keyed = ScoringParameters(user_hash_key=b"a-deployment-secret-0123456789")
    assert keyed.model_version == ScoringParameters().model_version  # the secret is not part of the model
    both = Both(keyed)
    encoder = msgspec.json.Encoder()
    for offset, generated in enumerate(EventSynthesizer(20, seed=3).timeline(800, T0 - 20 * DAY_MS, T0)):
        value = encoder.encode(generated.value)
        event = decode_event(generated.customer_id.encode(), value, generated.topic, T0 + 1, 300_000)
        assert isinstance(event, Event)
        both.apply(value, event, TopicKind(generated.topic), 0, offset)
    users = {fingerprint for record in both.model_store.values() for fingerprint in decode_state(record).users_last_day}
    assert users and all(fingerprint < 2**32 for fingerprint in users)
