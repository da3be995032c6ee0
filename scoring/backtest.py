"""How well a risk ranking predicts churn: the metrics of ``healthscore backtest``.

Pure functions over (risk, churned) pairs, where a higher risk means "more
likely to churn". They are the standard ones, written out so a reader can check
them against a hand computation (tests/unit/test_backtest.py does).
"""

from __future__ import annotations

import statistics
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
