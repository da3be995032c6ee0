"""BG/NBD: the paper's worked example, its identities, and maximum-likelihood recovery."""

from __future__ import annotations

import csv
import json
import math
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.bgnbd import (
    BgNbdParameters,
    PurchaseHistory,
    expected_purchases,
    expected_purchases_new_customer,
    fit,
    log_likelihood,
    probability_alive,
    summarize,
)
from stream.cli import main

# Fader, Hardie & Lee (2005), CDNOW sample, time in weeks.
CDNOW = BgNbdParameters(r=0.243, alpha=4.414, a=0.793, b=2.426)


def test_the_papers_worked_example() -> None:
    # A customer with 2 repeat purchases, the last at 30.43 weeks, observed for 38.86 weeks,
    # is expected to make 1.226 purchases in the next 39 weeks.
    assert expected_purchases(CDNOW, PurchaseHistory(2, 30.43, 38.86), 39) == pytest.approx(1.226, abs=0.0005)


def test_without_a_repeat_purchase_the_customer_is_alive_for_sure() -> None:
    for age in (0.0, 10.0, 500.0):
        assert probability_alive(CDNOW, PurchaseHistory(0, 0.0, age)) == 1.0


def test_yet_expected_purchases_fall_the_longer_a_one_time_buyer_stays_silent() -> None:
    expectations = [expected_purchases(CDNOW, PurchaseHistory(0, 0.0, age), 4) for age in (1, 10, 50, 100)]
    assert expectations == sorted(expectations, reverse=True)
    assert expectations[-1] < expectations[0] / 2


def test_a_brand_new_customer_gets_the_unconditional_expectation() -> None:
    for period in (1, 13, 39, 78):
        assert expected_purchases(CDNOW, PurchaseHistory(0, 0.0, 0.0), period) == pytest.approx(
            expected_purchases_new_customer(CDNOW, period), rel=1e-9
        )


@settings(max_examples=100, deadline=None)
@given(
    x=st.integers(min_value=1, max_value=30),
    recency_share=st.floats(min_value=0.0, max_value=1.0),
    age=st.floats(min_value=1.0, max_value=100.0),
)
def test_a_more_recent_last_purchase_means_more_likely_alive_and_more_expected(x: int, recency_share: float, age: float) -> None:
    earlier = PurchaseHistory(x, age * recency_share * 0.5, age)
    later = PurchaseHistory(x, age * (0.5 + recency_share * 0.5), age)
    assert probability_alive(CDNOW, later) >= probability_alive(CDNOW, earlier)
    assert expected_purchases(CDNOW, later, 10) >= expected_purchases(CDNOW, earlier, 10) - 1e-12


@pytest.mark.parametrize(
    "bad",
    [dict(r=0, alpha=1, a=1, b=1), dict(r=1, alpha=-1, a=1, b=1), dict(r=1, alpha=1, a=math.nan, b=1), dict(r=1, alpha=1, a=1, b=math.inf)],
)
def test_parameters_must_be_positive_and_finite(bad: dict) -> None:
    with pytest.raises(ValueError, match="must be a positive number"):
        BgNbdParameters(**bad)


@pytest.mark.parametrize("bad", [(-1, 0, 1), (1, 5, 4), (0, 2, 3)])
def test_histories_are_checked(bad: tuple) -> None:
    with pytest.raises(ValueError):
        PurchaseHistory(*bad)


def simulate(parameters: BgNbdParameters, customers: int, observed: float, seed: int) -> list[list[float]]:
    """Purchase times (first at 0) drawn from the BG/NBD generative story."""
    rng = random.Random(seed)
    histories = []
    for _ in range(customers):
        rate = rng.gammavariate(parameters.r, 1 / parameters.alpha)
        dropout = rng.betavariate(parameters.a, parameters.b)
        times = [0.0]
        while rate > 0:
            time = times[-1] + rng.expovariate(rate)
            if time > observed:
                break
            times.append(time)
            if rng.random() < dropout:
                break
        histories.append(times)
    return histories


TRUE = BgNbdParameters(r=0.8, alpha=6.0, a=0.9, b=3.0)


def test_maximum_likelihood_recovers_the_parameters_of_simulated_customers() -> None:
    histories = [
        PurchaseHistory(len(times) - 1, times[-1], 52.0) for times in simulate(TRUE, customers=4000, observed=52.0, seed=3)
    ]
    result = fit(histories)
    assert result.customers == 4000
    # The fit is at least as likely as the truth, and its reported value matches the scalar formula.
    assert result.log_likelihood >= sum(log_likelihood(TRUE, h) for h in histories) - 1e-6
    assert result.log_likelihood == pytest.approx(sum(log_likelihood(result.parameters, h) for h in histories), rel=1e-9)
    assert result.parameters.r == pytest.approx(TRUE.r, rel=0.25)
    assert result.parameters.alpha == pytest.approx(TRUE.alpha, rel=0.3)
    # The population's expected purchases next quarter agree closely even where a and b trade off.
    assert expected_purchases_new_customer(result.parameters, 13) == pytest.approx(expected_purchases_new_customer(TRUE, 13), rel=0.1)


def test_summarize_counts_distinct_purchase_days_before_the_calibration_end() -> None:
    day = 86_400_000
    start = 1_700_000_000_000 // day * day
    purchases = [("a", start), ("a", start + 3600_000), ("a", start + 7 * day), ("a", start + 40 * day), ("b", start + 14 * day)]
    histories = summarize(purchases, calibration_end_ms=start + 28 * day, time_unit_days=7.0)
    assert histories["a"] == PurchaseHistory(1, 1.0, 4.0)
    assert histories["b"] == PurchaseHistory(0, 0.0, 2.0)


def test_a_purchase_on_the_calibration_end_day_counts_and_t_runs_to_that_day() -> None:
    day = 86_400_000
    start = 1_700_000_000_000 // day * day
    end = start + 28 * day
    histories = summarize([("a", start), ("a", end + 23 * 3_600_000), ("a", end + day)], calibration_end_ms=end, time_unit_days=7.0)
    assert histories["a"] == PurchaseHistory(1, 4.0, 4.0)  # the purchase dated on the end day, not the day after


def test_fit_bgnbd_on_the_cdnow_sample_gives_the_published_estimates() -> None:
    """Fader, Hardie & Lee (2005), "Counting your customers the easy way", on the CDNOW sample
    (2,357 customers, weekly, calibration to 1997-09-30): r 0.243, alpha 4.414, a 0.793, b 2.426.
    bench/data/cdnow_sample.csv is that sample (from the `lifetimes` package's datasets)."""
    from click.testing import CliRunner

    from stream.cli import main

    sample = Path(__file__).resolve().parents[2] / "bench" / "data" / "cdnow_sample.csv"
    result = CliRunner().invoke(main, ["fit-bgnbd", "--transactions", str(sample), "--calibration-end", "1997-09-30", "--time-unit", "week"])
    assert result.exit_code == 0, result.output
    fitted = json.loads(result.output)
    assert fitted["customers"] == 2357
    for name, published in {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}.items():
        assert fitted[name] == pytest.approx(published, rel=0.01), name


def test_fit_bgnbd_command_reads_a_csv_and_prints_the_parameters(tmp_path) -> None:
    start = datetime(2025, 1, 6, tzinfo=timezone.utc)
    path = tmp_path / "transactions.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["customer_id", "occurred_at", "amount"])
        for index, times in enumerate(simulate(TRUE, customers=1500, observed=60.0, seed=5)):
            for weeks in times:
                writer.writerow([f"c{index}", (start + timedelta(weeks=weeks)).isoformat(), "19.90"])
        writer.writerow(["c-bad", "not a date", "1"])
    result = CliRunner().invoke(main, ["fit-bgnbd", "--transactions", str(path), "--calibration-end", "2026-01-05", "--time-unit", "week"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert "Skipped 1 of" in lines[0] and "not a date" in lines[0]
    printed = json.loads(lines[-1])
    assert set(printed) >= {"r", "alpha", "a", "b", "log_likelihood", "customers"}
    assert printed["customers"] == 1500
    assert printed["r"] == pytest.approx(TRUE.r, rel=0.35)
    assert printed["alpha"] == pytest.approx(TRUE.alpha, rel=0.45)


def test_fit_bgnbd_refuses_a_file_without_the_columns(tmp_path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("customer,date\nx,2025-01-01\n")
    result = CliRunner().invoke(main, ["fit-bgnbd", "--transactions", str(path), "--calibration-end", "2026-01-05"])
    assert result.exit_code != 0
    assert "missing customer_id, occurred_at, amount" in result.output


@settings(max_examples=200, deadline=None)
@given(
    x=st.integers(min_value=0, max_value=60),
    z=st.floats(min_value=-50.0, max_value=0.999),
)
def test_hyp2f1_is_scipys(x: int, z: float) -> None:
    """The model calls scipy's Cython-level hyp2f1 (cheaper per call): the ufunc's values."""
    from scipy.special import hyp2f1 as ufunc

    from scoring.bgnbd import hyp2f1

    a, b, c = CDNOW.r + x, CDNOW.b + x, CDNOW.a + CDNOW.b + x - 1
    assert hyp2f1(a, b, c, z) == pytest.approx(float(ufunc(a, b, c, z)), rel=1e-12, nan_ok=True)
