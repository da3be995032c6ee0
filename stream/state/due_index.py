"""Customers kept by the minute something is next due for them (the sweep's next rescoring,
the fleet export's next recount): a heap of minutes, each with its customers."""

from __future__ import annotations

import heapq

#: Customers due within the same minute are kept together (taken early, never late).
DUE_BUCKET_MS = 60_000


class DueIndex:
    """One partition's customers by due minute. A customer may sit in an earlier minute as
    well as its current one (the callers find out when they take it): early, never late."""

    def __init__(self) -> None:
        self._due: dict[int, set[bytes]] = {}
        self._minutes: list[int] = []  # a heap of the minutes in ``_due``

    def schedule(self, key: bytes, due_ms: int | None) -> None:
        """``due_ms`` None: nothing is ever due for the customer by time alone."""
        if due_ms is None:
            return
        minute = due_ms // DUE_BUCKET_MS
        keys = self._due.get(minute)
        if keys is None:
            keys = self._due[minute] = set()
            heapq.heappush(self._minutes, minute)
        keys.add(key)

    def unschedule(self, key: bytes, due_ms: int | None) -> None:
        if due_ms is not None and (keys := self._due.get(due_ms // DUE_BUCKET_MS)) is not None:
            keys.discard(key)

    def take(self, at_ms: int) -> set[bytes]:
        """The customers due by ``at_ms``."""
        due: set[bytes] = set()
        while self._minutes and self._minutes[0] <= at_ms // DUE_BUCKET_MS:
            due |= self._due.pop(heapq.heappop(self._minutes), set())
        return due

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._due.values())
