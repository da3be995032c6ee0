"""The merge of co-partitioned topics by event time: what waits, for how long, in which order it goes."""

from __future__ import annotations

import asyncio
import gc
import weakref

import msgspec
from aiokafka.structs import ConsumerRecord
from faust.types import TP
from mode.utils.queues import FlowControlEvent

from stream.kafka.batching import BatchQueue
from stream.kafka.event_time import UNKNOWN_TIME, EventTimeMerge, RecordRun
from stream.processing.event_time import event_time_key
from stream.processing.sweep import SweepTick

TOPICS = ["purchases", "usage", "sweep"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def rec(topic: str, offset: int, at: int, partition: int = 0) -> ConsumerRecord:
    return ConsumerRecord(topic, partition, offset, 0, 0, b"acme", str(at).encode(), None, 0, 2, [])


def by_value(record: ConsumerRecord) -> tuple[int, str]:
    return (int(record.value), "")


def new_merge(lagging: set[TP], clock: Clock, max_wait: float = 2.0) -> EventTimeMerge:
    return EventTimeMerge(TOPICS, by_value, lambda tp: tp in lagging, max_wait, ticks="sweep", clock=clock)


def add(merge: EventTimeMerge, topic: str, stamps: list[int], first_offset: int = 0, partition: int = 0) -> None:
    records = [rec(topic, first_offset + i, at, partition) for i, at in enumerate(stamps)]
    merge.add(TP(topic, partition), records, first_offset, 1)


def stamps(handover) -> list[tuple[str, int]]:
    return [(record.topic, int(record.value)) for record in handover.records]


def test_only_what_no_unread_record_can_precede_goes_and_in_event_time_order() -> None:
    clock = Clock()
    merge = new_merge({TP("purchases", 0), TP("usage", 0)}, clock)
    add(merge, "purchases", [1, 3, 5])
    add(merge, "usage", [2, 4])
    handover = merge.take(100)
    # usage's unread records are stamped 4 or later: purchases' 5 waits for them.
    assert stamps(handover) == [("purchases", 1), ("usage", 2), ("purchases", 3), ("usage", 4)]
    assert [(run.tp.topic, run.first_offset, len(run.records)) for run in handover.runs] == [("purchases", 0, 2), ("usage", 0, 2)]
    assert merge.size == 1 and not merge.ready()
    add(merge, "usage", [6], first_offset=2)
    assert stamps(merge.take(100)) == [("purchases", 5)]
    assert handover.out_of_order == {}


def test_records_handed_over_are_not_kept_by_the_merge() -> None:
    """Up to 4,096 a partition were: about 27 MB at rest over 100,000 customers (16 input
    partitions), after every event was applied."""
    merge = new_merge(set(), Clock())
    records = [rec("purchases", offset, offset) for offset in range(600)]
    merge.add(TP("purchases", 0), records, 0, 1)
    alive = [weakref.ref(record) for record in records]
    del records
    assert len(merge.take(400).records) == 400
    gc.collect()
    assert sum(ref() is not None for ref in alive[:400]) == 0  # the larger half handed over: dropped
    assert sum(ref() is not None for ref in alive) == 200
    assert len(merge.take(1000).records) == 200
    gc.collect()
    assert all(ref() is None for ref in alive)


def test_records_wait_for_a_lagging_partition_with_nothing_buffered_at_most_max_wait() -> None:
    clock = Clock()
    merge = new_merge({TP("usage", 0)}, clock, max_wait=2.0)
    add(merge, "purchases", [10, 11])
    assert not merge.ready()
    assert merge.next_deadline() == 102.0
    clock.now = 101.9
    assert not merge.ready()
    clock.now = 102.0
    assert merge.ready()
    assert stamps(merge.take(100)) == [("purchases", 10), ("purchases", 11)]
    assert merge.next_deadline() is None


def test_a_partition_read_to_its_end_holds_nothing_back() -> None:
    merge = new_merge(set(), Clock())
    add(merge, "purchases", [10, 30])
    add(merge, "usage", [20])
    assert merge.ready()
    assert stamps(merge.take(100)) == [("purchases", 10), ("usage", 20), ("purchases", 30)]


def test_while_records_wait_the_queue_takes_up_to_twice_its_size_so_the_awaited_ones_can_come() -> None:
    async def scenario() -> list[bool]:
        lagging = {TP("usage", 0)}
        merge = EventTimeMerge(TOPICS, by_value, lambda tp: tp in lagging, max_wait=60, ticks="sweep")
        queue = BatchQueue(maxsize=4, flow_control=FlowControlEvent(), batch_limit=10, merge=merge)
        queue.put_nowait(RecordRunFor("purchases", [10, 11, 12, 13]))
        full_before = queue.full()
        assert queue.empty()  # purchases wait for usage, which has nothing buffered
        full_while_waiting = queue.full()
        queue.put_nowait(RecordRunFor("purchases", [14, 15, 16, 17], first=4))
        full_at_twice = queue.full()
        lagging.clear()  # usage read to its end: nothing to wait for
        return [full_before, full_while_waiting, full_at_twice, queue.empty()]

    assert asyncio.run(scenario()) == [True, False, True, False]


def test_each_partition_number_is_merged_on_its_own() -> None:
    merge = new_merge({TP("usage", 0)}, Clock())
    add(merge, "purchases", [10], partition=0)  # waits for usage[0]
    add(merge, "purchases", [50], partition=1)
    add(merge, "usage", [40], partition=1)
    assert stamps(merge.take(100)) == [("usage", 40), ("purchases", 50)]
    assert merge.size == 1


def test_a_record_arriving_after_a_later_stamped_one_is_counted_out_of_order_but_ticks_never_are() -> None:
    merge = new_merge(set(), Clock())
    add(merge, "purchases", [10, 20])
    assert merge.take(100).out_of_order == {}
    add(merge, "usage", [15, 25])
    add(merge, "sweep", [5])
    handover = merge.take(100)
    assert stamps(handover) == [("sweep", 5), ("usage", 15), ("usage", 25)]
    assert handover.out_of_order == {"usage": 1}


def test_a_sweep_tick_waits_for_the_events_before_it() -> None:
    clock = Clock()
    merge = new_merge({TP("usage", 0)}, clock)
    add(merge, "sweep", [1000])
    add(merge, "usage", [10, 20])
    assert stamps(merge.take(100)) == [("usage", 10), ("usage", 20)]
    assert not merge.ready()  # usage may still have events before the tick


def test_the_limit_cuts_each_partition_at_a_prefix_and_every_offset_is_accounted_once() -> None:
    merge = new_merge(set(), Clock())
    add(merge, "purchases", [1, 4, 5, 8])
    add(merge, "usage", [2, 3, 6, 7])
    first = merge.take(3)
    second = merge.take(100)
    assert stamps(first) == [("purchases", 1), ("usage", 2), ("usage", 3)]
    assert [int(r.value) for r in second.records] == [4, 5, 6, 7, 8]
    spans = sorted((run.tp.topic, run.first_offset, run.records[-1].offset) for h in (first, second) for run in h.runs)
    assert spans == [("purchases", 0, 0), ("purchases", 1, 3), ("usage", 0, 1), ("usage", 2, 3)]


def test_equal_stamps_beyond_the_limit_still_split_at_the_limit() -> None:
    merge = new_merge(set(), Clock())
    add(merge, "purchases", [7, 7, 7])
    add(merge, "usage", [7, 7])
    assert len(merge.take(3).records) == 3
    assert merge.size == 2


def test_what_is_dropped_is_one_run_per_partition_from_its_first_unhanded_offset() -> None:
    merge = new_merge({TP("usage", 0)}, Clock())
    add(merge, "purchases", [1, 2, 9], first_offset=5)
    add(merge, "usage", [3])
    merge.take(100)
    dropped = merge.drop_all()
    assert [(run.tp.topic, run.first_offset, [r.offset for r in run.records]) for run in dropped] == [("purchases", 7, [7])]
    assert merge.size == 0


def test_the_queue_wakes_its_reader_when_the_wait_runs_out() -> None:
    async def scenario() -> list[int]:
        merge = EventTimeMerge(TOPICS, by_value, lambda tp: tp.topic == "usage", max_wait=0.2, ticks="sweep")
        queue = BatchQueue(maxsize=100, flow_control=FlowControlEvent(), batch_limit=10, merge=merge)
        queue.put_nowait(RecordRunFor("purchases", [10, 11]))
        assert queue.empty()
        batch = await asyncio.wait_for(queue.get(), timeout=5)
        return [int(record.value) for record in batch]

    assert asyncio.run(scenario()) == [10, 11]


def RecordRunFor(topic: str, stamps: list[int], first: int = 0) -> RecordRun:
    return RecordRun(TP(topic, 0), [rec(topic, first + i, at) for i, at in enumerate(stamps)], first, 1)


def test_the_event_time_of_a_raw_record() -> None:
    key = event_time_key("ticks", 300_000, clock=lambda: 1_800_000_000.0)

    def of(value: bytes | None, topic: str = "usage") -> tuple[int, str]:
        return key(ConsumerRecord(topic, 0, 0, 0, 0, b"k", value, None, 0, 0, []))

    assert of(b'{"event_id":"e1","occurred_at":"2026-10-01T00:00:00.250Z","data":{}}') == (1_790_812_800_250, "e1")
    assert of(b'{"occurred_at":"2026-10-01T02:00:00+02:00","event_id":"e2"}') == (1_790_812_800_000, "e2")
    assert of(b'{"event_id":"e3","occurred_at":1790812800000}') == (1_790_812_800_000, "e3")
    for refused in (None, b"", b"not json", b"[]", b'{"occurred_at":"yesterday"}', b'{"occurred_at":"2026-10-01T00:00:00"}', b'{"occurred_at":true}', b"\xff\xfe"):
        assert of(refused) == UNKNOWN_TIME, refused
    assert of(msgspec.json.encode(SweepTick(1_790_812_800_000, 1.0)), topic="ticks") == (1_790_812_800_000, "")
    # Beyond max_future_skew ahead of the clock: unknown time (validation refuses the event),
    # never the partition's position; just within it, the time itself.
    assert of(b'{"event_id":"e4","occurred_at":1800000300000}') == (1_800_000_300_000, "e4")
    assert of(b'{"event_id":"e5","occurred_at":1800000300001}') == UNKNOWN_TIME
    assert of(b'{"event_id":"e6","occurred_at":"2031-01-01T00:00:00Z"}') == UNKNOWN_TIME
    assert of(b'{"event_id":"e7","occurred_at":1000000000000000000000000000000}') == UNKNOWN_TIME
    assert of(msgspec.json.encode(SweepTick(1_800_000_300_001, 1.0)), topic="ticks") == UNKNOWN_TIME


def test_a_partition_with_enough_buffered_is_fetched_no_more_until_the_agent_took_some() -> None:
    """One topic far ahead in a backlog (usage: most events) must leave room in the buffer for
    the topics the merge waits for; Faust's hold on a partition (its stream buffer full) does it."""
    held: list[str] = []
    merge = EventTimeMerge(
        TOPICS, by_value, lambda tp: False, max_wait=1.0, ticks="sweep", clock=Clock(), per_partition=3,
        hold=lambda tp: held.append(f"hold {tp.topic}"), release=lambda tp: held.append(f"release {tp.topic}"),
    )
    add(merge, "usage", [1, 2])
    assert held == []
    add(merge, "usage", [3, 4], first_offset=2)
    add(merge, "usage", [5], first_offset=4)
    assert held == ["hold usage"]  # once
    merge.take(2)
    assert held == ["hold usage"]  # 3 still buffered
    merge.take(1)
    assert held == ["hold usage", "release usage"]
    add(merge, "usage", [6, 7], first_offset=5)
    merge.drop_all()
    assert held == ["hold usage", "release usage", "hold usage", "release usage"]


def test_records_a_producer_sent_out_of_order_in_one_partition_go_sorted_and_are_counted() -> None:
    merge = new_merge({TP("usage", 0)}, Clock())
    add(merge, "purchases", [10, 30, 20, 40])
    add(merge, "usage", [35])
    handover = merge.take(100)
    # Up to usage's 35: purchases' prefix stops at its first record after 35 (offsets stay contiguous).
    assert stamps(handover) == [("purchases", 10), ("purchases", 20), ("purchases", 30), ("usage", 35)]
    assert handover.out_of_order == {}
    add(merge, "purchases", [5], first_offset=4)
    add(merge, "usage", [50], first_offset=1)
    late = merge.take(100)
    assert stamps(late) == [("purchases", 5), ("purchases", 40), ("usage", 50)]
    assert late.out_of_order == {"purchases": 1}
