"""The agent's loop: each batch of records is applied, its outputs sent, its messages acked.

A batch (stream/kafka/batching.py) holds records of the four input topics and the sweep
topic. Without the kernel, the whole batch is validated before any of it is applied: one
pass of the JSON decoder and the contract checks, then one of the model, each with its
code and data warm (bench/throughput.py, ten interleaved pairs: 8 faster, median +7 %).
The kernel validates each message itself. The changed records are written back once
(stream/state/working_set.py); the batch's scores and alerts leave as producer batches
(stream/kafka/producer.py); the changelog records of the customers it changed follow
once per offset commit, just before it (stream/state/changelog.py), or with the batch.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from typing import Any, Callable, Mapping

import faust
from aiokafka.structs import ConsumerRecord

from scoring.contract import Event, Rejection, RejectReason, TopicKind
from stream import metrics
from stream.kafka.batching import BatchInProgress, RecordBatch
from stream.kafka.producer import Delivered, IdempotentProducer, Outputs
from stream.memory import collect_garbage_rarely
from stream.processing.erasure import Eraser
from stream.processing.events import EventPath
from stream.processing.publishing import Clock, Publisher
from stream.processing.sweep import Sweeper
from stream.sinks.redis_cache import LatestScoreCache
from stream.state.changelog import DeferredChangelog
from stream.state.erased import ErasedCustomersFollower
from stream.state.table import KeysByPartition
from stream.state.working_set import WorkingSet

log = logging.getLogger("healthscore.worker")


class BatchHandler:
    """Runs the ``apply-events`` agent: one customer-state table, one batch at a time."""

    def __init__(
        self,
        app: faust.App,
        table: Any,
        keys_by_partition: KeysByPartition,
        changelog_topic: str,
        on_changelog_delivered: Delivered,
        deferred: DeferredChangelog | None,
        input_kinds: Mapping[str, TopicKind],
        events: EventPath,
        sweeper: Sweeper,
        eraser: Eraser,
        publisher: Publisher,
        cache: LatestScoreCache,
        in_progress: BatchInProgress,
        full_batch: int,
        clock: Clock,
        erased: ErasedCustomersFollower | None = None,
    ) -> None:
        self._app = app
        self._table = table
        self._keys_by_partition = keys_by_partition
        self._changelog_topic = changelog_topic
        self._on_changelog_delivered = on_changelog_delivered
        self._deferred = deferred  # None: changelog records go out with each batch
        self._input_kinds = input_kinds
        self._events = events
        self._sweeper = sweeper
        self._eraser = eraser
        self._publisher = publisher
        self._cache = cache
        self._in_progress = in_progress
        self._full_batch = full_batch
        self._clock = clock
        self._erased = erased
        #: Called after each batch (the /healthz probe's sign that the agent advances).
        self.on_batch_done: Callable[[], None] = lambda: None

    async def run(self, stream: faust.StreamT) -> None:
        """The agent: applies each batch of records, then writes each changed record once."""
        # Everything alive now (modules, Faust's services) lives as long as the worker.
        collect_garbage_rarely()
        await self._publisher.learn_health_partitions()
        await self._events.learn_partitions(self._app.producer)  # type: ignore[arg-type]
        async for batch in stream:
            await self.apply(batch.current(self._app))

    async def apply(self, batch: RecordBatch) -> None:
        if self._erased is not None:
            await self._erased.ready()  # the deny-list first: at start and after each assignment
        started = time.perf_counter()
        self._in_progress.begin()
        self._cache.catching_up(len(batch) >= self._full_batch)
        outputs = Outputs()
        working = WorkingSet(self._table, self._keys_by_partition, outputs, self._changelog_topic)
        counts: Counter = Counter()
        now_ms = int(self._clock() * 1000)
        native = self._events.native is not None
        validated = itertools.repeat(None) if native else self._events.validate(batch, now_ms)
        inputs = self._input_kinds
        working.read_ahead((message.key, message.partition) for message in batch if message.key and message.topic in inputs)
        for message, decoded in zip(batch, validated):
            await self._apply_one(message, decoded, working, outputs, counts, now_ms)
        working.write_back()
        await self._park_failed_writes(working)
        await self._send(batch, outputs)
        batch.ack(self._app)
        self._in_progress.end()
        self.on_batch_done()
        for (topic_name, outcome), count in counts.items():
            metrics.EVENTS.labels(topic_name, outcome).inc(count)
        metrics.LAST_EVENT_PROCESSED.set(self._clock())
        metrics.BATCH_EVENTS.observe(len(batch))
        metrics.BATCH_DURATION.observe(time.perf_counter() - started)

    async def _apply_one(
        self, message: ConsumerRecord, decoded: Event | Rejection | None, working: WorkingSet, outputs: Outputs, counts: Counter, now_ms: int
    ) -> None:
        try:
            if message.topic not in self._input_kinds:  # the control topic: keyless sweep ticks, keyed erasures
                if message.key:
                    await self._eraser.handle(message, working, outputs)
                else:
                    await self._sweeper.handle_tick(message, working, outputs)
            else:
                waiting = self._events.handle(message, decoded, working, outputs, counts, now_ms)
                if waiting is not None:
                    await waiting
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:  # a bug (a kernel panic too) must not stop the stream: park the message and go on
            log.exception("Failed to process %s[%s]@%s", message.topic, message.partition, message.offset)
            await self._publisher.dead_letter(message, Rejection(RejectReason.PROCESSING_ERROR, f"{type(error).__name__}: {error}"))

    async def _park_failed_writes(self, working: WorkingSet) -> None:
        """Dead-letters the messages whose change could not be written back (their records were
        written without them: stream/state/working_set.py)."""
        for message, error in working.failed:
            if message is None:
                continue
            log.error("Failed to write back the change of %s[%s]@%s", message.topic, message.partition, message.offset)
            await self._publisher.dead_letter(message, Rejection(RejectReason.PROCESSING_ERROR, f"{type(error).__name__}: {error}"))
        working.failed.clear()

    async def _send(self, batch: RecordBatch, outputs: Outputs) -> None:
        """Queues the batch's messages on the producer; changelog records wait for the next
        commit unless the partitions were revoked meanwhile (then they go at once)."""
        self._publisher.release_alerts(outputs)
        deferred = self._deferred
        if deferred is not None and batch.still_current(self._app):
            deferred.take(outputs)  # their changelog records wait for the next commit
        metrics.SCORES_PUBLISHED.inc(outputs.count(self._publisher.health_topic))
        metrics.CHANGELOG_RECORDS_WRITTEN.inc(outputs.count(self._changelog_topic))
        self._publisher.observe_published()
        producer: IdempotentProducer = self._app.producer  # type: ignore[assignment]
        await outputs.send(producer, {self._changelog_topic: self._on_changelog_delivered}, self._publisher.output_headers)
