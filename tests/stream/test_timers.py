"""The worker's timers: they must never stop the stream."""

from __future__ import annotations

import asyncio
import logging

import pytest
from faust.types import TP

from stream.worker.fleet import consumer_lag
from stream.worker.timers import guarded_timer, logged_on_failure

USAGE_0, USAGE_1, PAYMENTS_0, SWEEP_0 = TP("usage", 0), TP("usage", 1), TP("payments", 0), TP("sweep", 0)


@pytest.mark.parametrize(
    ("highwaters", "read_offsets", "expected"),
    [
        # Nothing handed over yet: everything up to the high-water mark is lag.
        ({USAGE_0: 10, USAGE_1: 5, PAYMENTS_0: 0}, {}, {"usage": 15, "payments": 0}),
        # Offset 9 handed over, high-water 10: caught up.
        ({USAGE_0: 10, USAGE_1: 5, PAYMENTS_0: 3}, {USAGE_0: 9, USAGE_1: 1, PAYMENTS_0: None}, {"usage": 3, "payments": 3}),
        # Just assigned, no fetch answered yet: the high-water mark is unknown (None), not a crash.
        ({USAGE_0: None, USAGE_1: 7, PAYMENTS_0: None}, {USAGE_1: 3}, {"usage": 3, "payments": 0}),
        # A stale high-water mark below the read position is no negative lag.
        ({USAGE_0: 4, USAGE_1: 0, PAYMENTS_0: 0}, {USAGE_0: 8}, {"usage": 0, "payments": 0}),
    ],
)
def test_lag_per_input_topic(highwaters, read_offsets, expected) -> None:
    assignment = [*highwaters, SWEEP_0]  # the sweep topic is not an input: never counted
    lag = consumer_lag(assignment, read_offsets, lambda tp: {**highwaters, SWEEP_0: 99}[tp], ["usage", "payments"])
    assert lag == expected


def test_a_failing_timer_job_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def broken() -> None:
        raise RuntimeError("broker unreachable")

    with caplog.at_level(logging.ERROR, logger="healthscore.worker"):
        asyncio.run(logged_on_failure(broken, "Starting a sweep", 30))
    assert "Starting a sweep failed; retrying in 30 s" in caplog.text
    assert "broker unreachable" in caplog.text  # the traceback is kept


def test_a_timer_job_runs_and_cancellation_still_stops_it() -> None:
    ran: list[str] = []

    async def works() -> None:
        ran.append("yes")

    async def cancelled() -> None:
        raise asyncio.CancelledError

    asyncio.run(logged_on_failure(works, "job", 1))
    assert ran == ["yes"]
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(logged_on_failure(cancelled, "job", 1))


class RecordingApp:
    """Stands in for faust.App.timer: records what was registered, at which interval."""

    def __init__(self) -> None:
        self.timers: dict[str, tuple[float, object]] = {}

    def timer(self, interval: float):
        def register(fun):
            self.timers[fun.__name__] = (interval, fun)
            return fun

        return register


def test_every_guarded_timer_is_registered_with_its_interval_and_survives_its_job(caplog: pytest.LogCaptureFixture) -> None:
    app = RecordingApp()

    @guarded_timer(app, 0.5, "Writing scores to Redis")  # type: ignore[arg-type]
    async def flush_cache() -> None:
        raise ValueError("not JSON")

    interval, registered = app.timers["flush_cache"]
    assert interval == 0.5
    with caplog.at_level(logging.ERROR, logger="healthscore.worker"):
        asyncio.run(registered())  # type: ignore[operator]
    assert "Writing scores to Redis failed; retrying in 0.5 s" in caplog.text
