"""The fleet's daily alert budget (scoring/fleet_budget.py): its share per partition, its days,
and the riskiest first among alerts raised at the same moment."""

from __future__ import annotations

from scoring.fleet_budget import DAY_MS, FleetBudget, within_budget
from scoring.structs import Alert, AlertRaised, ScoreChanged

DAY0 = 20_000 * DAY_MS  # a midnight, UTC


def raised(customer: str, at_ms: int, churn_risk: float) -> AlertRaised:
    return AlertRaised(Alert(f"{customer}-{at_ms}", customer, "band_downgrade", "warning", 30.0, 60.0, "critical", churn_risk, [], at_ms, ""))


def test_each_partition_spends_its_share_of_the_day_and_a_new_day_starts_afresh() -> None:
    budget = FleetBudget(per_day=5, partitions=2)  # ceil(5 / 2) = 3 a partition
    assert budget.share == 3
    assert [budget.admit(0, DAY0 + hour * 3_600_000) for hour in range(4)] == [True, True, True, False]
    assert budget.admit(1, DAY0 + 5)  # another partition's share
    assert budget.admit(0, DAY0 + DAY_MS)  # the next day


def test_alerts_read_back_after_a_restart_spend_the_budget_and_a_rebalance_forgets_them() -> None:
    budget = FleetBudget(per_day=2, partitions=1)
    budget.note(0, DAY0 + 10)
    budget.note(0, DAY0 + 20)
    assert not budget.admit(0, DAY0 + 30)
    budget.forget()
    assert budget.admit(0, DAY0 + 30)


def test_no_budget_admits_everything() -> None:
    budget = FleetBudget(per_day=0, partitions=8)
    assert all(budget.admit(0, DAY0) for _ in range(1000))


def test_alerts_raised_at_the_same_moment_spend_it_riskiest_first_and_the_others_are_heard_of() -> None:
    sweep_at = DAY0 + 9 * 3_600_000
    items = [
        raised("early", DAY0 + 1, 0.1),
        ScoreChanged("a", None, None),  # type: ignore[arg-type]  (passed through untouched)
        raised("a", sweep_at, 0.2),
        raised("b", sweep_at, 0.9),
        raised("c", sweep_at, 0.5),
    ]
    over: list[str] = []
    out = list(within_budget(items, FleetBudget(per_day=3, partitions=1), lambda customer: 0, lambda item: over.append(item.alert.customer_id)))
    assert [item.alert.customer_id if isinstance(item, AlertRaised) else "score" for item in out] == ["score", "early", "b", "c"]
    assert over == ["a"]
