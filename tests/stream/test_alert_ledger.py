"""The alert ledger remembers the newest published ids per partition, as many as it reads back."""

from __future__ import annotations

import asyncio

from aiokafka.errors import KafkaConnectionError
from hypothesis import given, strategies as st

from stream import metrics
from stream.sinks.alert_ledger import GENERATIONS, AlertLedger, _RecentIds


def test_the_ledger_keeps_the_ids_of_the_newest_additions_of_each_partition_up_to_the_tail_it_reads_back() -> None:
    ledger = AlertLedger({"bootstrap_servers": "127.0.0.1:1"}, "alerts", tail_messages=3)  # no broker needed: nothing is read back
    for number in range(5):
        ledger.record(0, f"a{number}")
    ledger.record(0, "a4")  # again: the window is of the last 3 additions, a3, a4 and a4
    ledger.record(1, "b0")

    async def published() -> list[bool]:
        return [await ledger.is_published(0, f"a{number}") for number in range(5)] + [await ledger.is_published(1, "b0")]

    assert asyncio.run(published()) == [False, False, False, True, True, True]


@given(
    limit=st.integers(min_value=0, max_value=40),
    ids=st.lists(st.text(alphabet="abcdef", min_size=1, max_size=3), max_size=200),
)
def test_the_ids_of_the_last_limit_additions_are_always_remembered_and_at_most_a_generation_more(limit: int, ids: list[str]) -> None:
    recent = _RecentIds(limit)
    for alert_id in ids:
        recent.add(alert_id)
    newest = set(ids[len(ids) - limit :]) if limit else set()
    assert all(alert_id in recent for alert_id in newest)
    assert "never-added" not in recent and 7 not in recent
    generation = -(-limit // GENERATIONS) if limit else 0
    capacity = -(-limit // generation) * generation + generation - 1 if limit else 0
    remembered = {alert_id for alert_id in ids if alert_id in recent}
    assert len(recent) == len(remembered) <= capacity
    assert capacity <= limit + 2 * generation  # "up to a generation more", rounding aside


def test_ten_thousand_ids_are_remembered_mostly_as_eight_bytes_each() -> None:
    recent = _RecentIds(10_000)
    ids = [f"cust-{number:05d}:usage_drop:1796045181945" for number in range(13_000)]
    for alert_id in ids:
        recent.add(alert_id)
    assert all(alert_id in recent for alert_id in ids[-10_000:])
    assert not any(alert_id in recent for alert_id in ids[:500])
    sealed_bytes = sum(generation.itemsize * len(generation) for generation in recent._sealed)
    assert (sealed_bytes, len(recent._filling), len(recent)) == (8 * 10_000, 500, 10_500)


class UnreadableFor:
    """A tail that cannot be read the first ``failures`` times (the broker away, no READ ACL)."""

    def __init__(self, failures: int, ids: list[str]) -> None:
        self.failures = failures
        self.ids = ids
        self.attempts = 0

    async def __call__(self, partition: int):
        self.attempts += 1
        if self.attempts <= self.failures:
            raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 9092)]")
        found = _RecentIds(100)
        for alert_id in self.ids:
            found.add(alert_id)
        return found


def test_alerts_wait_while_the_tail_cannot_be_read_never_sent_unchecked() -> None:
    ledger = AlertLedger({"bootstrap_servers": "127.0.0.1:1"}, "churn-alerts", 100)
    ledger.retry_seconds = 0.01
    ledger._read_tail = UnreadableFor(3, ["a1"])  # type: ignore[method-assign]
    waiting: list[float] = []

    async def scenario() -> tuple[bool, bool]:
        check = asyncio.create_task(ledger.is_published(0, "a1"))
        await asyncio.sleep(0.005)
        waiting.append(metrics.ALERTS_WAITING_FOR_LEDGER._value.get())
        return await check, await ledger.is_published(0, "a2")

    assert asyncio.run(scenario()) == (True, False)  # a1 was found once the tail could be read
    assert ledger._read_tail.attempts == 4  # type: ignore[attr-defined]
    assert waiting == [1.0] and metrics.ALERTS_WAITING_FOR_LEDGER._value.get() == 0


def test_a_partition_that_moved_while_its_tail_was_unreadable_sends_nothing() -> None:
    owned = {0}
    ledger = AlertLedger({"bootstrap_servers": "127.0.0.1:1"}, "churn-alerts", 100, owned=lambda partition: partition in owned)
    ledger.retry_seconds = 0.01
    ledger._read_tail = UnreadableFor(1000, [])  # type: ignore[method-assign]

    async def scenario() -> bool:
        check = asyncio.create_task(ledger.is_published(0, "a1"))
        await asyncio.sleep(0.05)
        owned.clear()  # a rebalance gave it to another worker, which raises its alerts again
        return await asyncio.wait_for(check, timeout=5)

    assert asyncio.run(scenario()) is True
