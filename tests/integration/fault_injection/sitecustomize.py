"""Fault injection for a worker started by an integration test (on its PYTHONPATH only).

Faults, each on when its environment variable is set.

At the end of a table recovery Faust seeks the partitions to their committed offsets,
then resumes flow, which clears the stream buffers. Records fetched in between, still
in the buffer because the agent was busy, must be fetched again, not skipped. The window is a few
milliseconds long. With ``FAULT_SEEK_DELAY_SECONDS`` set, once Faust has sought, the
agent is kept from taking anything from its buffer until flow resumes, and the seek
returns only once fetched records wait in the buffer (or that many seconds have
passed): a test with a backlog lands in the window every time.
"""

from __future__ import annotations

import asyncio
import os

_delay = float(os.environ.get("FAULT_SEEK_DELAY_SECONDS", "0"))

if _delay > 0:
    from faust.transport import consumer as _consumer
    from mode.utils.queues import FlowControlEvent

    from stream.kafka.batching import BatchQueue

    _holding = False
    _perform_seek = _consumer.Consumer.perform_seek
    _resume = FlowControlEvent.resume
    _empty = BatchQueue.empty

    async def _perform_seek_then_wait_for_buffered_records(self: _consumer.Consumer) -> None:
        global _holding
        await _perform_seek(self)
        _holding = True  # the agent is busy, as under load
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _delay
        while loop.time() < deadline and not any(queue.qsize() for queue in self.app.flow_control._queues):
            await asyncio.sleep(0.001)

    def _resume_then_let_the_agent_go(self: FlowControlEvent) -> None:
        global _holding
        _resume(self)
        _holding = False
        for queue in self._queues:
            if isinstance(queue, BatchQueue):
                queue._wakeup_next(queue._getters)  # type: ignore[attr-defined]

    def _empty_while_held(self: BatchQueue) -> bool:
        return _holding or _empty(self)

    _consumer.Consumer.perform_seek = _perform_seek_then_wait_for_buffered_records  # type: ignore[method-assign]
    FlowControlEvent.resume = _resume_then_let_the_agent_go  # type: ignore[method-assign]
    BatchQueue.empty = _empty_while_held  # type: ignore[method-assign]

# ``FAULT_BATCH_DELAY_SECONDS``: each batch takes that much longer, so that a test's backlog
# lasts long enough for a fault (a SIGKILL, a second worker joining) to land in its middle.
# ``FAULT_BATCH_DELAY_UNTIL_FILE``: once that file exists (the test made it: its fault has
# landed), batches go at full speed again, so the rest of the backlog is not waited for.
_batch_delay = float(os.environ.get("FAULT_BATCH_DELAY_SECONDS", "0"))
_delay_until = os.environ.get("FAULT_BATCH_DELAY_UNTIL_FILE")

if _batch_delay > 0:
    from stream.processing.batches import BatchHandler

    _apply = BatchHandler.apply

    async def _apply_slowly(self: BatchHandler, batch) -> None:  # type: ignore[no-untyped-def]
        if _delay_until is None or not os.path.exists(_delay_until):
            await asyncio.sleep(_batch_delay)
        await _apply(self, batch)

    BatchHandler.apply = _apply_slowly  # type: ignore[method-assign]

# ``FAULT_RECOVERY_HOLD_FILE``: while that file exists, the worker's recovery does not end
# (as with a long changelog to read back), so a test sees the worker alive but not ready.
_hold_file = os.environ.get("FAULT_RECOVERY_HOLD_FILE")

if _hold_file:
    from pathlib import Path

    from stream.state.recovery import GroupedRecovery

    _signal_end = GroupedRecovery._maybe_signal_recovery_end

    async def _end_once_released(self: GroupedRecovery, timeout: bool = False, timeout_count: int = 0) -> None:
        if Path(_hold_file).exists():
            return
        await _signal_end(self, timeout=timeout, timeout_count=timeout_count)

    GroupedRecovery._maybe_signal_recovery_end = _end_once_released  # type: ignore[method-assign]
