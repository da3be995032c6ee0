"""Records enter the agent in batches, not one at a time.

Faust hands a stream one event per iteration: several event-loop turns and task
switches per record, which caps an agent that does nothing at a few thousand
events per second here. The conductor still decodes each record into an event
and puts it on the channel's queue (so Faust's partition assignment, flow control
and back-pressure are untouched); this queue hands the stream everything that has
arrived in one go. The stream then yields an :class:`EventBatch`, a value that is
not an event, so Faust neither tracks nor acks it: :class:`EventBatch` does both,
for each event, once the agent has finished with the whole batch.

:class:`DirectDeliveryConsumer` removes the other per-record cost: Faust's fetch
loop wraps the delivery of every record in ``wait_first`` (two new tasks and
several loop turns per record) so that a delivery blocked on a full buffer cannot
outlive a rebalance. Here a delivery only blocks when a single fetch overfills the
buffer, which the worker's settings rule out (``broker_max_poll_records`` well
under ``stream_buffer_maxsize``), so records are delivered with a plain ``await``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Iterator

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import EventT
from mode.utils.queues import ThrowableQueue


class EventBatch:
    """The events that arrived since the agent last looked, in arrival order."""

    __slots__ = ("events",)

    def __init__(self, events: list[EventT]) -> None:
        self.events = events

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[EventT]:
        return iter(self.events)

    def current(self, app: faust.App) -> list[EventT]:
        """The events of the current consumer generation; stale ones are acked and dropped.

        Faust skips (and acks) records fetched before a rebalance in the same way: the
        partition's new owner reads them again from the committed offset.
        """
        consumer = app.consumer
        generation = app.consumer_generation_id
        active = app.flow_control.is_active()
        current = []
        for event in self.events:
            message = event.message
            if active and message.generation_id == generation:
                consumer.track_message(message)
                current.append(event)
            else:
                message.ack(consumer)
        return current

    @staticmethod
    def ack(events: list[EventT], app: faust.App) -> None:
        """Done with these events: their offsets may be committed (after the producer is flushed)."""
        consumer = app.consumer
        for event in events:
            event.message.ack(consumer)


class BatchQueue(ThrowableQueue):
    """A channel queue whose ``get`` returns every buffered event as one :class:`EventBatch`.

    Its size still counts events, so Faust's back-pressure (pause fetching a
    partition when the buffer is nearly full) works as before.
    """

    def __init__(self, *args: Any, batch_limit: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_limit = batch_limit

    def _get(self) -> EventBatch:  # type: ignore[override]
        buffered = self._queue  # type: ignore[attr-defined]
        if len(buffered) <= self.batch_limit:
            events = list(buffered)
            buffered.clear()
        else:
            events = [buffered.popleft() for _ in range(self.batch_limit)]
        # Wake every producer that waited on a full queue, not only the first.
        while self._putters and not self.full():  # type: ignore[attr-defined]
            self._wakeup_next(self._putters)  # type: ignore[attr-defined]
        # Resume fetching paused partitions now, not on the next get.
        self.maybe_endorse_pressure_drop()
        return EventBatch(events)


class BatchingTopic(faust.Topic):
    """A topic whose iterator (the agent's channel) yields :class:`EventBatch` values."""

    def __init__(self, *args: Any, batch_limit: int = 2000, **kwargs: Any) -> None:
        self.batch_limit = batch_limit
        super().__init__(*args, **kwargs)

    def _compile_decode(self) -> None:
        """With raw keys and values (the worker's), the event is made from the message as is.

        That is what Faust's raw schema returns (``App.create_event``), without its
        serializer and settings lookups per record (half of Faust's per-record delivery
        in a py-spy profile).
        """
        schema = self.schema
        if schema.key_serializer != "raw" or schema.value_serializer != "raw":
            super()._compile_decode()
            return
        app = self.app
        event_type = app.conf.Event

        async def decode(message: Any, *, propagate: bool = False) -> EventT:
            return event_type(app, message.key, message.value, message.headers, message)

        self.decode = decode  # type: ignore[method-assign]

    def _clone_args(self) -> dict:
        return {**super()._clone_args(), "batch_limit": self.batch_limit}

    @property
    def queue(self) -> ThrowableQueue:
        if self._queue is None:
            maxsize = self.maxsize if self.maxsize is not None else self.app.conf.stream_buffer_maxsize
            self._queue = BatchQueue(
                maxsize=maxsize,
                flow_control=self.app.flow_control,
                clear_on_resume=True,
                batch_limit=self.batch_limit,
            )
        return self._queue


class DirectDeliveryConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, delivering each fetched record with a plain ``await``."""

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - exercised by every integration test
        """Faust's fetch loop (``Consumer._drain_messages``) without ``wait_first`` per record."""
        callback = self.callback
        read_offsets = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        suspended = self.suspend_flow.is_set
        commit_every = self._commit_every
        try:
            while not (self._stopped.is_set() or fetcher._stopped.is_set()):
                self.diag.set_flag(CONSUMER_FETCHING)
                fetched = self.getmany(timeout=1.0)
                await asyncio.sleep(0)
                if self.should_stop:
                    continue
                async for tp, message in fetched:
                    if suspended():
                        break  # a rebalance began: getmany's records are stale
                    offset = message.offset
                    read = read_offsets[tp]
                    if read is not None and offset < read:
                        continue  # already handed to the stream
                    if read and offset - read > 1 and acks_enabled_for(message.topic):
                        await self._add_gap(tp, read + 1, offset)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    await callback(message)
                    read_offsets[tp] = offset
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
