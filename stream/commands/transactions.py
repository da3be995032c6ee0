"""Reading purchase histories from CSV files (``customer_id,occurred_at,amount``)."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

REQUIRED_COLUMNS = ("customer_id", "occurred_at", "amount")


class TransactionsError(ValueError):
    pass


@dataclass
class ReadReport:
    rows: int = 0
    #: (line number, reason) of every row that could not be used
    rejected: list[tuple[int, str]] = field(default_factory=list)

    def skip(self, line: int, reason: str) -> None:
        self.rejected.append((line, reason))

    @property
    def skipped(self) -> int:
        return len(self.rejected)

    @property
    def examples(self) -> list[str]:
        return [f"line {line}: {reason}" for line, reason in self.rejected[:5]]


def parse_time_ms(text: str) -> int:
    """RFC 3339, epoch milliseconds, or a date / date-time without offset (read as UTC)."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp() * 1000)


def read_purchases(path: Path, report: ReadReport) -> Iterator[tuple[str, int, float]]:
    """(customer id, epoch ms, amount) per valid row; bad rows are counted in ``report``, not fatal."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise TransactionsError(f"{path}: the header must name {', '.join(REQUIRED_COLUMNS)}; missing {', '.join(missing)}")
        for row in reader:
            report.rows += 1
            line = reader.line_num
            customer = (row["customer_id"] or "").strip()
            if not customer:
                report.skip(line, "empty customer_id")
                continue
            try:
                at_ms = parse_time_ms(row["occurred_at"] or "")
            except ValueError:
                report.skip(line, f"occurred_at {row['occurred_at']!r} is not a date")
                continue
            try:
                amount = float(row["amount"])
            except (TypeError, ValueError):
                report.skip(line, f"amount {row['amount']!r} is not a number")
                continue
            if not (amount >= 0 and amount != float("inf")):
                report.skip(line, f"amount {row['amount']!r} is negative or infinite")
                continue
            yield customer, at_ms, amount
