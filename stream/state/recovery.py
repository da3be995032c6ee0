"""Reading the customer-state changelog back in groups, not one record per event-loop turn.

A restarted worker is not processing again until every record of its partitions'
changelogs is back in the table. Faust's recovery loop takes those records one at a
time from its queue through ``asyncio.wait_for`` (a new task and several loop turns
each), and after each one recomputes, over every partition, whether recovery is done
(two ``Counter`` objects per record). With 100k customers a restart read ~200k
records at ~130 us each.

:class:`GroupedRecovery` runs the same loop (Faust's ``Recovery._slurp_changelogs``,
faust-streaming 0.15.3) but takes everything already queued in one go and checks
whether recovery has ended once per group; each record is still applied, counted and
buffered exactly as Faust does. :class:`GroupedRecoveryTableManager` is Faust's table
manager with this recovery service (the ``TableManager`` app setting).
"""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import Any

from faust.tables import TableManager
from mode import Service
from faust.tables.recovery import Recovery, logger
from faust.types import EventT
from faust.utils.tracing import finish_span

#: At most this many records per group, so other tasks (the web server, timers) get their turn.
GROUP_LIMIT = 5000


class GroupedRecovery(Recovery):
    @Service.task
    async def _slurp_changelogs(self) -> None:  # pragma: no cover - exercised by the restart integration tests
        changelog_queue = self.tables.changelog_queue
        timeout_count = 0
        while not self.should_stop:
            try:
                self.signal_recovery_end.clear()
                try:
                    first: EventT = await asyncio.wait_for(changelog_queue.get(), timeout=5.0)
                except asyncio.TimeoutError:
                    timeout_count += 1
                    if self.should_stop:
                        return
                    await self._maybe_signal_recovery_end(timeout=True, timeout_count=timeout_count)
                    await self._fetch_skipped_again()
                    continue
                timeout_count = 0
                for event in self._take_group(first):
                    await self._apply_changelog_event(event)
                await self._maybe_signal_recovery_end()
                self._note_standbys_ready()
            except Exception as error:
                logger.warning("Error in recovery %r", error)

    async def _fetch_skipped_again(self) -> None:
        """Called after 5 s without a changelog record: a partition still short of its highwater
        is fetched again from the offset recovery needs. Its records could be consumed without
        reaching the changelog queue (seen about once in five runs after a rebalance that kept
        a partition here, right after this worker wrote to its changelog), and recovery then
        waited for them for ever. Records delivered twice are skipped by offset."""
        if not self.in_recovery:
            return
        consumer = self.app.consumer
        for tp, remaining in self.active_remaining().items():
            if remaining <= 0 or tp not in self.active_tps:
                continue
            needed = self.active_offsets[tp] + 1
            position = await consumer.position(tp)
            logger.warning("Recovery of %s waits for offset %s (consumer position %s): fetching from there again", tp, needed, position)
            await consumer.seek_wait({tp: needed})

    def _take_group(self, first: EventT) -> list[EventT]:
        """The first event and whatever else is already queued, in order."""
        changelog_queue = self.tables.changelog_queue
        group = [first]
        while len(group) < GROUP_LIMIT and changelog_queue.qsize() and not changelog_queue._errors:  # type: ignore[attr-defined]
            group.append(changelog_queue.get_nowait())
        return group

    async def _apply_changelog_event(self, event: EventT) -> None:
        """One record into its table's buffer (applied when the buffer is full), as Faust does."""
        now = monotonic()
        message = event.message
        tp = message.tp
        offset = message.offset
        bufsize: Any = self.buffer_sizes.get(tp)
        is_active = False
        if tp in self.active_tps:
            is_active = True
            table = self.tp_to_table[tp]
            offsets = self.active_offsets
            if bufsize is None:
                bufsize = self.buffer_sizes[tp] = table.recovery_buffer_size
            self._active_events_received_at[tp] = now
        elif tp in self.standby_tps:
            table = self.tp_to_table[tp]
            offsets = self.standby_offsets
            if bufsize is None:
                bufsize = self.buffer_sizes[tp] = table.standby_buffer_size
                self._standby_events_received_at[tp] = now
        else:
            # Faust logs this and goes on with the previous record's table;
            # skipping the record is what that code means to do.
            logger.warning("recovery unknown topic %s offset %s", tp, offset)
            return
        seen_offset = offsets.get(tp, None)
        if seen_offset is not None and offset <= seen_offset:
            return
        offsets[tp] = offset
        buffer = self.buffers[table]
        buffer.append(event)
        await table.on_changelog_event(event)
        if len(buffer) >= bufsize:
            table.apply_changelog_batch(buffer)
            buffer.clear()
            self._last_flush_at = now
        if is_active:
            self._note_processing_time()

    def _note_processing_time(self) -> None:
        now_after = monotonic()
        last_processed_at = self._last_active_event_processed_at
        if last_processed_at is not None:
            processing_times = self._processing_times
            processing_times.append(now_after - last_processed_at)
            if len(processing_times) > self.num_samples_required_for_estimate:
                processing_times.popleft()
        self._last_active_event_processed_at = now_after

    async def _maybe_signal_recovery_end(self, timeout: bool = False, timeout_count: int = 0) -> None:
        # Faust waits for two empty cycles in a row before it looks for aborted
        # transactions, to avoid racing the consumer's position.
        if timeout and self.app.in_transaction and timeout_count > 1:
            await self._detect_aborted_transactions()
        if self.in_recovery and not self.need_recovery():
            self.flush_buffers()  # apply anything left in the buffers
            self._set_recovery_ended()
            if self._actives_span is not None:
                self._actives_span.set_tag("Actives-Ready", True)
            logger.debug("Setting recovery end")
            self.signal_recovery_end.set()

    async def _detect_aborted_transactions(self) -> None:
        highwaters = self.active_highwaters
        offsets = self.active_offsets
        for tp, highwater in highwaters.items():
            if highwater is not None and offsets[tp] is not None and offsets[tp] < highwater:
                if await self.app.consumer.position(tp) >= highwater:  # type: ignore[operator]
                    logger.info("Aborted tx until highwater for %s", tp)
                    offsets[tp] = highwater

    def _note_standbys_ready(self) -> None:
        standby_ready = self._standbys_span is None and self.tables.standbys_ready
        if not standby_ready and not self.standby_remaining_total():
            logger.debug("Completed standby partition fetch")
            if self._standbys_span:
                finish_span(self._standbys_span)
                self._standbys_span = None
            self.tables.on_standbys_ready()


class GroupedRecoveryTableManager(TableManager):
    """Faust's table manager, recovering with :class:`GroupedRecovery`."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = GroupedRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery
