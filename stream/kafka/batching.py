"""Records enter the agent as whole fetches, not one at a time.

Faust hands a stream one event per iteration, and before that makes a Message and
an Event per record, routes each through the conductor and tracks and acks each
one: several event-loop turns, task switches and a dozen small objects per record,
which caps an agent that does nothing at a few thousand events per second here.

For the agent's own topics (:class:`BatchingTopic`) the consumer instead puts each
partition's fetched aiokafka records on the channel's queue as one
:class:`RecordRun`, with Faust's flow control applied per run, and the queue hands
the stream everything buffered as one :class:`RecordBatch`. Faust neither tracks nor
acks such a value: the batch does, once the agent has finished with it, by marking
the offset range of each of its runs as acked (:meth:`BulkDeliveryConsumer.ack_run`,
one entry per run where Faust keeps three objects per offset), so Faust's commits
(after the commit hook has written the changelog and Faust has flushed the producer)
advance exactly as if every record had been acked one by one. Any other topic the
consumer reads (table changelogs during recovery) takes Faust's per-record path
unchanged.

Faust's fetch loop also wraps each record's delivery in ``wait_first`` (two new
tasks and several loop turns per record) so that a delivery blocked on a full buffer
cannot outlive a rebalance. A delivery here only blocks when the buffer is full,
which the worker's settings make rare (``broker_max_poll_records`` well under
``stream_buffer_maxsize``), and the loop checks for a rebalance between runs.

Fetched records that never reach the agent are fetched again (:class:`Refetches`).
Faust clears the stream buffers whenever flow resumes, and it resumes flow once more
at the end of a table recovery, after it has sought the partitions to their committed
offsets: runs fetched in between were dropped while the consumer's position stayed
past them (and aiokafka does not seek at all to a committed offset of 0), so those
events were silently skipped until the next rebalance, or lost once a later commit
passed them. The same holds for a run whose wait for room in a full buffer is
cancelled, and for records of a partition Faust had paused when they arrived.

Back-pressure is the fetch loop waiting for room in the queue, not Faust's pausing
of single partitions at 80 % of the buffer: every input partition feeds this one
queue, so a paused partition only left its fetched records in aiokafka's buffer,
out of reach, while the agent drained the queue, and Faust's next ``getmany`` saw
the partition resumed only after its one-second wait for other records ran out.
In a backlog that starved the agent for half of the time (bench/throughput.py,
2026-11-30: 26,000 events/s, the worker at half a core; 34,600 without pausing).

The event-time merge (stream/kafka/event_time.py) needs one exception: a partition with
a share of the buffer already waiting (a topic far ahead in event time, as usage is in a
backlog) is held back the way Faust holds a partition whose buffer is full, so the fetch
loop goes on fetching the topics the merge waits for; while one is held, ``getmany``
waits 20 ms, not a second, for other records, so a held partition comes back at once.
Without the hold, usage filled the buffer and the other topics came only once the
merge's wait ran out (2 s per partition at each start, bench/throughput.py, 2026-12-03).
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence

import faust
from aiokafka.consumer.fetcher import FetchResult
from aiokafka.errors import IllegalStateError
from aiokafka.structs import ConsumerRecord
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ack_lock
from mode.utils.futures import notify
from mode.utils.queues import ThrowableQueue

from stream import metrics
from stream.kafka.event_time import EventTimeKey, EventTimeMerge, RecordRun


class RecordBatch:
    """Records handed to the agent at once: ``records`` in the order to apply them (event time,
    stream/kafka/event_time.py), ``runs`` the offset range of each partition they come from.

    While the agent works on it, the batch sits in Faust's set of unacked messages, so
    anything that waits for the streams to finish (``Consumer.wait_empty``) waits for it.
    """

    __slots__ = ("runs", "records", "acked", "__weakref__")

    def __init__(self, runs: list[RecordRun], records: list[ConsumerRecord] | None = None) -> None:
        self.runs = runs
        self.records = records if records is not None else [record for run in runs for record in run.records]
        self.acked = False

    @property
    def refcount(self) -> int:
        """Faust logs this for messages it is waiting for."""
        return len(self)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[ConsumerRecord]:
        return iter(self.records)

    def current(self, app: faust.App) -> RecordBatch:
        """The runs of the current consumer generation, tracked until :meth:`ack`.

        Runs fetched before a rebalance are dropped without an ack: after every
        rebalance Faust seeks each partition back to its committed offset, so they are
        read again, by this worker or by the partition's new owner.
        """
        generation = app.consumer_generation_id
        kept = [run for run in self.runs if run.generation_id == generation] if app.flow_control.is_active() else []
        if len(kept) == len(self.runs):
            batch = RecordBatch(kept, self.records)
        elif not kept:
            batch = RecordBatch([], [])
        else:
            stale = {run.tp for run in self.runs if run.generation_id != generation}
            batch = RecordBatch(kept, [record for record in self.records if TP(record.topic, record.partition) not in stale])
        app.consumer._unacked_messages.add(batch)
        # What Faust's stream sensor records per event; its consumer thread logs a partition
        # whose stream has not taken anything for a while as stuck.
        inbound = app.monitor.stream_inbound_time
        now = time.monotonic()
        for run in batch.runs:
            inbound[run.tp] = now
        return batch

    def ack(self, app: faust.App) -> None:
        """Done with every record: their offsets may be committed (Faust flushes the producer first).

        If a rebalance happened meanwhile, nothing is acked: the partitions may belong
        to another worker now, and re-reading from the committed offset is safe.
        """
        consumer = app.consumer
        with ack_lock:
            if not self.acked and app.consumer_generation_id == self._generation():
                for run in self.runs:
                    consumer.ack_run(run.tp, run.first_offset, run.records[-1].offset)
            self.acked = True
            consumer._unacked_messages.discard(self)
            notify(consumer._waiting_for_ack)

    def still_current(self, app: faust.App) -> bool:
        """Whether no rebalance began since the batch was taken: its partitions are still this worker's."""
        return app.flow_control.is_active() and (not self.runs or app.consumer_generation_id == self._generation())

    def _generation(self) -> int | None:
        return self.runs[0].generation_id if self.runs else None


class BatchInProgress:
    """Whether the agent is applying a batch, so a rebalance can wait for it to end.

    Faust does not wait for its streams when partitions are revoked (the worker runs
    with ``stream_wait_empty`` off), so a batch still being applied sent its changelog
    records after the revoke, when the partitions' next owner may already be reading
    the changelog back.
    """

    def __init__(self) -> None:
        self._idle = asyncio.Event()
        self._idle.set()

    def begin(self) -> None:
        self._idle.clear()

    def end(self) -> None:
        self._idle.set()

    async def ended(self, timeout: float) -> bool:
        """Waits until no batch is being applied; False if one still was after ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True


class Refetches:
    """Partitions whose fetched records were dropped before the agent took them, each
    with the earliest offset to fetch again from.

    Per partition, runs reach the buffer in offset order, so everything before the
    earliest dropped run went to the agent. A rebalance starts every partition again
    from its committed offset, so what was dropped in an older consumer generation
    needs nothing.
    """

    def __init__(self) -> None:
        self._pending: dict[TP, tuple[int, int]] = {}  # partition -> (generation, offset)

    def __bool__(self) -> bool:
        return bool(self._pending)

    def waiting(self, tp: TP, generation: int) -> bool:
        """Whether records of ``tp`` fetched in ``generation`` predate a seek back still due."""
        known = self._pending.get(tp)
        return known is not None and known[0] == generation

    def add(self, tp: TP, offset: int, generation: int) -> None:
        known = self._pending.get(tp)
        if known is None or known[0] < generation or (known[0] == generation and offset < known[1]):
            self._pending[tp] = (generation, offset)

    def take(self, generation: int, assigned: Iterable[TP]) -> dict[TP, int]:
        """The seeks still due (this generation, partitions still assigned); forgets them all."""
        pending, self._pending = self._pending, {}
        assigned = set(assigned)
        return {tp: offset for tp, (dropped_in, offset) in pending.items() if dropped_in == generation and tp in assigned}


class BatchQueue(ThrowableQueue):
    """A channel queue of :class:`RecordRun` values whose ``get`` returns what may be applied
    now as one :class:`RecordBatch`, merged by event time (:class:`EventTimeMerge`).

    Its size counts records, not runs, so ``stream_buffer_maxsize`` means records: the
    fetch loop waits for room once that many are buffered. While records are held back
    for a lagging partition, the agent is woken when the wait runs out.
    """

    #: How often a queue holding records back looks again whether a lagging partition caught up.
    recheck_seconds = 0.05

    def __init__(
        self,
        *args: Any,
        batch_limit: int,
        merge: EventTimeMerge,
        on_dropped: Callable[[list[RecordRun]], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.batch_limit = batch_limit
        self.merge = merge
        self.on_dropped = on_dropped
        self._recheck: asyncio.TimerHandle | None = None

    def qsize(self) -> int:
        return self.merge.size

    def full(self) -> bool:
        """While records wait for a partition with nothing buffered, the fetch loop must go on
        fetching what they wait for: the buffer then takes up to twice its size."""
        limit = self.maxsize * 2 if self.merge.waiting else self.maxsize
        return self.merge.size >= limit

    def empty(self) -> bool:
        if self._errors:
            return False
        if self.merge.ready():
            return False
        if self.merge.size:
            self._recheck_later()
            while self._putters and not self.full():  # type: ignore[attr-defined]
                self._wakeup_next(self._putters)  # type: ignore[attr-defined]
        return True

    def _recheck_later(self) -> None:
        if self._recheck is not None:
            return
        delay = self.recheck_seconds
        deadline = self.merge.next_deadline()
        if deadline is not None:
            delay = min(delay, max(0.0, deadline - self.merge.clock()))

        def wake() -> None:
            self._recheck = None
            self._wakeup_next(self._getters)  # type: ignore[attr-defined]

        self._recheck = asyncio.get_event_loop().call_later(delay, wake)

    def _put(self, run: RecordRun) -> None:  # type: ignore[override]
        if not isinstance(run, RecordRun):
            # Faust's conductor delivers single events to a channel that shares its
            # partitions with another; this queue only takes whole runs.
            raise TypeError(f"a BatchingTopic must be the only reader of its topics; got {type(run).__name__}")
        self.merge.add(run.tp, run.records, run.first_offset, run.generation_id)

    def _get(self) -> RecordBatch:  # type: ignore[override]
        handover = self.merge.take(self.batch_limit)
        for topic, count in handover.out_of_order.items():
            metrics.EVENTS_OUT_OF_ORDER.labels(topic).inc(count)
        # Wake every producer that waited on a full queue, not only the first.
        while self._putters and not self.full():  # type: ignore[attr-defined]
            self._wakeup_next(self._putters)  # type: ignore[attr-defined]
        return RecordBatch(handover.runs, handover.records)

    def clear(self) -> None:
        """Faust clears the buffer when flow resumes; the runs it held are reported to be fetched again."""
        dropped = self.merge.drop_all()
        super().clear()
        if dropped and self.on_dropped is not None:
            self.on_dropped(dropped)


def _no_event_time(record: ConsumerRecord) -> EventTimeKey:
    return (record.timestamp, "")


class BatchingTopic(faust.Topic):
    """A topic whose iterator (the agent's channel) yields :class:`RecordBatch` values.

    ``event_time`` gives a record's event time for the merge of its co-partitioned topics
    (the record's Kafka timestamp when not given); ``ticks`` names the topic of sweep
    ticks; ``max_wait`` bounds how long records wait for a lagging partition.
    """

    def __init__(
        self,
        *args: Any,
        batch_limit: int = 2000,
        event_time: Callable[[ConsumerRecord], EventTimeKey] = _no_event_time,
        ticks: str | None = None,
        max_wait: float = 1.0,
        **kwargs: Any,
    ) -> None:
        self.batch_limit = batch_limit
        self.event_time = event_time
        self.ticks = ticks
        self.max_wait = max_wait
        super().__init__(*args, **kwargs)

    def _clone_args(self) -> dict:
        return {
            **super()._clone_args(),
            "batch_limit": self.batch_limit,
            "event_time": self.event_time,
            "ticks": self.ticks,
            "max_wait": self.max_wait,
        }

    @property
    def queue(self) -> ThrowableQueue:
        if self._queue is None:
            maxsize = self.maxsize if self.maxsize is not None else self.app.conf.stream_buffer_maxsize
            # Per partition, records buffered beyond which it is fetched no more until the agent
            # took some: one topic far ahead in a backlog must leave room for the others.
            per_partition = max(500, maxsize // max(1, len(self.topics) * (self.partitions or 1)))
            merge = EventTimeMerge(
                self.topics, self.event_time, self._lagging, self.max_wait, ticks=self.ticks,
                per_partition=per_partition, hold=self._hold, release=self._release,
            )
            self._queue = BatchQueue(
                maxsize=maxsize,
                flow_control=self.app.flow_control,
                clear_on_resume=True,
                batch_limit=self.batch_limit,
                merge=merge,
                on_dropped=self._fetch_again,
            )
        return self._queue

    def _lagging(self, tp: TP) -> bool:
        consumer = self.app.consumer
        return isinstance(consumer, BulkDeliveryConsumer) and consumer.lagging(tp)

    def _hold(self, tp: TP) -> None:
        consumer = self.app.consumer
        if isinstance(consumer, BulkDeliveryConsumer):
            consumer.hold(tp)

    def _release(self, tp: TP) -> None:
        consumer = self.app.consumer
        if isinstance(consumer, BulkDeliveryConsumer):
            consumer.release(tp)

    def _fetch_again(self, runs: list[RecordRun]) -> None:
        consumer = self.app.consumer
        if isinstance(consumer, BulkDeliveryConsumer):
            for run in runs:
                consumer.fetch_again(run.tp, run.first_offset, run.generation_id, len(run.records))

    async def deliver_run(self, run: RecordRun) -> bool:
        """What Faust's conductor does for each record, once for the run; False if a rebalance dropped it.

        Waits while the queue is full, with the partition left active (see the module's docstring).
        """
        app = self.app
        await app.flow_control.acquire()  # suspended during a rebalance
        await app.producer.buffer.wait_until_ebb()  # the agent's own sends are not piling up
        queue = self.queue
        # A partition with nothing buffered may be what the others of its number wait for; and
        # while they wait, the fetch loop must go on to fetch what they wait for.
        if not queue.full() or not queue.merge.buffered(run.tp):
            queue.force_put_nowait(run)
            return True
        app.sensors.on_topic_buffer_full(run.tp)

        # In a task of its own, as Faust's conductor does: a rebalance clears the queue and
        # cancels its waiting producers, which must not cancel the fetch loop.
        put = asyncio.ensure_future(queue.put(run))
        await asyncio.wait([put])
        return not put.cancelled() and put.exception() is None


class FetchTunedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, with the consumer's own fetch wait instead of Faust's fixed 1.5 s."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Read when aiokafka builds its fetcher, on start.
        consumer._fetch_max_wait_ms = self.consumer.fetch_max_wait_ms
        return consumer

    async def _fetch_records(self, consumer: Any, active_partitions: Any, timeout: float | None = None, max_records: int | None = None) -> Any:
        """Faust's fetch, in the consumer thread, with aiokafka's fetched results marking their
        partition as being handed over (``lagging``) just before aiokafka drains them."""
        fetcher = getattr(consumer, "_fetcher", None)
        if fetcher is not None and not isinstance(fetcher._records, MarkBeforeDrain):
            fetcher._records = MarkBeforeDrain(self.consumer.mark_delivering, fetcher._records.items())
        return await super()._fetch_records(consumer, active_partitions, timeout=timeout, max_records=max_records)


class MarkBeforeDrain(collections.OrderedDict):
    """aiokafka's map of fetched results (``Fetcher._records``), whose results call ``mark``
    with their partition just before they are drained.

    Draining a result moves the partition's position past its records, so from then on the
    partition looks read to its end with nothing buffered while its records travel to the
    event loop. The fetch loop marks the partitions it hands over, but only once the whole
    fetch is drained and back in the loop: marked there, the event-time merge handed the other
    topics' later records over first (a worker's first start on a backlog: 3 runs of 8 applied
    events out of order under CPU load); marked after the drain in the consumer thread, the
    partitions drained first were still unmarked while aiokafka decoded the others (3 of 51).
    Marked here, before the position moves, there is no such moment."""

    def __init__(self, mark: Callable[[Any], None], items: Iterable[tuple[Any, Any]] = ()) -> None:
        super().__init__()
        self._mark = mark
        for tp, result in items:
            self[tp] = result

    def __setitem__(self, tp: Any, result: Any) -> None:
        if isinstance(result, FetchResult):
            mark, getall, getone = self._mark, result.getall, result.getone

            def marked_getall(max_records: int | None = None) -> list[ConsumerRecord]:
                mark(tp)
                return getall(max_records)

            def marked_getone() -> ConsumerRecord | None:
                mark(tp)
                return getone()

            result.getall, result.getone = marked_getall, marked_getone
        super().__setitem__(tp, result)


class BulkDeliveryConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, handing each partition's fetched records to a :class:`BatchingTopic` at once."""

    #: Longest the broker holds a fetch that finds no new record (settings.fetch_max_wait_seconds).
    fetch_max_wait_ms: int = 100
    #: Awaited before every offset commit, ahead of Faust's producer flush (stream/state/changelog.py).
    before_commit: Callable[[], Awaitable[object]] | None = None

    @classmethod
    def configured(
        cls, fetch_max_wait_seconds: float, before_commit: Callable[[], Awaitable[object]] | None = None
    ) -> type["BulkDeliveryConsumer"]:
        """This class with its fetch wait and commit hook set: Faust makes the consumer from the class itself."""
        return type(
            cls.__name__,
            (cls,),
            {"fetch_max_wait_ms": round(fetch_max_wait_seconds * 1000), "before_commit": staticmethod(before_commit) if before_commit else None},
        )

    async def _commit_offsets(self, offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
        """Faust's commit (it flushes the producer, then commits), after the commit hook."""
        if self.before_commit is not None:
            await self.before_commit()
        return await super()._commit_offsets(offsets, start_new_transaction=start_new_transaction)

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return FetchTunedConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refetches = Refetches()
        # Offset ranges acked by whole runs, per partition, until a commit takes them. Faust
        # keeps a list entry, a set entry and an int object per acked offset, for every
        # offset between two commits.
        self._acked_runs: dict[TP, list[tuple[int, int]]] = {}
        self._commit_task: asyncio.Future | None = None
        self._delivering: set[TP] = set()  # partitions whose fetched records the loop has not handed over yet

    def mark_delivering(self, tp: Any) -> None:
        """Called in the consumer thread as aiokafka is about to drain a fetch of ``tp``
        (:class:`MarkBeforeDrain`): the fetch loop unmarks it once its records are handed over."""
        self._delivering.add(TP(tp.topic, tp.partition))

    def hold(self, tp: TP) -> None:
        """Fetches no more of ``tp`` (it has enough buffered) until :meth:`release`: Faust's own
        mechanism for a full stream buffer (records already fetched stay in aiokafka's)."""
        self._get_active_partitions().discard(tp)
        self._buffered_partitions.add(tp)

    def release(self, tp: TP) -> None:
        if tp in self._buffered_partitions:
            self._buffered_partitions.discard(tp)
            if tp not in self._paused_partitions and self._assigned(tp):
                self._get_active_partitions().add(tp)

    def _assigned(self, tp: TP) -> bool:
        try:
            return self._thread._ensure_consumer()._subscription.is_assigned(tp)
        except (AttributeError, AssertionError):
            return False

    def lagging(self, tp: TP) -> bool:
        """Whether an assigned partition has records on the broker not handed to its channel yet
        (or nothing is known of it yet); False for a partition not assigned here."""
        if tp in self._delivering:
            return True
        try:
            client = self._thread._ensure_consumer()
            state = client._subscription.subscription.assignment.state_value(tp)
        except (AttributeError, AssertionError):  # not started, or no assignment
            return False
        if state is None:
            return False
        if not state.has_valid_position:
            return True
        end = state.lso if self.in_transaction and state.lso is not None else state.highwater
        return end is None or state.position < end

    def ack_run(self, tp: TP, first: int, last: int) -> None:
        """Every offset from ``first`` to ``last`` is processed: what ``Consumer.ack`` does for each, at once."""
        committed = self._committed_offset[tp]
        if committed is not None:
            first = max(first, committed)
        if first > last:
            return
        self._acked_runs.setdefault(tp, []).append((first, last))
        self._acked[tp]  # Faust commits the partitions it finds in this mapping
        self._n_acked += last - first + 1

    def _new_offset(self, tp: TP) -> int | None:
        """The offset to commit: past the acked ranges that follow on from the committed offset
        without a gap (as Faust's own, which also lets the first start one offset late)."""
        runs = self._acked_runs.get(tp)
        if not runs:
            return faust_aiokafka.Consumer._new_offset(self, tp)
        runs.sort()
        committed = self._committed_offset[tp]
        if committed and runs[0][0] - committed > 1:
            return None  # an earlier run is still being processed
        end = runs[0][0]
        taken = 0
        for first, last in runs:
            if first > end:
                break
            end = max(end, last + 1)
            taken += 1
        del runs[:taken]
        return end

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        await super().on_partitions_revoked(revoked)
        for tp in revoked:
            self._acked_runs.pop(tp, None)

    def _bulk_channel(self, tp: TP) -> BatchingTopic | None:
        """The one channel reading this partition, if it takes whole runs."""
        channels = self.app.topics._tp_index.get(tp)
        if channels is not None and len(channels) == 1:
            (channel,) = channels
            if isinstance(channel, BatchingTopic) and self.app.topics.acks_enabled_for(tp.topic):
                return channel
        return None

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - exercised by every integration test
        """Faust's fetch loop (``Consumer._drain_messages`` and ``getmany``), a partition's records at a time."""
        app = self.app
        read_offsets = self._read_offset
        suspended = self.suspend_flow.is_set
        try:
            while not (self._stopped.is_set() or fetcher._stopped.is_set()):
                self.diag.set_flag(CONSUMER_FETCHING)
                if self.refetches:
                    await self._seek_back_to_dropped()
                # A partition held back comes back as soon as the agent took some of it: wait
                # for the others' records only briefly then.
                records, active_partitions = await self._wait_next_records(0.02 if self._buffered_partitions else 1.0)
                await asyncio.sleep(0)
                if records is None or self.should_stop:
                    continue
                if not self.flow_active:
                    await self._seek_back()
                    continue
                generation = app.consumer_generation_id
                # Marked by the consumer thread as aiokafka drained them (MarkBeforeDrain), also
                # those drained empty (control records only); again here, in case one was not.
                self._delivering.update(TP(fetched_tp.topic, fetched_tp.partition) for fetched_tp in records)
                for fetched_tp, fetched in self._waited_for_first(records):
                    tp = TP(fetched_tp.topic, fetched_tp.partition)  # aiokafka's type; Faust asserts its own
                    if suspended() or app.consumer_generation_id != generation:
                        break  # a rebalance began: these records are stale
                    if self.refetches.waiting(tp, generation):
                        continue  # fetched before the seek back: they come again
                    read = read_offsets[tp]
                    if read is not None and fetched and fetched[0].offset < read:
                        fetched = [record for record in fetched if record.offset >= read]  # already handed over
                    if not fetched:
                        continue
                    channel = self._bulk_channel(tp)
                    if not (active_partitions is None or tp in active_partitions or tp in self._buffered_partitions):
                        # Paused meanwhile: our position is past these, so they are fetched again (a
                        # changelog partition's too, or its recovery would wait for them for ever).
                        self.fetch_again(tp, fetched[0].offset, generation, len(fetched))
                        continue
                    app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    if channel is None:
                        await self._deliver_one_by_one(tp, fetched)
                        continue
                    first = fetched[0].offset if read is None else min(fetched[0].offset, read + 1)
                    run = RecordRun(tp, fetched, first, generation)
                    if await channel.deliver_run(run):
                        read_offsets[tp] = fetched[-1].offset
                    else:  # the buffer was cleared while the run waited for room
                        self.fetch_again(tp, first, generation, len(fetched))
                    self._delivering.discard(tp)
                self._delivering = set()
                if self._commit_every is not None and self._n_acked >= self._commit_every:
                    self._n_acked = 0
                    await self._wait_for_running_commit()
                    self._commit_in_background()
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        except Exception as error:
            self.log.exception("Drain messages raised: %r", error)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    def _waited_for_first(self, records: Mapping[Any, Sequence[ConsumerRecord]]) -> list[tuple[Any, Sequence[ConsumerRecord]]]:
        """The fetched partitions, those with nothing buffered first: the event-time merge may be
        holding records of the others back for them, and a full buffer makes the others wait."""

        def buffered(item: tuple[Any, Sequence[ConsumerRecord]]) -> int:
            tp = TP(item[0].topic, item[0].partition)
            channel = self._bulk_channel(tp)
            return channel.queue.merge.buffered(tp) if channel is not None else 0  # type: ignore[attr-defined]

        return sorted(records.items(), key=lambda item: buffered(item) > 0)

    def _commit_in_background(self) -> None:
        """Starts a commit unless one started here is still running; fetching goes on meanwhile.

        A commit writes the changelog and waits for the producer to flush; awaited here,
        as Faust does, nothing is fetched meanwhile. Two workers then reached 1.64x one
        (median of 9 rounds), against 1.81x (18 rounds) with the commit beside the loop
        (bench/throughput.py, 2026-11-30). Faust's commit timer commits from a task of
        its own in the same way, and Faust lets one commit run at a time.
        """
        if self._commit_task is not None and not self._commit_task.done():
            return

        def finished(task: asyncio.Task) -> None:
            if not task.cancelled() and task.exception() is not None:
                self.log.error("Committing offsets failed: %r", task.exception())

        self._commit_task = asyncio.ensure_future(self.commit())
        self._commit_task.add_done_callback(finished)

    async def _wait_for_running_commit(self) -> None:
        """Backpressure: a commit still running when the next is due holds the fetcher until it ends.

        Without it, a commit slower than ``commit_every_events`` events (38 s in a 10-million-customer
        backlog on RocksDB, the one core shared with the fleet export and Redis) lets the records
        changed since it began pile up in memory, with nothing bounding them. Waiting bounds them to
        about two commits' worth; the agent goes on with what was already fetched. The commit is not
        cancelled if the fetch loop is (``asyncio.wait`` only watches it).
        """
        running = self._commit_task
        if running is None or running.done():
            return
        started = time.perf_counter()
        await asyncio.wait({running})
        metrics.FETCH_WAITED_FOR_COMMIT.inc(time.perf_counter() - started)

    def fetch_again(self, tp: TP, offset: int, generation: int, records: int) -> None:
        """Records from ``offset`` on were dropped before the agent took them: fetch them again.
        Records of an older generation need nothing: the rebalance starts from the commits."""
        if generation == self.app.consumer_generation_id:
            metrics.RECORDS_FETCHED_AGAIN.labels(tp.topic).inc(records)
            self.refetches.add(tp, offset, generation)

    async def _seek_back_to_dropped(self) -> None:
        """Seeks each partition with dropped records back to the first of them."""
        due = self.refetches.take(self.app.consumer_generation_id, self.assignment())
        if not due:
            return
        self.log.info("Fetching again %s partition(s) whose records were dropped before processing", len(due))
        try:
            await self.seek_wait(due)
        except IllegalStateError:
            return  # no longer assigned: a rebalance is under way and starts them again from their commits
        except asyncio.TimeoutError:
            generation = self.app.consumer_generation_id
            for tp, offset in due.items():
                self.refetches.add(tp, offset, generation)  # tried again on the next turn
            self.log.warning("Seeking back %s partition(s) timed out; trying again", len(due))
            return
        for tp, offset in due.items():
            # What the fetch loop reads as the last offset handed over.
            self._read_offset[tp] = offset - 1 if offset > 0 else None

    async def _deliver_one_by_one(self, tp: TP, fetched: Sequence[ConsumerRecord]) -> None:
        """Faust's own per-record path, for topics no :class:`BatchingTopic` reads alone."""
        read_offsets = self._read_offset
        acks_enabled = self.app.topics.acks_enabled_for(tp.topic)
        for record in fetched:
            if self.suspend_flow.is_set():
                return
            read = read_offsets[tp]
            offset = record.offset
            if read and offset - read > 1 and acks_enabled:
                await self._add_gap(tp, read + 1, offset)
            await self.callback(self._to_message(tp, record))
            read_offsets[tp] = offset

    async def _seek_back(self) -> None:
        """As Faust's ``getmany`` does when records arrive while the flow is stopped."""
        try:
            await self.perform_seek()
        except Exception as error:
            self.log.warning(f"exception performing seek when flow not active {error}")
