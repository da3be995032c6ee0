"""Reading event history from files, for replay and backtest.

Two shapes are accepted:
- JSON Lines in the wire contract's shape (docs/events.md), one event per line;
- CSV with a header naming ``customer_id,occurred_at,amount`` (purchase histories as
  they come out of a shop database); each row becomes a ``purchase.completed``.

Lines that do not validate are not fatal: they are counted, and reported with
their line number and reason (the replay's dead-letter file), never silently lost.
"""

from __future__ import annotations

import gc
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import msgspec

from scoring.contract import Event, PurchaseCompleted, Rejection, decode_event
from scoring.fleet_budget import FleetBudget, within_budget
from scoring.output import rfc3339
from stream.commands.transactions import ReadReport, read_purchases
from stream.settings import Settings

NO_FUTURE_CHECK_MS = 2**62


@dataclass
class Rejected:
    line: int
    reason: str
    detail: str


@dataclass
class History:
    events: list[Event]
    read: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    #: Each event's wire JSON, in the events' order (``keep_lines``: the Rust kernel reads it).
    lines: list[bytes] | None = None


def is_csv(path: Path) -> bool:
    with open(path, "rb") as handle:
        first = handle.readline().lstrip(b"\xef\xbb\xbf").strip()
    return not first.startswith(b"{") and b"customer_id" in first and b"occurred_at" in first


def _csv_events(path: Path, history: History) -> Iterator[tuple[Event, bytes | None]]:
    report = ReadReport()
    seen: dict[str, int] = {}
    for customer, at_ms, amount in read_purchases(path, report):
        content = f"{customer}\x1f{at_ms}\x1f{amount!r}"
        seen[content] = seen.get(content, 0) + 1
        # Content-based ids: the same rows in another order give the same events.
        event_id = "csv-" + hashlib.blake2b(f"{content}\x1f{seen[content]}".encode(), digest_size=12).hexdigest()
        yield Event(event_id, "purchase.completed", customer, at_ms, PurchaseCompleted(event_id, amount, "XXX")), None
    history.read += report.rows
    history.rejected.extend(Rejected(line, "invalid_field", reason) for line, reason in report.rejected)


def _jsonl_events(path: Path, history: History, now_ms: int, max_skew_ms: int) -> Iterator[tuple[Event, bytes | None]]:
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line:
                continue
            history.read += 1
            decoded = decode_event(None, line, None, now_ms, max_skew_ms)
            if isinstance(decoded, Rejection):
                history.rejected.append(Rejected(number, decoded.reason.value, decoded.detail))
            else:
                yield decoded, line


def read_history(
    path: Path,
    now_ms: int | None = None,
    max_skew_ms: int = 0,
    progress: Callable[[int], None] | None = None,
    keep_lines: bool = False,
) -> History:
    """All valid events of a file, sorted by event time (ties by event id, so file order does not matter).

    ``now_ms`` rejects events stamped after it (plus the skew); None accepts any time.
    ``keep_lines`` keeps each event's wire JSON too (a CSV row's written as the contract's).
    """
    history = History(events=[])
    lines: list[bytes] = []
    source = _csv_events(path, history) if is_csv(path) else _jsonl_events(path, history, now_ms or NO_FUTURE_CHECK_MS, max_skew_ms)
    # Millions of new objects, none in a reference cycle: the collector would walk them
    # all again and again (a fifth of the reading time) to find nothing.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for event, line in source:
            history.events.append(event)
            if keep_lines:
                lines.append(line if line is not None else wire_line(event))
            if progress is not None and len(history.events) % 50_000 == 0:
                progress(len(history.events))
    finally:
        if collecting:
            gc.enable()
    if not keep_lines:
        history.events.sort(key=lambda event: (event.occurred_at_ms, event.event_id))
        return history
    events = history.events
    keys = [(event.occurred_at_ms, event.event_id) for event in events]
    order = sorted(range(len(events)), key=keys.__getitem__)
    del keys
    history.events = [events[index] for index in order]
    history.lines = [lines[index] for index in order]
    return history


def wire_line(event: Event) -> bytes:
    """An event as the wire contract writes it (docs/events.md)."""
    return msgspec.json.encode(
        {"event_id": event.event_id, "type": event.type, "customer_id": event.customer_id, "occurred_at": rfc3339(event.occurred_at_ms), "data": event.data}
    )


def write_rejects(path: Path, rejected: list[Rejected]) -> None:
    with open(path, "wb") as out:
        for item in rejected:
            out.write(msgspec.json.encode({"line": item.line, "reason": item.reason, "detail": item.detail}) + b"\n")


def budgeted(items: Iterable, settings: Settings) -> Iterator:
    """A replay's outputs within the fleet's daily alert budget (``alerts.max_alerts_per_day``),
    spent per partition as the worker spends it: the customer's partition by the murmur2
    hash of its id, as the inputs are partitioned."""
    budget = FleetBudget(settings.alerts.max_alerts_per_day, settings.partitions)
    if not budget.per_day:
        return iter(items)
    from aiokafka.partitioner import murmur2

    partitions = settings.partitions

    def partition_of(customer_id: str) -> int:
        return (murmur2(customer_id.encode()) & 0x7FFFFFFF) % partitions

    return within_budget(items, budget, partition_of, lambda item: None)
