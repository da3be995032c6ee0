"""The alert ledger remembers the newest published ids per partition, as many as it reads back."""

from __future__ import annotations

import asyncio

from stream.alert_ledger import AlertLedger


def test_the_ledger_keeps_the_newest_ids_of_each_partition_up_to_the_tail_it_reads_back() -> None:
    ledger = AlertLedger("127.0.0.1:1", "alerts", tail_messages=3)  # no broker needed: nothing is read back
    for number in range(5):
        ledger.record(0, f"a{number}")
    ledger.record(0, "a4")  # again: no second place in the window
    ledger.record(1, "b0")

    async def published() -> list[bool]:
        return [await ledger.is_published(0, f"a{number}") for number in range(5)] + [await ledger.is_published(1, "b0")]

    assert asyncio.run(published()) == [False, False, True, True, True, True]
