"""Records of co-partitioned topics handed over in event-time order, as Kafka Streams does for a task.

A customer's events come on four topics (and its sweep ticks on a fifth), all keyed by
customer and partitioned alike, so partition ``p`` of each holds the same customers.
Applying events commutes (the final score does not depend on their order), but alerts
are evaluated along the way: a worker draining a backlog that read a customer's payment
before the earlier-stamped usage and tickets on the other topics raised other alerts than
the replay, which applies a history in event-time order.

So the buffer between the consumer and the agent keeps each partition's fetched records
apart, and per partition number hands over only records no unread record of the same
partition number can precede: while a topic's partition ``p`` still has records on the
broker (it *lags*) and none of them is buffered, the other topics' records of partition
``p`` wait, at most ``max_wait`` seconds; a partition read to its end does not hold the
others back. What is handed over is sorted by event time (ties by event id), each
partition's records in one contiguous offset range, so acks and commits stay exact.

While records wait, the fetch loop may buffer records of their partition number beyond
the buffer's size (the wait bounds how many): blocking it would keep the awaited records
from ever arriving. An event that still arrives after a later-stamped one of its
partition number was handed over (the wait ran out, or a producer sent it late) is applied as it
comes and counted as out of order: its customer's KPIs are still exact (not its active days,
counted forward only: docs/alerts.md), its alerts are
evaluated at that point of the path. Sweep ticks wait like events but are never counted.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from aiokafka.structs import ConsumerRecord
from faust.types import TP

#: A record's place in event time: (epoch ms, event id); (-1, "") for one that has none (it is refused later).
EventTimeKey = tuple[int, str]
UNKNOWN_TIME: EventTimeKey = (-1, "")


@dataclass
class PartitionBuffer:
    """One topic partition's records not yet handed over, in offset order, with their keys."""

    generation: int
    first_offset: int  # the first offset the next piece handed over accounts for
    records: list[ConsumerRecord] = field(default_factory=list)
    keys: list[EventTimeKey] = field(default_factory=list)
    start: int = 0  # records before this index were handed over
    in_order: bool = True  # every key at least the one before it (as producers should send them)

    def __len__(self) -> int:
        return len(self.records) - self.start

    def extend(self, records: Sequence[ConsumerRecord], keys: list[EventTimeKey]) -> None:
        if self.in_order and keys:
            previous = self.keys[-1] if self.keys else keys[0]
            self.in_order = previous <= keys[0] and all(a <= b for a, b in zip(keys, keys[1:]))
        self.records.extend(records)
        self.keys.extend(keys)

    def prefix_until(self, frontier: EventTimeKey | None) -> int:
        """How many of the next records are stamped at or before ``frontier`` (None: all)."""
        if frontier is None:
            return len(self)
        keys = self.keys
        if self.in_order:
            return bisect_right(keys, frontier, self.start) - self.start
        count = 0
        for index in range(self.start, len(keys)):
            if keys[index] > frontier:
                break
            count += 1
        return count

    def take(self, count: int) -> tuple[int, Sequence[ConsumerRecord], Sequence[EventTimeKey]]:
        """The next ``count`` records (and their keys), with the first offset they account for."""
        begin, end = self.start, self.start + count
        first, records, keys = self.first_offset, self.records[begin:end], self.keys[begin:end]
        self.start = end
        self.first_offset = records[-1].offset + 1
        # Records handed over are not kept: up to 4,096 per partition were (16 input partitions:
        # about 27 MB at rest over 100,000 customers, bench/scale.py, 2026-12-08). Dropping the
        # prefix once it is the larger half moves fewer records than were taken.
        if self.start == len(self.records):
            self.records.clear()
            self.keys.clear()
            self.start = 0
        elif self.start > 256 and self.start * 2 > len(self.records):
            del self.records[: self.start], self.keys[: self.start]
            self.start = 0
        return first, records, keys


class RecordRun:
    """Records of one partition in offset order: as fetched, or as handed over to the agent.

    ``first_offset`` is the first offset the run accounts for: it can lie before the
    first record's, when offsets in between hold no record for the consumer
    (transaction markers, compacted records); acking the run acks those too, as
    Faust's gap tracking would.
    """

    __slots__ = ("tp", "records", "first_offset", "generation_id")

    def __init__(self, tp: TP, records: Sequence[ConsumerRecord], first_offset: int, generation_id: int) -> None:
        self.tp = tp
        self.records = records
        self.first_offset = first_offset
        self.generation_id = generation_id

    def __len__(self) -> int:
        return len(self.records)


@dataclass
class Handover:
    """What the agent gets: a run per partition (for acks) and their records merged in event-time order."""

    runs: list[RecordRun]
    records: list[ConsumerRecord]
    out_of_order: dict[str, int]  # topic -> records stamped before one already handed over


class EventTimeMerge:
    """The buffered records of a set of co-partitioned topics, per partition number.

    ``key`` gives a record's event time; ``lagging`` says whether a partition still has
    records on the broker that are not buffered here; ``ticks`` is the topic whose records
    order like events but are never counted out of order.
    """

    def __init__(
        self,
        topics: Iterable[str],
        key: Callable[[ConsumerRecord], EventTimeKey],
        lagging: Callable[[TP], bool],
        max_wait: float,
        ticks: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        per_partition: int | None = None,
        hold: Callable[[TP], None] | None = None,
        release: Callable[[TP], None] | None = None,
    ) -> None:
        self.topics = tuple(topics)
        self.key = key
        self.lagging = lagging
        self.max_wait = max_wait
        self.ticks = ticks
        self.clock = clock
        self.size = 0
        self.per_partition = per_partition
        self._hold = hold
        self._release = release
        self._held: set[TP] = set()  # partitions with ``per_partition`` records buffered: not fetched meanwhile
        self._changes = 0  # records added or taken so far: a plan made since is still good
        self._last_plan: tuple[int, dict[int, EventTimeKey | None]] = (-1, {})
        self._buffers: dict[TP, PartitionBuffer] = {}
        self._waiting_since: dict[int, float] = {}  # partition number -> when its records began to wait
        # Partition number -> (consumer generation, latest event time handed over in it).
        self._latest: dict[int, tuple[int, EventTimeKey]] = {}

    def buffered(self, tp: TP) -> int:
        buffer = self._buffers.get(tp)
        return len(buffer) if buffer is not None else 0

    def add(self, tp: TP, records: Sequence[ConsumerRecord], first_offset: int, generation: int) -> None:
        buffer = self._buffers.get(tp)
        if buffer is None or buffer.generation != generation or not len(buffer):
            if buffer is not None:
                self.size -= len(buffer)  # an older generation's: the rebalance starts again from the commits
            buffer = self._buffers[tp] = PartitionBuffer(generation, first_offset)
        key = self.key
        self._changes += 1
        buffer.extend(records, [key(record) for record in records])
        self.size += len(records)
        if self.per_partition is not None and len(buffer) >= self.per_partition and tp not in self._held:
            self._held.add(tp)
            if self._hold is not None:
                self._hold(tp)

    def _release_below_limit(self) -> None:
        for tp in [tp for tp in self._held if self.buffered(tp) < (self.per_partition or 0)]:
            self._held.discard(tp)
            if self._release is not None:
                self._release(tp)

    def frontier(self, partition: int) -> tuple[bool, EventTimeKey | None]:
        """Whether partition number ``partition`` must wait for a lagging partition with nothing
        buffered, and otherwise the latest event time that may be handed over (None: any)."""
        frontier: EventTimeKey | None = None
        for topic in self.topics:
            tp = TP(topic, partition)
            # Ticks are stamped when sent, after what is buffered: waiting for one gains nothing.
            if topic == self.ticks or not self.lagging(tp):
                continue
            buffer = self._buffers.get(tp)
            if buffer is None or not len(buffer):
                return True, None
            last = buffer.keys[-1]
            if frontier is None or last < frontier:
                frontier = last
        return False, frontier

    def _partitions(self) -> list[int]:
        return sorted({tp.partition for tp, buffer in self._buffers.items() if len(buffer)})

    def _plan(self, now: float) -> dict[int, EventTimeKey | None]:
        """Per partition number with records that may go now, the frontier they go up to."""
        plan: dict[int, EventTimeKey | None] = {}
        partitions = self._partitions()
        self._forget_waits_but(partitions)
        for partition in partitions:
            blocked, frontier = self.frontier(partition)
            if not blocked and self._has_any(partition, frontier):
                self._waiting_since.pop(partition, None)
                plan[partition] = frontier
                continue
            since = self._waiting_since.setdefault(partition, now)
            if now - since >= self.max_wait:
                plan[partition] = None  # waited long enough: what is here goes, in order
        return plan

    def _forget_waits_but(self, partitions: list[int]) -> None:
        for stale in self._waiting_since.keys() - set(partitions):
            del self._waiting_since[stale]

    @property
    def waiting(self) -> bool:
        """Whether records are held back for a partition with nothing buffered (as of the last look)."""
        return bool(self._waiting_since)

    def ready(self) -> bool:
        """Whether anything can be handed over now (remembered for the ``take`` that follows)."""
        if not self.size:
            return False
        self._last_plan = (self._changes, self._plan(self.clock()))
        return bool(self._last_plan[1])

    def next_deadline(self) -> float | None:
        """When the earliest wait runs out (clock time), if any partition number is waiting."""
        return min(self._waiting_since.values()) + self.max_wait if self._waiting_since else None

    def _has_any(self, partition: int, frontier: EventTimeKey | None) -> bool:
        for tp in self._tps(partition):
            buffer = self._buffers[tp]
            if len(buffer) and (frontier is None or buffer.keys[buffer.start] <= frontier):
                return True
        return False

    def _tps(self, partition: int) -> list[TP]:
        return [tp for tp in (TP(topic, partition) for topic in self.topics) if tp in self._buffers]

    def take(self, limit: int) -> Handover:
        """Up to ``limit`` records that may go now, each partition number's merged by event time."""
        handover = Handover([], [], {})
        room = limit
        changes, plan = self._last_plan
        if changes != self._changes:  # records came or went since ``ready``
            plan = self._plan(self.clock())
        self._changes += 1
        for partition, frontier in plan.items():
            if room <= 0:
                break
            room -= self._take_partition(partition, self._counts(partition, frontier, room), handover)
        self._forget_waits_but(self._partitions())
        if self._held:
            self._release_below_limit()
        return handover

    def _counts(self, partition: int, frontier: EventTimeKey | None, room: int) -> dict[TP, int]:
        """How many records of each partition go: those up to the frontier, the earliest ``room`` of them."""
        counts = {tp: self._buffers[tp].prefix_until(frontier) for tp in self._tps(partition)}
        if sum(counts.values()) <= room:
            return counts
        buffers = [self._buffers[tp] for tp in counts]
        candidates = sorted(
            (key, index)
            for index, (buffer, count) in enumerate(zip(buffers, counts.values()))
            for key in buffer.keys[buffer.start : buffer.start + count]
        )
        chosen = Counter(index for _, index in candidates[:room])
        return {tp: chosen[index] for index, tp in enumerate(counts)}

    def _take_partition(self, partition: int, counts: dict[TP, int], handover: Handover) -> int:
        merged: list[tuple[EventTimeKey, ConsumerRecord]] = []
        generation = 0
        sources = 0
        in_order = True
        for tp, count in counts.items():
            if not count:
                continue
            buffer = self._buffers[tp]
            generation = max(generation, buffer.generation)
            in_order = in_order and buffer.in_order
            first, records, keys = buffer.take(count)
            handover.runs.append(RecordRun(tp, records, first, buffer.generation))
            merged.extend(zip(keys, records))
            sources += 1
        if not merged:
            return 0
        if sources > 1 or not in_order:
            merged.sort(key=_first)
        self.size -= len(merged)
        self._count_out_of_order(partition, generation, merged, handover.out_of_order)
        handover.records.extend(record for _, record in merged)
        return len(merged)

    def _count_out_of_order(
        self, partition: int, generation: int, merged: list[tuple[EventTimeKey, ConsumerRecord]], counts: dict[str, int]
    ) -> None:
        # After a rebalance records are read again from the commits: the duplicates are not late.
        known_in, latest = self._latest.get(partition, (generation, UNKNOWN_TIME))
        if known_in != generation:
            latest = UNKNOWN_TIME
        for key, record in merged:
            if record.topic == self.ticks or key[0] < 0:
                continue
            if key < latest:
                counts[record.topic] = counts.get(record.topic, 0) + 1
            else:
                latest = key
        self._latest[partition] = (generation, latest)

    def drop_all(self) -> list[RecordRun]:
        """Everything still buffered, as pieces to fetch again; the buffers are emptied."""
        dropped = []
        for tp, buffer in self._buffers.items():
            if len(buffer):
                first, records, _ = buffer.take(len(buffer))
                dropped.append(RecordRun(tp, records, first, buffer.generation))
        self._buffers.clear()
        self._waiting_since.clear()
        self.size = 0
        self._changes += 1
        self._release_below_limit()
        return dropped


def _first(item: tuple[EventTimeKey, ConsumerRecord]) -> EventTimeKey:
    return item[0]
