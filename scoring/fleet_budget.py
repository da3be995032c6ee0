"""The fleet's daily alert budget: at most ``per_day`` alerts a day across all customers,
the riskiest first among those raised at the same moment.

A worker owns some partitions only, and alerts must leave when they are raised, not at the
end of the day. So the budget is spent per partition (customers are spread evenly over
partitions by their key's hash): each of ``partitions`` may raise ``ceil(per_day / partitions)``
alerts per day of event time (UTC), in the order they are raised; alerts raised at the same
moment (one event's, one sweep step's) are taken riskiest first. What is over is counted,
not sent. The worker and the replay spend it the same way, so the backtest measures it.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Iterator

from scoring.structs import AlertLine, AlertRaised, ScoreChanged, ScoreLine

DAY_MS = 86_400_000


class FleetBudget:
    """Alerts admitted per (partition, day); ``per_day`` 0 admits everything."""

    def __init__(self, per_day: int, partitions: int) -> None:
        self.per_day = per_day
        self.share = math.ceil(per_day / max(1, partitions)) if per_day else 0
        self._spent: dict[tuple[int, int], int] = {}

    def admit(self, partition: int, at_ms: int) -> bool:
        """Whether an alert raised at ``at_ms`` on ``partition`` fits the day's budget (and spends it)."""
        if not self.per_day:
            return True
        day = at_ms // DAY_MS
        spent = self._spent.get((partition, day), 0)
        if spent >= self.share:
            return False
        self._spent[(partition, day)] = spent + 1
        if len(self._spent) > 4096:
            self._forget_before(day - 1)
        return True

    def note(self, partition: int, at_ms: int) -> None:
        """An alert already published (read back after a restart) spent its day's budget."""
        if self.per_day:
            key = (partition, at_ms // DAY_MS)
            self._spent[key] = self._spent.get(key, 0) + 1

    def forget(self) -> None:
        """Partitions moved (a rebalance): what they spent is read back from the alerts topic."""
        self._spent.clear()

    def _forget_before(self, day: int) -> None:
        for key in [key for key in self._spent if key[1] < day]:
            del self._spent[key]


def riskiest_first(churn_risk: float, occurred_at_ms: int) -> tuple[int, float]:
    """The order alerts spend the budget in: by time, and at the same time the riskiest first."""
    return (occurred_at_ms, -churn_risk)


def alert_key(item: object) -> tuple[str, int, float] | None:
    """An output's (customer, moment raised, churn risk) when it is an alert, else None."""
    if isinstance(item, AlertRaised):
        return item.alert.customer_id, item.alert.occurred_at_ms, item.alert.churn_risk
    if isinstance(item, AlertLine):
        return item.customer_id, item.occurred_at_ms, item.churn_risk
    return None


def within_budget(
    items: Iterable[ScoreChanged | AlertRaised | ScoreLine | AlertLine],
    budget: FleetBudget,
    partition_of: Callable[[str], int],
    over: Callable[[AlertRaised | AlertLine], None],
) -> Iterator[ScoreChanged | AlertRaised | ScoreLine | AlertLine]:
    """A replay's outputs with the alerts the budget admits: those raised at the same moment
    (consecutive, same event time) spend it riskiest first; ``over`` hears of the others."""
    waiting: list[tuple[tuple[str, int, float], AlertRaised | AlertLine]] = []

    def admitted() -> Iterator[AlertRaised | AlertLine]:
        waiting.sort(key=lambda entry: riskiest_first(entry[0][2], entry[0][1]))
        for (customer_id, occurred_at_ms, _), item in waiting:
            if budget.admit(partition_of(customer_id), occurred_at_ms):
                yield item
            else:
                over(item)
        waiting.clear()

    for item in items:
        key = alert_key(item)
        if key is not None:
            if waiting and waiting[0][0][1] != key[1]:
                yield from admitted()
            waiting.append((key, item))  # type: ignore[arg-type]
        else:
            yield item
    yield from admitted()
