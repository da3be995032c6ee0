"""Batches: how records reach the agent, how a batch's state is written back, how outputs are grouped.

No broker here: the queue and the working set are exercised directly; the agent as a
whole runs against the real Kafka in tests/integration.
"""

from __future__ import annotations

import asyncio

import pytest
from mode.utils.queues import FlowControlEvent

from scoring.alerts import AlertParameters
from scoring.contract import TopicKind, decode_event
from scoring.health import ScoringParameters
from scoring.pipeline import step
from scoring.state import Outcome, decode_state, encode_state, new_state
from stream.batching import BatchingTopic, BatchQueue, EventBatch
from stream.outputs import Outputs
from stream.working_set import WorkingSet

END_MS = 1_790_000_000_000
PARAMETERS = ScoringParameters()
RULES = AlertParameters()


class Table:
    """What WorkingSet uses of a Faust table: the store under ``data``."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}


def usage(customer: str, event_id: str, at_ms: int):
    raw = (
        '{"event_id":"%s","type":"usage.session","customer_id":"%s","occurred_at":%d,'
        '"data":{"user_id":"u1","duration_seconds":60}}' % (event_id, customer, at_ms)
    ).encode()
    event = decode_event(customer.encode(), raw, TopicKind.USAGE, END_MS, 300_000)
    assert not hasattr(event, "reason"), event
    return event


def apply(event, offset: int):
    return lambda state: step(state, event, PARAMETERS, 32, (TopicKind.USAGE, 0, offset), RULES)


def test_queue_hands_over_everything_buffered_as_one_batch() -> None:
    async def scenario() -> list[list[int]]:
        queue = BatchQueue(maxsize=100, flow_control=FlowControlEvent(), batch_limit=3)
        for item in range(5):
            queue.put_nowait(item)
        first = await queue.get()
        second = queue.get_nowait()
        return [list(first), list(second)]

    assert asyncio.run(scenario()) == [[0, 1, 2], [3, 4]]


def test_queue_wakes_every_waiting_producer_when_a_batch_is_taken() -> None:
    async def scenario() -> int:
        flow_control = FlowControlEvent()
        flow_control.resume()  # Faust resumes it once partitions are assigned
        queue = BatchQueue(maxsize=2, flow_control=flow_control, batch_limit=10)
        queue.put_nowait("a")
        queue.put_nowait("b")
        waiting = [asyncio.create_task(queue.put(item)) for item in ("c", "d")]
        await asyncio.sleep(0)
        assert isinstance(queue.get_nowait(), EventBatch)
        await asyncio.wait_for(asyncio.gather(*waiting), timeout=1)
        return queue.qsize()

    assert asyncio.run(scenario()) == 2


def test_a_customer_with_several_events_in_a_batch_is_written_once_with_the_final_state() -> None:
    table = Table()
    outputs = Outputs()
    working = WorkingSet(table, {}, outputs, "changelog")
    results = [working.run(b"acme", 3, "acme", apply(usage("acme", f"e{i}", END_MS - 3_600_000 + i * 60_000), i)) for i in range(3)]
    working.run(b"beta", 3, "beta", apply(usage("beta", "b1", END_MS - 1000), 10))
    assert [result.outcome for result in results] == [Outcome.APPLIED] * 3

    assert working.write_back() == 2
    records = outputs.pending("changelog")[3]
    assert [key for key, _ in records] == [b"acme", b"beta"]
    acme = decode_state(table.data[b"acme"])
    assert acme.events_applied == 3
    assert records[0][1] == table.data[b"acme"]


def test_the_next_batch_starts_from_what_the_table_holds() -> None:
    table = Table()
    working = WorkingSet(table, {}, Outputs(), "changelog")
    working.run(b"acme", 0, "acme", apply(usage("acme", "e1", END_MS - 5000), 1))
    working.write_back()
    again = working.run(b"acme", 0, "acme", apply(usage("acme", "e1", END_MS - 5000), 1))
    assert again.outcome is Outcome.DUPLICATE
    assert working.write_back() == 0  # nothing changed, nothing written


def test_beyond_its_capacity_the_least_recently_used_record_is_written_back_first() -> None:
    table = Table()
    outputs = Outputs()
    keys_by_partition: dict[int, set[bytes]] = {}
    working = WorkingSet(table, keys_by_partition, outputs, "changelog", capacity=2)
    at = END_MS - 3_600_000
    working.run(b"acme", 0, "acme", apply(usage("acme", "a1", at), 1))
    working.run(b"beta", 1, "beta", apply(usage("beta", "b1", at), 2))
    working.run(b"acme", 0, "acme", apply(usage("acme", "a2", at + 1000), 3))  # acme is now the most recent
    assert table.data == {}
    working.run(b"cora", 0, "cora", apply(usage("cora", "c1", at), 4))  # a third record: beta goes
    assert list(table.data) == [b"beta"]
    assert outputs.pending("changelog") == {1: [(b"beta", table.data[b"beta"])]}
    assert keys_by_partition == {1: {b"beta"}}
    # beta again in the same batch: continues from what was written, and is written again.
    again = working.run(b"beta", 1, "beta", apply(usage("beta", "b2", at + 2000), 5))
    assert again.outcome is Outcome.APPLIED
    assert list(table.data) == [b"beta", b"acme"]  # acme, least recently used, made room
    assert decode_state(table.data[b"acme"]).events_applied == 2
    assert working.write_back() == 2
    assert decode_state(table.data[b"beta"]).events_applied == 2
    assert [key for key, _ in outputs.pending("changelog")[1]] == [b"beta", b"beta"]
    assert [key for key, _ in outputs.pending("changelog")[0]] == [b"acme", b"cora"]


def test_a_failing_step_leaves_no_half_applied_change() -> None:
    table = Table()
    stored = new_state("acme")
    table.data[b"acme"] = encode_state(stored)
    working = WorkingSet(table, {}, Outputs(), "changelog")
    working.run(b"acme", 0, "acme", apply(usage("acme", "e1", END_MS - 5000), 1))

    def broken(state):
        state.events_applied += 100
        state.mrr = 999.0
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        working.run(b"acme", 0, "acme", broken)
    working.write_back()
    after = decode_state(table.data[b"acme"])
    assert after.events_applied == 1
    assert after.mrr == 0.0


def test_outputs_keep_production_order_per_topic_and_partition() -> None:
    outputs = Outputs()
    for index, (topic, partition) in enumerate([("health", 1), ("alerts", 1), ("health", 0), ("health", 1)]):
        outputs.add(topic, partition, b"k", str(index).encode())
    assert outputs.count("health") == 3
    assert outputs.pending("health") == {1: [(b"k", b"0"), (b"k", b"3")], 0: [(b"k", b"2")]}


def test_raw_topics_make_the_event_from_the_message_as_is_and_others_keep_faust_decoding() -> None:
    import faust
    from faust.types import TP, Message

    from stream.app import raw_schema

    app = faust.App("test-decode", broker="kafka://127.0.0.1:1", store="memory://")
    raw = BatchingTopic(app, topics=["events"], schema=raw_schema())
    faust_raw = faust.Topic(app, topics=["events"], schema=raw_schema())
    as_json = BatchingTopic(app, topics=["other"], schema=faust.Schema(key_serializer="raw", value_serializer="json"))
    message = Message("events", 0, 7, 0.0, 0, [("h", b"v")], b"acme", b'{"a": 1}', None, tp=TP("events", 0))

    async def decode() -> tuple:
        return await raw.decode(message), await faust_raw.decode(message), await as_json.decode(message, propagate=True)

    ours, faust_event, json_event = asyncio.run(decode())
    assert (ours.key, ours.value, ours.headers, ours.message) == (faust_event.key, faust_event.value, faust_event.headers, faust_event.message)
    assert (ours.key, ours.value, ours.message) == (b"acme", b'{"a": 1}', message)
    assert json_event.value == {"a": 1}


def test_the_producer_buffer_counts_its_pending_sends() -> None:
    import faust

    from stream.outputs import IdempotentProducer, PendingCountBuffer

    app = faust.App("test-buffer", broker="kafka://127.0.0.1:1", store="memory://")
    app.transport.Producer = IdempotentProducer
    buffer = app.producer.buffer
    assert isinstance(buffer, PendingCountBuffer) and buffer.app is app
    assert buffer.size == 0
    buffer.pending.put_nowait(object())
    assert buffer.size == 1
