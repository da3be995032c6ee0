"""Batches: how records reach the agent, how a batch's state is written back, how outputs are grouped.

No broker here: the queue and the working set are exercised directly; the agent as a
whole runs against the real Kafka in tests/integration.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import defaultdict
from types import SimpleNamespace

import faust
import pytest
from aiokafka.structs import ConsumerRecord
from faust.types import TP
from intervaltree import IntervalTree
from mode.utils.queues import FlowControlEvent

from scoring.alerts import AlertParameters
from scoring.contract import TopicKind, decode_event
from scoring.health import ScoringParameters
from scoring.pipeline import step
from scoring.state import Outcome, decode_state, encode_state, new_state
from stream.kafka.batching import BatchInProgress, BatchQueue, BulkDeliveryConsumer, RecordBatch, RecordRun, Refetches
from stream.kafka.event_time import EventTimeMerge
from stream.kafka.producer import Outputs
from stream.state.table import KeysByPartition
from stream.state.working_set import WorkingSet

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


def record(offset: int, partition: int = 0) -> ConsumerRecord:
    return ConsumerRecord("usage", partition, offset, 0, 0, b"acme", b"{}", None, 0, 2, [])


def merge() -> EventTimeMerge:
    """One topic, nothing lagging: runs go as they come."""
    return EventTimeMerge(["usage"], lambda record: (record.offset, ""), lambda tp: False, max_wait=1.0)


def run(offsets: list[int], first: int | None = None, partition: int = 0, generation: int = 1) -> RecordRun:
    records = [record(offset, partition) for offset in offsets]
    return RecordRun(TP("usage", partition), records, offsets[0] if first is None else first, generation)


def test_queue_hands_over_every_buffered_run_as_one_batch_and_splits_at_the_limit() -> None:
    async def scenario() -> tuple[list[list[int]], list[list[int]], int, int]:
        queue = BatchQueue(maxsize=100, flow_control=FlowControlEvent(), batch_limit=5, merge=merge())
        queue.put_nowait(run([0, 1, 2]))
        queue.put_nowait(run([10, 12, 13, 14], first=3, partition=1))
        assert queue.qsize() == 7  # records, not runs
        first = await queue.get()
        left = queue.qsize()
        second = queue.get_nowait()
        offsets = [[message.offset for message in batch] for batch in (first, second)]
        accounted = [[(r.first_offset, r.records[-1].offset) for r in batch.runs] for batch in (first, second)]
        return offsets, accounted, left, queue.qsize()

    offsets, accounted, left, at_end = asyncio.run(scenario())
    assert offsets == [[0, 1, 2, 10, 12], [13, 14]]
    # The split run still accounts for every offset once: 3-12 (a gap, 10 and 12), then 13-14.
    assert accounted == [[(0, 2), (3, 12)], [(13, 14)]]
    assert (left, at_end) == (2, 0)


def test_queue_wakes_every_waiting_producer_when_a_batch_is_taken() -> None:
    async def scenario() -> int:
        flow_control = FlowControlEvent()
        flow_control.resume()  # Faust resumes it once partitions are assigned
        queue = BatchQueue(maxsize=2, flow_control=flow_control, batch_limit=10, merge=merge())
        queue.put_nowait(run([0]))
        queue.put_nowait(run([1]))
        assert queue.full()
        waiting = [asyncio.create_task(queue.put(run([offset]))) for offset in (2, 3)]
        await asyncio.sleep(0)
        assert isinstance(queue.get_nowait(), RecordBatch)
        await asyncio.wait_for(asyncio.gather(*waiting), timeout=1)
        return queue.qsize()

    assert asyncio.run(scenario()) == 2


def test_runs_cleared_from_the_queue_are_reported_to_be_fetched_again() -> None:
    """Faust clears the buffer whenever flow resumes; a run it held must not vanish unnoticed."""
    dropped: list[RecordRun] = []
    flow_control = FlowControlEvent(initially_suspended=False)
    queue = BatchQueue(
        maxsize=100, flow_control=flow_control, clear_on_resume=True, batch_limit=10, merge=merge(), on_dropped=dropped.extend
    )
    for value in [run([4, 5], first=3), run([7], partition=1), run([6])]:
        queue.put_nowait(value)
    flow_control.resume()  # what Faust does at the end of a recovery
    held = [(P0, 3, [4, 5, 6]), (P1, 7, [7])]
    assert [(r.tp, r.first_offset, [m.offset for m in r.records]) for r in dropped] == held
    assert queue.qsize() == 0
    flow_control.resume()  # an empty buffer reports nothing
    assert len(dropped) == 2


P0, P1 = TP("usage", 0), TP("usage", 1)


@pytest.mark.parametrize(
    ("dropped", "generation", "assigned", "seeks"),
    [
        pytest.param([], 3, {P0}, {}, id="nothing dropped"),
        pytest.param([(P0, 40, 3), (P0, 10, 3), (P0, 25, 3)], 3, {P0}, {P0: 10}, id="the earliest dropped offset per partition"),
        pytest.param([(P0, 10, 3), (P1, 7, 3)], 3, {P0, P1}, {P0: 10, P1: 7}, id="each partition on its own"),
        pytest.param([(P0, 10, 2)], 3, {P0}, {}, id="an older generation: the rebalance starts from the commit"),
        pytest.param([(P0, 5, 2), (P0, 30, 3)], 3, {P0}, {P0: 30}, id="a newer generation replaces an older one"),
        pytest.param([(P0, 30, 3), (P0, 5, 2)], 3, {P0}, {P0: 30}, id="an older generation never replaces a newer one"),
        pytest.param([(P0, 10, 3), (P1, 7, 3)], 3, {P1}, {P1: 7}, id="a partition no longer assigned"),
    ],
)
def test_refetches_seek_each_partition_back_to_its_first_dropped_offset(dropped, generation, assigned, seeks) -> None:
    refetches = Refetches()
    for tp, offset, dropped_in in dropped:
        refetches.add(tp, offset, dropped_in)
    assert bool(refetches) == bool(dropped)
    # Records fetched in the current generation wait only where a seek back of that generation is due.
    latest: dict[TP, int] = {}
    for tp, _, dropped_in in dropped:
        latest[tp] = max(latest.get(tp, dropped_in), dropped_in)
    assert {tp for tp in (P0, P1) if refetches.waiting(tp, generation)} == {tp for tp, dropped_in in latest.items() if dropped_in == generation}
    assert refetches.take(generation, assigned) == seeks
    assert not refetches and refetches.take(generation, assigned) == {}


def test_only_records_dropped_in_the_current_generation_are_fetched_again() -> None:
    """A run left over from before a rebalance must not hold back the partition's new records."""
    consumer = SimpleNamespace(app=SimpleNamespace(consumer_generation_id=3), refetches=Refetches())
    BulkDeliveryConsumer.fetch_again(consumer, P0, 10, 2, records=5)  # type: ignore[arg-type]
    assert not consumer.refetches and not consumer.refetches.waiting(P0, 3)
    BulkDeliveryConsumer.fetch_again(consumer, P0, 12, 3, records=5)  # type: ignore[arg-type]
    assert consumer.refetches.waiting(P0, 3)
    assert consumer.refetches.take(3, {P0}) == {P0: 12}


class FakeConsumer:
    """The ack bookkeeping of BulkDeliveryConsumer (and, under it, Faust's), without a broker."""

    ack_run = BulkDeliveryConsumer.ack_run
    _new_offset = BulkDeliveryConsumer._new_offset

    def __init__(self, committed: int | None) -> None:
        self._unacked_messages: weakref.WeakSet = weakref.WeakSet()
        self._committed_offset = defaultdict(lambda: committed)
        self._acked: defaultdict[TP, list[int]] = defaultdict(list)
        self._acked_index: defaultdict[TP, set[int]] = defaultdict(set)
        self._acked_runs: dict[TP, list[tuple[int, int]]] = {}
        self._gap: defaultdict[TP, IntervalTree] = defaultdict(IntervalTree)
        self._n_acked = 0
        self._waiting_for_ack = None


class FakeApp:
    """What a batch reads of Faust's app: the generation, the flow, and the consumer's ack bookkeeping."""

    def __init__(self, committed: int | None = None) -> None:
        self.consumer_generation_id = 1
        self.flow_control = FlowControlEvent(initially_suspended=False)
        self.monitor = SimpleNamespace(stream_inbound_time={})
        self.consumer = FakeConsumer(committed)

    def commit_offset(self, tp: TP) -> int | None:
        """The offset Faust's commit would take from this bookkeeping (and then forget)."""
        return self.consumer._new_offset(tp)


def test_acking_a_batch_lets_faust_commit_past_its_last_record_gaps_included() -> None:
    app = FakeApp()
    batch = RecordBatch([run([0, 1, 2]), run([5, 6], first=3), run([0, 1], partition=1)]).current(app)
    assert batch in app.consumer._unacked_messages  # Faust's wait_empty waits for it
    assert set(app.monitor.stream_inbound_time) == {TP("usage", 0), TP("usage", 1)}  # not reported as stuck
    assert app.commit_offset(TP("usage", 0)) is None
    batch.ack(app)
    assert batch not in app.consumer._unacked_messages
    assert app.consumer._n_acked == 9
    assert app.commit_offset(TP("usage", 0)) == 7
    assert app.commit_offset(TP("usage", 1)) == 2


def test_offsets_below_the_committed_one_are_not_acked_again() -> None:
    app = FakeApp(committed=4)
    RecordBatch([run([2, 3, 4, 5])]).current(app).ack(app)
    assert app.consumer._acked_runs[TP("usage", 0)] == [(4, 5)]
    assert app.consumer._n_acked == 2
    assert app.commit_offset(TP("usage", 0)) == 6


def test_a_batch_acked_before_an_earlier_one_waits_for_it() -> None:
    """Offsets are committed only up to the first run still being processed."""
    app = FakeApp(committed=10)
    first = RecordBatch([run([10, 11, 12])]).current(app)
    second = RecordBatch([run([13, 14])]).current(app)
    second.ack(app)
    assert app.commit_offset(TP("usage", 0)) is None
    first.ack(app)
    assert app.commit_offset(TP("usage", 0)) == 15
    assert app.consumer._acked_runs[TP("usage", 0)] == []  # taken by that commit


def test_a_partition_acked_one_message_at_a_time_keeps_fausts_own_bookkeeping() -> None:
    """Topics no BatchingTopic reads alone are acked by Faust per message; their commits are Faust's."""
    app = FakeApp()
    app.consumer._acked[TP("other", 0)].extend([0, 1, 2])
    app.consumer._acked_index[TP("other", 0)].update([0, 1, 2])
    assert app.commit_offset(TP("other", 0)) == 3


def test_runs_from_before_a_rebalance_are_dropped_unacked() -> None:
    app = FakeApp()
    stale = RecordBatch([run([0, 1], generation=0), run([0, 1], partition=1)]).current(app)
    assert [message.partition for message in stale] == [1, 1]
    app.flow_control.suspend()
    assert len(RecordBatch([run([2])]).current(app)) == 0  # mid-rebalance: nothing is current
    app.flow_control.resume()
    in_flight = RecordBatch([run([2, 3])]).current(app)
    app.consumer_generation_id = 2  # a rebalance while the agent worked on it
    in_flight.ack(app)
    assert app.commit_offset(TP("usage", 0)) is None
    assert in_flight not in app.consumer._unacked_messages


def test_a_customer_with_several_events_in_a_batch_is_written_once_with_the_final_state() -> None:
    table = Table()
    outputs = Outputs()
    working = WorkingSet(table, KeysByPartition(), outputs, "changelog")
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
    working = WorkingSet(table, KeysByPartition(), Outputs(), "changelog")
    working.run(b"acme", 0, "acme", apply(usage("acme", "e1", END_MS - 5000), 1))
    working.write_back()
    again = working.run(b"acme", 0, "acme", apply(usage("acme", "e1", END_MS - 5000), 1))
    assert again.outcome is Outcome.DUPLICATE
    assert working.write_back() == 0  # nothing changed, nothing written


def test_records_are_read_and_written_in_the_dict_under_fausts_memory_store() -> None:
    """Faust's in-memory store wraps a dict; the working set uses the dict itself (and a
    store without one as it is), so both paths see one and the same records."""
    app = faust.App("test-store", broker="kafka://127.0.0.1:1", store="memory://")
    table = app.Table("customer-state", default=None, key_type=bytes, value_type=bytes)
    store = table.data
    assert isinstance(store.data, dict)

    working = WorkingSet(table, KeysByPartition(), Outputs(), "changelog")
    working.run(b"acme", 0, "acme", apply(usage("acme", "e1", END_MS - 5000), 1))
    working.write_back()
    assert decode_state(store[b"acme"]).events_applied == 1
    assert store.data[b"acme"] == store[b"acme"]
    again = WorkingSet(table, KeysByPartition(), Outputs(), "changelog")
    assert again.run(b"acme", 0, "acme", apply(usage("acme", "e1", END_MS - 5000), 1)).outcome is Outcome.DUPLICATE


def test_beyond_its_capacity_the_least_recently_used_record_is_written_back_first() -> None:
    table = Table()
    outputs = Outputs()
    keys_by_partition = KeysByPartition()
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
    working = WorkingSet(table, KeysByPartition(), Outputs(), "changelog")
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


def test_the_producer_buffer_counts_its_pending_sends() -> None:
    import faust

    from stream.kafka.producer import IdempotentProducer, PendingCountBuffer

    app = faust.App("test-buffer", broker="kafka://127.0.0.1:1", store="memory://")
    app.transport.Producer = IdempotentProducer
    buffer = app.producer.buffer
    assert isinstance(buffer, PendingCountBuffer) and buffer.app is app
    assert buffer.size == 0
    buffer.pending.put_nowait(object())
    assert buffer.size == 1


def test_a_run_that_waits_for_room_leaves_its_partition_fetching_and_is_delivered_once_the_agent_takes_a_batch() -> None:
    """Every input partition feeds the one queue: pausing the partition whose run found it full
    (Faust's way) only left that partition's fetched records out of reach while the agent
    drained the queue. The fetch loop waits for room instead; the sensor still hears of it."""
    import faust

    from stream.processing.topics import raw_schema
    from stream.kafka.batching import BatchingTopic

    async def scenario() -> tuple[list[str], bool, list[int]]:
        app = faust.App("test-deliver", broker="kafka://127.0.0.1:1", store="memory://")
        app.flow_control.resume()  # as after a rebalance
        calls: list[str] = []
        app.sensors.on_topic_buffer_full = lambda tp: calls.append(f"full {tp.topic}[{tp.partition}]")  # type: ignore[method-assign]
        app.consumer.on_buffer_full = lambda tp: calls.append("pause")  # type: ignore[method-assign]
        app.consumer.on_buffer_drop = lambda tp: calls.append("resume")  # type: ignore[method-assign]
        topic = BatchingTopic(app, topics=["usage"], schema=raw_schema(), maxsize=2, batch_limit=10)
        assert await topic.deliver_run(run([0, 1]))  # the queue is full now
        waiting = asyncio.ensure_future(topic.deliver_run(run([2])))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        taken = topic.queue.get_nowait()
        delivered = await asyncio.wait_for(waiting, timeout=1)
        return calls, delivered, [message.offset for message in taken] + [message.offset for message in topic.queue.get_nowait()]

    calls, delivered, offsets = asyncio.run(scenario())
    assert calls == ["full usage[0]"]
    assert delivered and offsets == [0, 1, 2]


def test_the_batch_queue_refuses_single_events_with_a_clear_error() -> None:
    queue = BatchQueue(maxsize=10, flow_control=FlowControlEvent(), batch_limit=5, merge=merge())
    with pytest.raises(TypeError, match="only reader"):
        queue.put_nowait(record(0))


def native_step(event_id: str, at_ms: int, offset: int):
    """A NativeAction through the Rust kernel, as the worker's handle_natively builds it."""
    from scoring import kernel

    native = kernel.build(PARAMETERS, RULES)
    raw = (
        '{"event_id":"%s","type":"usage.session","customer_id":"acme","occurred_at":%d,'
        '"data":{"user_id":"u1","duration_seconds":60}}' % (event_id, at_ms)
    ).encode()

    def run(stored: bytes | None) -> tuple[bytes | None, str]:
        outcome, record, *_ = native.step(stored, "acme", raw, at_ms, None, (1, 0, offset), 32, END_MS)
        return (record if outcome == "applied" else None), outcome

    return run


@pytest.mark.skipif(not __import__("scoring.kernel").kernel.available(), reason="the Rust kernel is not built")
def test_a_record_changed_by_the_kernel_and_by_the_model_in_one_batch_ends_with_every_change() -> None:
    table = Table()
    outputs = Outputs()
    keys_by_partition = KeysByPartition()
    working = WorkingSet(table, keys_by_partition, outputs, "changelog")
    at = END_MS - 3_600_000
    working.run(b"acme", 0, "acme", apply(usage("acme", "e1", at), 1))  # decoded, still open
    assert working.run_native(b"acme", 0, native_step("e2", at + 1000, 2)) == "applied"  # stores the open record first
    assert working.run_native(b"acme", 0, native_step("e2", at + 1000, 3)) == "duplicate"
    working.run(b"acme", 0, "acme", apply(usage("acme", "e3", at + 2000), 4))  # the model continues from the kernel's record
    assert working.write_back() == 2
    assert decode_state(table.data[b"acme"]).events_applied == 3
    # The last changelog record of the key is the newest value.
    assert outputs.pending("changelog")[0][-1] == (b"acme", table.data[b"acme"])
    assert keys_by_partition == {0: {b"acme"}}


def test_a_failing_native_step_changes_nothing() -> None:
    table = Table()
    table.data[b"acme"] = b"stored"
    working = WorkingSet(table, KeysByPartition(), Outputs(), "changelog")

    def unreadable(stored: bytes | None) -> tuple[bytes | None, str]:
        raise ValueError("a record the kernel cannot read")

    with pytest.raises(ValueError):
        working.run_native(b"acme", 0, unreadable)
    assert table.data == {b"acme": b"stored"}
    assert working.write_back() == 0


def test_the_fetch_loop_starts_one_commit_at_a_time_and_does_not_wait_for_it() -> None:
    """A commit writes the changelog and waits for the producer; fetching goes on meanwhile."""

    class Committing:
        _commit_in_background = BulkDeliveryConsumer._commit_in_background

        def __init__(self) -> None:
            self._commit_task = None
            self.started = 0
            self.release = asyncio.Event()
            self.errors: list[str] = []
            self.log = SimpleNamespace(error=lambda message, *args: self.errors.append(message % args))

        async def commit(self) -> bool:
            self.started += 1
            await self.release.wait()
            if self.started == 2:
                raise RuntimeError("broker gone")
            return True

    async def scenario() -> Committing:
        consumer = Committing()
        consumer._commit_in_background()
        consumer._commit_in_background()  # the first is still running: no second one
        await asyncio.sleep(0)
        assert consumer.started == 1
        consumer.release.set()
        await asyncio.sleep(0)
        consumer._commit_in_background()
        await asyncio.sleep(0.01)
        assert consumer.started == 2
        return consumer

    consumer = asyncio.run(scenario())
    assert consumer.errors == ["Committing offsets failed: RuntimeError('broker gone')"]


def test_the_fetch_loop_waits_for_a_commit_still_running_when_the_next_is_due() -> None:
    """Backpressure: the changes of a backlog cannot pile up behind a slow commit. The wait ends
    with the commit (failed or not), and cancelling the fetch loop does not cancel the commit."""

    class Committing:
        _commit_in_background = BulkDeliveryConsumer._commit_in_background
        _wait_for_running_commit = BulkDeliveryConsumer._wait_for_running_commit

        def __init__(self) -> None:
            self._commit_task = None
            self.release = asyncio.Event()
            self.committed = 0
            self.log = SimpleNamespace(error=lambda message, *args: None)

        async def commit(self) -> bool:
            await self.release.wait()
            self.committed += 1
            return True

    async def scenario() -> None:
        consumer = Committing()
        await asyncio.wait_for(consumer._wait_for_running_commit(), 1)  # nothing running: at once
        consumer._commit_in_background()
        waiting = asyncio.ensure_future(consumer._wait_for_running_commit())
        await asyncio.sleep(0.01)
        assert not waiting.done()  # the fetcher is held while the commit runs
        consumer.release.set()
        await asyncio.wait_for(waiting, 1)
        assert consumer.committed == 1

        consumer.release.clear()
        consumer._commit_in_background()
        waiting = asyncio.ensure_future(consumer._wait_for_running_commit())
        await asyncio.sleep(0.01)
        waiting.cancel()  # the worker stops while the fetcher waits
        await asyncio.sleep(0)
        assert not consumer._commit_task.done()
        consumer.release.set()
        await asyncio.wait_for(consumer._commit_task, 1)
        assert consumer.committed == 2

    asyncio.run(scenario())


def test_a_rebalance_waits_for_the_batch_being_applied_and_no_longer() -> None:
    """Its changelog records must be out before the partitions' next owner reads the changelog."""

    async def scenario() -> list[str]:
        in_progress = BatchInProgress()
        assert await in_progress.ended(timeout=0.01)  # no batch: at once
        in_progress.begin()
        assert not await in_progress.ended(timeout=0.01)  # bounded: a stuck batch does not stall the rebalance
        seen: list[str] = []

        async def rebalance() -> None:
            assert await in_progress.ended(timeout=5)
            seen.append("rebalance")

        waiting = asyncio.ensure_future(rebalance())
        await asyncio.sleep(0.01)
        seen.append("batch sent")
        in_progress.end()
        await waiting
        return seen

    assert asyncio.run(scenario()) == ["batch sent", "rebalance"]


def test_erasing_forgets_an_open_or_stored_record_and_its_index_entry_and_queues_a_tombstone() -> None:
    table = Table()
    outputs = Outputs()
    keys_by_partition = KeysByPartition()
    working = WorkingSet(table, keys_by_partition, outputs, "changelog")
    working.run(b"stored", 2, "stored", apply(usage("stored", "s1", END_MS - 5000), 1))
    working.write_back()
    working.run(b"open", 2, "open", apply(usage("open", "o1", END_MS - 5000), 2))  # changed in this batch, not written yet
    assert working.erase(b"stored", 2) and working.erase(b"open", 2)
    assert not working.erase(b"never-seen", 2)
    assert working.write_back() == 0
    assert b"stored" not in table.data and b"open" not in table.data
    assert keys_by_partition[2] == set()
    assert [(key, value) for key, value in outputs.pending("changelog")[2] if value is None] == [(b"stored", None), (b"open", None), (b"never-seen", None)]
    # An event after the erasure starts a new record, without the erased history.
    fresh = working.run(b"stored", 2, "stored", apply(usage("stored", "s2", END_MS - 1000), 3))
    assert fresh.outcome is Outcome.APPLIED and working.write_back() == 1
    assert decode_state(table.data[b"stored"]).events_applied == 1


def test_a_record_of_a_newer_layout_keeps_its_unknown_fields_through_a_batch() -> None:
    import msgspec

    from scoring.state import KNOWN_FIELDS, LAYOUT, LAYOUT_INDEX

    table = Table()
    fields = msgspec.msgpack.decode(encode_state(new_state("acme")))
    fields[LAYOUT_INDEX] = LAYOUT + 1  # written by a future layout, with one more field
    table.data[b"acme"] = msgspec.msgpack.encode([*fields, ["from", "the", "future"]])
    outputs = Outputs()
    working = WorkingSet(table, KeysByPartition(), outputs, "changelog")
    assert working.run(b"acme", 0, "acme", apply(usage("acme", "e1", END_MS - 5000), 1)).outcome is Outcome.APPLIED
    working.write_back()
    written = msgspec.msgpack.decode(table.data[b"acme"])
    assert written[KNOWN_FIELDS:] == [["from", "the", "future"]] and written[LAYOUT_INDEX] == LAYOUT + 1
    assert decode_state(table.data[b"acme"]).events_applied == 1


@pytest.mark.parametrize("unreadable", ["garbage", "short column"])
def test_a_record_that_cannot_be_decoded_is_reported_and_rebuilt_from_the_next_events(caplog: pytest.LogCaptureFixture, unreadable: str) -> None:
    """Bytes that are no record, and a record whose day columns are out of step with its days
    (indexing by day would run past them at every event)."""
    from stream import metrics
    from tests.unit.test_state_layouts import LAYOUT_4, short_column

    table = Table()
    table.data[b"acme"] = b"\xdc\x00\x24garbage" if unreadable == "garbage" else short_column(LAYOUT_4[0].read_bytes())
    before = metrics.REGISTRY.get_sample_value("healthscore_state_records_unreadable_total") or 0.0
    working = WorkingSet(table, KeysByPartition(), Outputs(), "changelog")
    met_at = SimpleNamespace(topic="product-usage", partition=5, offset=77)
    assert working.run(b"acme", 5, "acme", apply(usage("acme", "e1", END_MS - 5000), 1), met_at).outcome is Outcome.APPLIED
    working.write_back()
    assert decode_state(table.data[b"acme"]).events_applied == 1  # a new record, readable again
    assert metrics.REGISTRY.get_sample_value("healthscore_state_records_unreadable_total") == before + 1
    warning = [record.getMessage() for record in caplog.records if "cannot be decoded" in record.getMessage()]
    assert warning and "partition 5" in warning[0] and "product-usage[5]@77" in warning[0]
    assert "garbage" not in warning[0] and "acme" not in warning[0]


def test_a_change_that_cannot_be_encoded_is_left_out_of_the_record_and_reported() -> None:
    """A record that cannot be encoded is never half-written: the action that broke it is
    left out (and reported for the dead-letter topic), the batch's other actions stay."""
    table = Table()
    outputs = Outputs()
    working = WorkingSet(table, KeysByPartition(), outputs, "changelog")
    at = END_MS - 3_600_000
    working.run(b"acme", 0, "acme", apply(usage("acme", "a1", at), 1), record(1))
    apply_then_break = apply(usage("acme", "a2", at + 1000), 2)

    def broken(state):
        result = apply_then_break(state)
        state.events_applied = 2**70  # msgpack cannot encode it: an OverflowError at write-back
        return result

    working.run(b"acme", 0, "acme", broken, record(2))
    working.run(b"acme", 0, "acme", apply(usage("acme", "a3", at + 2000), 3), record(3))
    working.run(b"beta", 0, "beta", apply(usage("beta", "b1", at), 4), record(4))

    assert working.write_back() == 2
    assert [(source.offset, type(error)) for source, error in working.failed] == [(2, OverflowError)]
    acme = decode_state(table.data[b"acme"])
    assert acme.events_applied == 2 and acme.source_offsets[1] == 3  # a1 and a3, not a2
    assert decode_state(table.data[b"beta"]).events_applied == 1
    assert [key for key, _ in outputs.pending("changelog")[0]] == [b"acme", b"beta"]
