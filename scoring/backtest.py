"""How well a risk ranking predicts churn: the metrics of ``healthscore backtest``.

Pure functions over (risk, churned) pairs, where a higher risk means "more
likely to churn". They are the standard ones, written out so a reader can check
them against a hand computation (tests/unit/test_backtest.py does).
"""

from __future__ import annotations

import statistics
from bisect import bisect_left
from dataclasses import dataclass
from typing import Sequence


def _average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def roc_auc(risks: Sequence[float], churned: Sequence[bool]) -> float | None:
    """Probability that a random churner is ranked riskier than a random retained customer (ties count half).

    Mann-Whitney U / (positives × negatives); None when either class is empty.
    """
    positives = sum(churned)
    negatives = len(churned) - positives
    if positives == 0 or negatives == 0:
        return None
    ranks = _average_ranks(risks)
    rank_sum = sum(rank for rank, label in zip(ranks, churned) if label)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def roc_curve(risks: Sequence[float], churned: Sequence[bool]) -> list[tuple[float, float]]:
    """(false-positive rate, true-positive rate) points from the riskiest threshold down."""
    positives = sum(churned)
    negatives = len(churned) - positives
    points = [(0.0, 0.0)]
    true_positives = false_positives = 0
    pairs = sorted(zip(risks, churned), key=lambda pair: -pair[0])
    for index, (risk, label) in enumerate(pairs):
        true_positives += label
        false_positives += not label
        if index + 1 == len(pairs) or pairs[index + 1][0] != risk:
            points.append((false_positives / negatives if negatives else 0.0, true_positives / positives if positives else 0.0))
    return points


@dataclass(frozen=True)
class Classification:
    precision: float | None
    recall: float | None
    flagged: int


def precision_recall(flagged: Sequence[bool], churned: Sequence[bool]) -> Classification:
    hits = sum(1 for f, c in zip(flagged, churned) if f and c)
    flagged_count = sum(flagged)
    positives = sum(churned)
    return Classification(
        precision=hits / flagged_count if flagged_count else None,
        recall=hits / positives if positives else None,
        flagged=flagged_count,
    )


def precision_at_k(risks: Sequence[float], churned: Sequence[bool], k: int) -> float | None:
    """Share of churners among the k riskiest (ties broken by input order)."""
    if k <= 0 or not risks:
        return None
    top = sorted(range(len(risks)), key=lambda index: (-risks[index], index))[:k]
    return sum(churned[index] for index in top) / len(top)


def lift_at_k(risks: Sequence[float], churned: Sequence[bool], k: int) -> float | None:
    """Precision at k over the base churn rate: how many times better than picking at random."""
    base = sum(churned) / len(churned) if churned else 0
    precision = precision_at_k(risks, churned, k)
    return None if precision is None or base == 0 else precision / base


def calibration(risks: Sequence[float], churned: Sequence[bool], bins: int = 10) -> list[tuple[float, float, int]]:
    """(mean predicted risk, observed churn rate, customers) per bin of equal width on 0-1."""
    grouped: dict[int, list[tuple[float, bool]]] = {}
    for risk, label in zip(risks, churned):
        grouped.setdefault(min(bins - 1, int(risk * bins)), []).append((risk, label))
    return [
        (sum(r for r, _ in members) / len(members), sum(l for _, l in members) / len(members), len(members))
        for _, members in sorted(grouped.items())
    ]


def brier_score(risks: Sequence[float], churned: Sequence[bool]) -> float | None:
    """Mean squared difference between each predicted probability and what happened (0 or 1):
    lower is better; predicting the base rate for everyone scores base × (1 − base)."""
    if not risks:
        return None
    return sum((risk - float(label)) ** 2 for risk, label in zip(risks, churned)) / len(risks)


def reliability(risks: Sequence[float], churned: Sequence[bool], groups: int = 10) -> list[tuple[float, float, int]]:
    """(mean predicted risk, observed churn rate, customers) per tenth of the customers ordered
    by predicted risk (ties kept together in the lower group): read it as "of the customers
    given about p, how many churned"."""
    ordered = sorted(zip(risks, churned), key=lambda pair: pair[0])
    rows: list[tuple[float, float, int]] = []
    start = 0
    for group in range(1, groups + 1):
        end = round(group * len(ordered) / groups)
        while 0 < end < len(ordered) and ordered[end][0] == ordered[end - 1][0]:
            end += 1
        members = ordered[start:end]
        if members:
            rows.append((sum(r for r, _ in members) / len(members), sum(l for _, l in members) / len(members), len(members)))
        start = max(start, end)
    return rows


def median_or_none(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def quintile_scores(values: Sequence[float]) -> list[int]:
    """1 (lowest fifth) … 5 (highest fifth), by rank; ties share a quintile."""
    if not values:
        return []
    ranks = _average_ranks(values)
    return [min(5, 1 + int(5 * (rank - 1) / len(values))) for rank in ranks]


def rfm_risk(recency_days: Sequence[float], frequency: Sequence[float], monetary: Sequence[float]) -> list[float]:
    """RFM baseline: quintile scores (recent, frequent, big spenders score high); risk = 15 − R − F − M."""
    recency = quintile_scores([-days for days in recency_days])
    frequent = quintile_scores(frequency)
    spend = quintile_scores(monetary)
    return [15.0 - r - f - m for r, f, m in zip(recency, frequent, spend)]


@dataclass(frozen=True)
class RankingQuality:
    roc_auc: float | None
    precision_at_k: float | None
    lift_at_k: float | None


def ranking_quality(risks: Sequence[float], churned: Sequence[bool], k: int) -> RankingQuality:
    return RankingQuality(roc_auc(risks, churned), precision_at_k(risks, churned, k), lift_at_k(risks, churned, k))


# --- Alert quality: is an alert worth a customer-success manager's time? ---------------

MONTH_MS = 30 * 86_400_000


@dataclass(frozen=True)
class AlertQuality:
    """How one set of alerts (a rule, a severity, all of them, a baseline) did.

    ``alerted``: customers alive at as-of with an alert in the window before it (30 days by
    default). Their churn rate within the horizon against the base rate is the ``lift``, and
    ``recall_in_window`` the share of the horizon's churners among them. ``recall`` looks
    further back (the lookback, 90 days by default): the share of the horizon's churners
    with an alert in it, and ``median_lead_days`` the median time from such a churner's
    first alert in the lookback to its churn.
    """

    alerts: int
    per_customer_month: float | None
    alerted: int
    alerted_share: float | None
    alerted_churn_rate: float | None
    lift: float | None
    recall_in_window: float | None
    recall: float | None
    median_lead_days: float | None


def _first_alerts(alerts: Sequence[tuple[str, int]], alive: set[str], since_ms: int, until_ms: int) -> dict[str, int]:
    """Each alive customer's first alert in (since, until]."""
    first: dict[str, int] = {}
    for customer, at_ms in alerts:
        if customer in alive and since_ms < at_ms <= until_ms and (customer not in first or at_ms < first[customer]):
            first[customer] = at_ms
    return first


def alert_quality(
    alerts: Sequence[tuple[str, int]],
    customer_months: float,
    population: Sequence[str],
    churned_at: dict[str, int],
    as_of_ms: int,
    window_ms: int,
    lookback_ms: int,
) -> AlertQuality:
    """``alerts``: (customer, raised at) of every alert of the set over the history up to
    as-of; ``customer_months``: the months each customer was observed, summed (the
    denominator of alerts per customer per month); ``population``: the customers alive at
    as-of; ``churned_at``: when those who churned within the horizon did."""
    alive = set(population)
    in_window = _first_alerts(alerts, alive, as_of_ms - window_ms, as_of_ms)
    in_lookback = _first_alerts(alerts, alive, as_of_ms - lookback_ms, as_of_ms)
    alerted = len(in_window)
    churners_in_window = sum(1 for customer in in_window if customer in churned_at)
    churners_in_lookback = [customer for customer in in_lookback if customer in churned_at]
    base = len(churned_at) / len(population) if population else None
    churn_rate = churners_in_window / alerted if alerted else None
    leads = [(churned_at[customer] - in_lookback[customer]) / 86_400_000 for customer in churners_in_lookback]
    return AlertQuality(
        alerts=len(alerts),
        per_customer_month=len(alerts) / customer_months if customer_months > 0 else None,
        alerted=alerted,
        alerted_share=alerted / len(population) if population else None,
        alerted_churn_rate=churn_rate,
        lift=churn_rate / base if churn_rate is not None and base else None,
        recall_in_window=churners_in_window / len(churned_at) if churned_at else None,
        recall=len(churners_in_lookback) / len(churned_at) if churned_at else None,
        median_lead_days=median_or_none(leads),
    )


def recency_alerts(event_times: dict[str, Sequence[int]], silent_ms: int, until_ms: int) -> list[tuple[str, int]]:
    """The recency baseline as alerts: one when a customer has had no event for ``silent_ms``
    (at that moment, once per silence), up to ``until_ms``. ``event_times`` sorted per customer."""
    raised: list[tuple[str, int]] = []
    for customer, times in event_times.items():
        for current, following in zip(times, [*times[1:], None]):
            due = current + silent_ms
            if due <= until_ms and (following is None or following > due):
                raised.append((customer, due))
    return raised


@dataclass(frozen=True)
class BandShare:
    band: str
    customers: int
    share: float
    churn_rate: float | None


def band_shares(bands: Sequence[str], churned: Sequence[bool], names: Sequence[str]) -> list[BandShare]:
    """Per band: how many customers are in it at as-of, their share, and their churn rate."""
    result = []
    for name in names:
        members = [c for band, c in zip(bands, churned) if band == name]
        result.append(
            BandShare(name, len(members), len(members) / len(bands) if bands else 0.0, sum(members) / len(members) if members else None)
        )
    return result


def edge_for_share(scores: Sequence[float], share: float) -> float | None:
    """The lowest score edge below which at most ``share`` of the customers fall: set as a band's
    lower edge, it flags about that share (customers tied on the edge stay above it)."""
    if not scores:
        return None
    ordered = sorted(scores)
    index = int(share * len(ordered))
    return ordered[min(index, len(ordered) - 1)]


# --- Did our actions help? ---------------------------------------------------------------

#: One customer's published scores in time order: (as_of_ms, score, band).
ScoreHistory = list[tuple[int, float, str]]


def score_before(history: ScoreHistory, at_ms: int) -> tuple[float, str] | None:
    """The last score published strictly before ``at_ms`` (what a CSM saw then), or None."""
    index = bisect_left(history, (at_ms,)) - 1
    return (history[index][1], history[index][2]) if index >= 0 else None


@dataclass(frozen=True)
class TouchpointEffect:
    """Health change over the ``days`` after a CSM touchpoint, against customers without one
    who were in the same band on the same day: an association, not a causal estimate (CSMs
    choose whom they call)."""

    touched: int
    mean_change_touched: float | None
    mean_change_comparable: float | None
    difference: float | None
    days: float


def touchpoint_effect(touches: dict[str, int], histories: dict[str, ScoreHistory], untouched: list[str], days: float) -> TouchpointEffect:
    """``touches``: each touched customer's touchpoint time. A touched customer counts when it
    had a score before the touchpoint and comparable customers (same band that day) exist."""
    after_ms = int(days * 86_400_000)
    comparable: dict[tuple[int, str], float | None] = {}
    touched_changes: list[float] = []
    comparable_changes: list[float] = []
    for customer, at_ms in sorted(touches.items()):
        history = histories.get(customer, [])
        before, after = score_before(history, at_ms), score_before(history, at_ms + after_ms + 1)
        if before is None or after is None:
            continue
        key = (at_ms // 86_400_000, before[1])
        if key not in comparable:
            comparable[key] = _band_change(histories, untouched, key[0] * 86_400_000, after_ms, before[1])
        if comparable[key] is None:
            continue
        touched_changes.append(after[0] - before[0])
        comparable_changes.append(comparable[key])  # type: ignore[arg-type]
    mean_touched = sum(touched_changes) / len(touched_changes) if touched_changes else None
    mean_comparable = sum(comparable_changes) / len(comparable_changes) if comparable_changes else None
    difference = mean_touched - mean_comparable if mean_touched is not None and mean_comparable is not None else None
    return TouchpointEffect(len(touched_changes), mean_touched, mean_comparable, difference, days)


def _band_change(histories: dict[str, ScoreHistory], customers: list[str], day_ms: int, after_ms: int, band: str) -> float | None:
    """Mean score change over ``after_ms`` from ``day_ms`` of the customers in ``band`` then."""
    changes = []
    for customer in customers:
        history = histories.get(customer, [])
        before, after = score_before(history, day_ms), score_before(history, day_ms + after_ms + 1)
        if before is not None and after is not None and before[1] == band:
            changes.append(after[0] - before[0])
    return sum(changes) / len(changes) if changes else None
