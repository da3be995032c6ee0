"""Backtest metrics on hand-computed cases, and the command end to end with its HTML report."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from scoring import backtest as m
from stream.cli import main
from stream.commands.generate import write_history

# Five customers: risks and who churned.
RISKS = [0.9, 0.8, 0.4, 0.3, 0.1]
CHURNED = [True, False, True, False, False]


def test_roc_auc_by_hand() -> None:
    # Pairs (churner, retained) ranked right: 0.9 beats 0.8, 0.3, 0.1 (3); 0.4 beats 0.3, 0.1 (2): 5 of 6.
    assert m.roc_auc(RISKS, CHURNED) == pytest.approx(5 / 6)


@pytest.mark.parametrize(
    ("risks", "churned", "expected"),
    [
        ([0.5, 0.5], [True, False], 0.5),  # a tie counts half
        ([1, 0], [True, False], 1.0),
        ([0, 1], [True, False], 0.0),
        ([0.2, 0.3], [True, True], None),  # one class only: undefined
    ],
)
def test_roc_auc_edges(risks, churned, expected) -> None:
    assert m.roc_auc(risks, churned) == expected


def test_roc_curve_by_hand() -> None:
    assert m.roc_curve(RISKS, CHURNED) == [(0, 0), (0, 0.5), (1 / 3, 0.5), (1 / 3, 1.0), (2 / 3, 1.0), (1.0, 1.0)]


def test_precision_recall_lift_by_hand() -> None:
    flagged = [risk >= 0.4 for risk in RISKS]
    result = m.precision_recall(flagged, CHURNED)
    assert (result.precision, result.recall, result.flagged) == (pytest.approx(2 / 3), 1.0, 3)
    assert m.precision_at_k(RISKS, CHURNED, 2) == 0.5
    assert m.lift_at_k(RISKS, CHURNED, 2) == pytest.approx(0.5 / 0.4)
    assert m.precision_at_k(RISKS, CHURNED, 0) is None


def test_calibration_bins_by_hand() -> None:
    assert m.calibration([0.05, 0.08, 0.95], [False, True, True]) == [(pytest.approx(0.065), 0.5, 2), (0.95, 1.0, 1)]


def test_the_brier_score_and_the_reliability_table() -> None:
    assert m.brier_score([0.0, 1.0], [False, True]) == 0.0
    assert m.brier_score([0.5, 0.5], [False, True]) == 0.25
    assert m.brier_score([], []) is None
    base = 0.2
    assert m.brier_score([base] * 10, [True] * 2 + [False] * 8) == pytest.approx(base * (1 - base))
    risks = [index / 100 for index in range(100)]
    rows = m.reliability(risks, [index >= 90 for index in range(100)])
    assert len(rows) == 10 and all(count == 10 for _, _, count in rows)
    assert [observed for _, observed, _ in rows] == [0.0] * 9 + [1.0]
    assert rows[0][0] == pytest.approx(0.045)
    # Ties stay in one group: 30 customers at the same risk are one row.
    tied = m.reliability([0.1] * 30 + [0.9] * 10, [False] * 30 + [True] * 10, groups=4)
    assert [(count, observed) for _, observed, count in tied] == [(30, 0.0), (10, 1.0)]


def test_rfm_scores_recent_frequent_big_spenders_as_safest() -> None:
    risk = m.rfm_risk(recency_days=[1, 50, 2, 80, 3], frequency=[40, 1, 30, 0, 20], monetary=[500, 5, 300, 0, 100])
    assert risk.index(min(risk)) == 0 and risk.index(max(risk)) == 3
    assert m.quintile_scores([1, 2, 3, 4, 5]) == [1, 2, 3, 4, 5]


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "img":
            self.images.append(dict(attrs)["src"])


def test_backtest_command_prints_a_summary_and_writes_a_readable_report(tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    labels = tmp_path / "labels.csv"
    end = 1_790_000_000_000
    write_history(str(history), str(labels), customers=300, events=25_000, start_ms=end - 150 * 86_400_000, end_ms=end, seed=12)
    report = tmp_path / "report.html"
    result = CliRunner().invoke(
        main,
        ["backtest", "--input", str(history), "--labels", str(labels), "--as-of", "2026-08-01", "--horizon", "30", "--report", str(report)],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["customers"] > 0 and 0 < summary["churned"] < summary["customers"]
    assert set(summary["baselines"]) == {"recency", "rfm"}
    assert 0.5 < summary["model"]["roc_auc"] <= 1.0
    assert summary["lead_time_days"]["churners"] == summary["churned"]
    quality = summary["alert_quality"]
    assert quality["overall"]["alerts"] == sum(rule["alerts"] for rule in quality["by_rule"].values())
    assert quality["overall"]["alerts"] == sum(severity["alerts"] for severity in quality["by_severity"].values())
    assert quality["recency_baseline"]["alerts"] > 0
    assert [band["band"] for band in summary["bands"]] == ["healthy", "at_risk", "critical"]
    assert sum(band["customers"] for band in summary["bands"]) == summary["customers"]
    edges = summary["band_edges_for_shares"]
    assert edges["at_risk_min"] <= edges["healthy_min"]
    page = report.read_text()
    assert "<title>Health score backtest" in page and "ROC AUC" in page
    assert "<h2>Alert quality</h2>" in page and "recency baseline" in page
    parser = _Images()
    parser.feed(page)
    assert len(parser.images) == 3
    for source in parser.images:
        data = base64.b64decode(re.sub(r"^data:image/png;base64,", "", source))
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000


def test_the_touchpoint_effect_compares_with_customers_in_the_same_band_that_day() -> None:
    day = 86_400_000
    histories = {
        "called": [(0, 40.0, "at_risk"), (10 * day, 42.0, "at_risk"), (35 * day, 60.0, "healthy")],
        "also-at-risk": [(0, 41.0, "at_risk"), (20 * day, 36.0, "at_risk"), (40 * day, 30.0, "critical")],
        "healthy": [(0, 80.0, "healthy"), (40 * day, 90.0, "healthy")],  # another band: not comparable
        "new": [(20 * day, 50.0, "healthy")],  # no score before the touchpoint's day: not comparable
    }
    effect = m.touchpoint_effect({"called": 5 * day + 3}, histories, ["also-at-risk", "healthy", "new"], 30.0)
    # called: 40 before the call, 60 thirty days after; also-at-risk, at risk that day too: 41 then 36.
    assert effect.touched == 1
    assert effect.mean_change_touched == 20.0 and effect.mean_change_comparable == -5.0 and effect.difference == 25.0
    assert m.touchpoint_effect({"called": 5 * day}, histories, ["healthy"], 30.0).touched == 0  # nobody comparable
    assert m.touchpoint_effect({}, histories, ["also-at-risk"], 30.0).difference is None


def test_the_backtest_reports_the_health_after_csm_touchpoints(tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    end = 1_790_000_000_000
    write_history(str(history), str(tmp_path / "labels.csv"), customers=200, events=12_000, start_ms=end - 150 * 86_400_000, end_ms=end, seed=5)
    as_of = 1_785_542_400_000  # 2026-08-01
    customers = sorted({json.loads(line)["customer_id"] for line in history.read_text().splitlines()})[:40]
    with history.open("a") as handle:
        for index, customer in enumerate(customers):
            at = as_of - (45 + index % 10) * 86_400_000
            handle.write(json.dumps({"event_id": f"csm-{index}", "type": "csm.touchpoint", "customer_id": customer, "occurred_at": at,
                                     "data": {"channel": "call", "sentiment": "positive"}}) + "\n")
    report = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["backtest", "--input", str(history), "--as-of", "2026-08-01", "--horizon", "30", "--report", str(report)])
    assert result.exit_code == 0, result.output
    effect = json.loads(result.stdout)["csm_touchpoints"]
    assert 0 < effect["touched"] <= 40 and effect["days"] == 30.0
    assert effect["difference"] == pytest.approx(effect["mean_change_touched"] - effect["mean_change_comparable"], abs=1e-3)
    assert "Did our actions help?" in report.read_text() and "not a causal estimate" in report.read_text()


def test_without_labels_churn_means_no_purchase_within_the_horizon(tmp_path: Path) -> None:
    orders = tmp_path / "orders.csv"
    rows = ["customer_id,occurred_at,amount"]
    for customer in range(40):
        for month in range(1, 7 if customer % 2 else 9):  # odd customers stop buying after June
            rows.append(f"c{customer},2026-{month:02d}-{1 + customer % 27:02d},{10 + customer}")
    orders.write_text("\n".join(rows) + "\n")
    result = CliRunner().invoke(
        main, ["backtest", "--input", str(orders), "--as-of", "2026-07-01", "--horizon", "60", "--report", str(tmp_path / "r.html")]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["labels"] == "no purchase within the horizon"
    assert (summary["customers"], summary["churned"]) == (40, 20)


def test_labels_file_problems_are_clear(tmp_path: Path) -> None:
    history = tmp_path / "h.jsonl"
    write_history(str(history), str(tmp_path / "l.csv"), customers=5, events=50, start_ms=1_780_000_000_000, end_ms=1_790_000_000_000, seed=1)
    bad = tmp_path / "bad.csv"
    bad.write_text("customer,when\nx,y\n")
    result = CliRunner().invoke(main, ["backtest", "--input", str(history), "--labels", str(bad), "--as-of", "2026-09-01", "--horizon", "30"])
    assert result.exit_code == 1 and "customer_id,churned_at" in result.output


DAY = 86_400_000


def test_alert_quality_by_hand() -> None:
    """Five customers alive at as-of (day 100), two of whom churn within the horizon."""
    as_of = 100 * DAY
    population = ["a", "b", "c", "d", "e"]
    churned_at = {"a": 110 * DAY, "b": 120 * DAY}
    alerts = [
        ("a", 95 * DAY),  # in the 30-day window: alerted, a churner, 15 days ahead
        ("a", 80 * DAY),  # also in it
        ("b", 50 * DAY),  # only in the 90-day lookback: counts for recall, 70 days ahead
        ("c", 90 * DAY),  # alerted, retained
        ("z", 99 * DAY),  # not alive at as-of (churned before): counted in volume only
        ("d", 101 * DAY),  # after as-of: not in the window
    ]
    quality = m.alert_quality(alerts, customer_months=12.0, population=population, churned_at=churned_at, as_of_ms=as_of, window_ms=30 * DAY, lookback_ms=90 * DAY)
    assert quality.alerts == 6 and quality.per_customer_month == pytest.approx(0.5)
    assert (quality.alerted, quality.alerted_share) == (2, pytest.approx(2 / 5))  # a and c
    assert quality.alerted_churn_rate == pytest.approx(1 / 2)
    assert quality.lift == pytest.approx((1 / 2) / (2 / 5))
    assert quality.recall_in_window == pytest.approx(1 / 2) and quality.recall == 1.0
    assert quality.median_lead_days == pytest.approx((30 + 70) / 2)  # a from day 80, b from day 50


def test_the_recency_baseline_alerts_once_per_silence() -> None:
    times = {"a": [0, 5 * DAY, 30 * DAY, 31 * DAY], "b": [0]}
    assert m.recency_alerts(times, 14 * DAY, until_ms=40 * DAY) == [("a", 19 * DAY), ("b", 14 * DAY)]
    assert m.recency_alerts(times, 14 * DAY, until_ms=45 * DAY) == [("a", 19 * DAY), ("a", 45 * DAY), ("b", 14 * DAY)]


def test_band_shares_and_the_edges_for_a_share_by_hand() -> None:
    shares = m.band_shares(["healthy", "at_risk", "at_risk", "critical"], [False, True, False, True], ("healthy", "at_risk", "critical"))
    assert [(b.band, b.customers, b.share, b.churn_rate) for b in shares] == [
        ("healthy", 1, 0.25, 0.0), ("at_risk", 2, 0.5, 0.5), ("critical", 1, 0.25, 1.0)
    ]
    scores = [float(score) for score in range(100)]  # 0 … 99
    assert m.edge_for_share(scores, 0.05) == 5.0  # five customers (0-4) below it
    assert m.edge_for_share(scores, 0.25) == 25.0
    assert m.edge_for_share([], 0.25) is None
