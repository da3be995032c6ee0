"""Changelog records written once per offset commit (stream/state/changelog.py), without a broker.

That the worker writes them before Faust commits offsets, on a rebalance and on a stop is
tested against the real Kafka in tests/integration/test_restart.py.
"""

from __future__ import annotations

import asyncio

import pytest

from stream import metrics
from stream.state.changelog import FLUSH_CHUNK, DeferredChangelog
from stream.kafka.producer import Outputs

TOPIC = "app-customer-state-changelog"


class Table:
    """What the changelog reads of a Faust table: the store under ``data``."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}


class Producer:
    """Records each ``send_records`` call; fails the call numbered ``fail_at`` (1-based)."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[tuple[str, int, list[tuple[bytes | None, bytes]]]] = []
        self.fail_at = fail_at

    async def send_records(self, topic: str, records: dict, on_delivered: object = None) -> None:
        if self.fail_at is not None and len(self.calls) + 1 == self.fail_at:
            self.fail_at = None
            raise ConnectionError("broker gone")
        for partition, items in records.items():
            self.calls.append((topic, partition, list(items)))

    def sent(self) -> list[tuple[int, bytes, bytes]]:
        return [(partition, key, value) for _, partition, items in self.calls for key, value in items]


def batch_changing(table: Table, changes: list[tuple[int, bytes, bytes]]) -> Outputs:
    """A batch's outputs as the working set leaves them: the table written, one changelog record per change."""
    outputs = Outputs()
    outputs.add("customer-health", 0, b"k", b"score")
    for partition, key, value in changes:
        table.data[key] = value
        outputs.add(TOPIC, partition, key, value)
    return outputs


def written() -> float:
    return metrics.REGISTRY.get_sample_value("healthscore_changelog_records_written_total") or 0.0


def flush(changelog: DeferredChangelog, producer: Producer) -> int:
    return asyncio.run(changelog.flush(producer))  # type: ignore[arg-type]


def test_a_batch_leaves_its_other_outputs_and_only_notes_its_changed_keys() -> None:
    table = Table()
    changelog = DeferredChangelog(table, TOPIC)
    outputs = batch_changing(table, [(0, b"acme", b"v1"), (1, b"beta", b"v1")])
    changelog.take(outputs)
    assert outputs.count(TOPIC) == 0
    assert outputs.count("customer-health") == 1
    assert changelog.pending == 2


@pytest.mark.parametrize(
    ("batches", "expected"),
    [
        # One key changed by three batches: its value as the table holds it now, once.
        ([[(0, b"acme", b"v1")], [(0, b"acme", b"v2")], [(0, b"acme", b"v3")]], [(0, b"acme", b"v3")]),
        # Keys keep the order of their first change, per partition.
        (
            [[(0, b"b", b"b1"), (1, b"x", b"x1")], [(0, b"a", b"a1"), (0, b"b", b"b2")]],
            [(0, b"b", b"b2"), (0, b"a", b"a1"), (1, b"x", b"x1")],
        ),
        ([], []),
    ],
    ids=["coalesced", "first-change-order", "nothing-changed"],
)
def test_a_flush_sends_each_changed_key_once_with_its_current_value(batches: list, expected: list) -> None:
    table = Table()
    changelog = DeferredChangelog(table, TOPIC)
    for changes in batches:
        changelog.take(batch_changing(table, changes))
    producer = Producer()
    assert flush(changelog, producer) == len(expected)
    assert producer.sent() == expected
    assert changelog.pending == 0
    assert flush(changelog, producer) == 0  # nothing twice


def test_a_key_the_table_no_longer_holds_is_not_sent() -> None:
    """Faust drops the records of partitions that moved to another worker; their new owner writes them."""
    table = Table()
    changelog = DeferredChangelog(table, TOPIC)
    changelog.take(batch_changing(table, [(0, b"kept", b"v"), (1, b"moved", b"v")]))
    del table.data[b"moved"]
    producer = Producer()
    assert flush(changelog, producer) == 1
    assert producer.sent() == [(0, b"kept", b"v")]


def test_a_large_flush_goes_out_in_chunks() -> None:
    table = Table()
    changelog = DeferredChangelog(table, TOPIC)
    keys = [b"c%06d" % index for index in range(2 * FLUSH_CHUNK + 5)]
    changelog.take(batch_changing(table, [(3, key, b"v") for key in keys]))
    producer = Producer()
    counted = written()
    assert flush(changelog, producer) == len(keys)
    assert written() - counted == len(keys)  # healthscore_changelog_records_written_total
    assert [len(items) for _, _, items in producer.calls] == [FLUSH_CHUNK, FLUSH_CHUNK, 5]
    assert [key for _, key, _ in producer.sent()] == keys


def test_a_failed_flush_keeps_every_key_for_the_next_one() -> None:
    """The commit that follows a failed flush must not go ahead as if the records were out."""
    table = Table()
    changelog = DeferredChangelog(table, TOPIC)
    changelog.take(batch_changing(table, [(0, b"a", b"a1"), (1, b"b", b"b1")]))
    producer = Producer(fail_at=2)
    with pytest.raises(ConnectionError):
        flush(changelog, producer)
    changelog.take(batch_changing(table, [(1, b"c", b"c1")]))  # a batch while the flush failed
    retry = Producer()
    assert flush(changelog, retry) == 3
    assert sorted(retry.sent()) == [(0, b"a", b"a1"), (1, b"b", b"b1"), (1, b"c", b"c1")]


def test_a_flush_waits_for_one_under_way() -> None:
    """A rebalance flushes before it hands partitions over: a commit's flush still sending
    their records must be done by then."""
    table = Table()
    changelog = DeferredChangelog(table, TOPIC)
    changelog.take(batch_changing(table, [(0, b"a", b"a1")]))

    class SlowProducer(Producer):
        def __init__(self) -> None:
            super().__init__()
            self.release = asyncio.Event()

        async def send_records(self, topic: str, records: dict, on_delivered: object = None) -> None:
            await self.release.wait()
            await super().send_records(topic, records, on_delivered)

    async def scenario() -> list[str]:
        producer = SlowProducer()
        done: list[str] = []

        async def flush_and_note(name: str) -> None:
            await changelog.flush(producer)  # type: ignore[arg-type]
            done.append(name)

        commit = asyncio.ensure_future(flush_and_note("commit"))
        await asyncio.sleep(0)
        rebalance = asyncio.ensure_future(flush_and_note("rebalance"))
        await asyncio.sleep(0.01)
        assert done == []  # the rebalance's flush waits while the commit's sends
        producer.release.set()
        await asyncio.gather(commit, rebalance)
        assert producer.sent() == [(0, b"a", b"a1")]
        return done

    assert asyncio.run(scenario()) == ["commit", "rebalance"]


def test_an_erased_key_gets_its_tombstone_at_the_next_flush_unless_it_has_a_record_again() -> None:
    table = Table()
    changelog = DeferredChangelog(table, TOPIC)
    changelog.take(batch_changing(table, [(0, b"erin", b"v1"), (0, b"olga", b"v1"), (1, b"back", b"v1")]))
    erasing = Outputs()
    for partition, key in ((0, b"erin"), (1, b"back")):
        del table.data[key]  # what WorkingSet.erase does to the store
        erasing.add(TOPIC, partition, key, None)
    changelog.take(erasing)
    changelog.take(batch_changing(table, [(1, b"back", b"v2")]))  # a new event after the erasure: a new record
    producer = Producer()
    flush(changelog, producer)
    assert sorted(producer.sent()) == [(0, b"erin", None), (0, b"olga", b"v1"), (1, b"back", b"v2")]
    producer = Producer()
    assert flush(changelog, producer) == 0  # the tombstone went once


def test_a_key_dropped_by_a_rebalance_gets_no_tombstone() -> None:
    table = Table()
    changelog = DeferredChangelog(table, TOPIC)
    changelog.take(batch_changing(table, [(0, b"moved", b"v1")]))
    del table.data[b"moved"]  # Faust dropped the partition's records: not ours any more, not erased
    producer = Producer()
    assert flush(changelog, producer) == 0 and producer.sent() == []
