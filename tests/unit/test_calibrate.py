"""`healthscore calibrate`: the fit recovers what drives churn in a simulated population, is
deterministic, writes a config the worker loads, and beats the prior out of time on the
generator's labelled history (calibrated at one date, backtested at a later one)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from scoring.churn import FEATURES, ChurnModel, churn_probability
from stream.cli import main
from stream.commands.calibrate import _fit, config_with_model, model_table
from stream.commands.generate import write_history


def simulated(customers: int, seed: int) -> tuple[list[list[float]], list[bool]]:
    """Churn that depends on the score (down), the days silent (up) and nothing else."""
    rng = random.Random(seed)
    truth = ChurnModel(-1.0, (-4.0, 0, 0, 0, 0, 0, 0, 1.2, 0), 30.0)
    features, churned = [], []
    for _ in range(customers):
        row = [rng.random(), *(rng.random() for _ in range(5)), rng.random(), rng.uniform(0, 4), rng.uniform(0, 4)]
        features.append(row)
        churned.append(rng.random() < churn_probability(truth, row))
    return features, churned


def test_the_fit_recovers_the_direction_and_size_of_what_drives_churn_and_is_deterministic() -> None:
    features, churned = simulated(4000, seed=3)
    intercept, coefficients, _, out_of_sample = _fit(features, churned)
    fitted = dict(zip(FEATURES, coefficients))
    assert -6.0 < fitted["score"] < -2.5 and 0.8 < fitted["log_days_silent"] < 1.6
    assert all(abs(fitted[name]) < 0.6 for name in ("usage", "purchases", "support", "sentiment", "payments", "confidence", "log_active_days"))
    assert -2.0 < intercept < 0.0 and len(out_of_sample) == len(churned)
    assert _fit(features, churned)[:2] == (intercept, coefficients)  # same input, same coefficients


def test_the_model_table_replaces_an_earlier_one_in_the_config() -> None:
    table = model_table(0.5, dict.fromkeys(FEATURES, -1.0), 30.0, 1_790_000_000_000, 10, 2)
    once = config_with_model("app_id = \"x\"\n\n[scoring]\nhealthy_min = 50.0\n", table)
    twice = config_with_model(once + "\n[alerts]\nsilence = true\n", table.replace("intercept = 0.5", "intercept = 0.25"))
    assert twice.count("[scoring.churn_risk]") == 1 and twice.count("[scoring.churn_risk.coefficients]") == 1
    assert "intercept = 0.25" in twice and "[alerts]\nsilence = true" in twice and "healthy_min = 50.0" in twice


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("calibrate") / "history.jsonl"
    end = 1_795_305_600_000  # 2026-11-22
    write_history(str(path), str(path) + ".labels.csv", customers=800, events=60_000, start_ms=end - 180 * 86_400_000, end_ms=end, seed=3)
    return path


def backtest(history: Path, env: dict[str, str], tmp_path: Path) -> dict:
    result = CliRunner().invoke(main, ["backtest", "--input", str(history), "--labels", f"{history}.labels.csv", "--as-of", "2026-10-08",
                                       "--horizon", "30", "--report", str(tmp_path / "report.html")], env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_calibrated_at_one_date_it_beats_the_prior_at_a_later_one(history: Path, tmp_path: Path) -> None:
    config = tmp_path / "calibrated.toml"
    result = CliRunner().invoke(main, ["calibrate", "--input", str(history), "--labels", f"{history}.labels.csv", "--as-of", "2026-09-08",
                                       "--horizon", "30", "--output", str(config)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["after_cross_validated"]["roc_auc"] >= summary["before"]["roc_auc"]
    assert summary["suggested_weights"]["weights"] is not None
    before = backtest(history, {}, tmp_path)
    after = backtest(history, {"HEALTHSCORE_CONFIG": str(config)}, tmp_path)
    assert after["model_version"] != before["model_version"]
    assert after["model"]["roc_auc"] >= before["model"]["roc_auc"]
    assert after["model"]["brier"] < before["model"]["brier"]
    again = CliRunner().invoke(main, ["calibrate", "--input", str(history), "--labels", f"{history}.labels.csv", "--as-of", "2026-09-08",
                                      "--horizon", "30", "--output", str(config)])
    assert again.exit_code != 0 and "exists" in again.output  # never over a file


def test_too_few_churners_is_refused_with_the_reason(history: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["calibrate", "--input", str(history), "--labels", f"{history}.labels.csv", "--as-of", "2026-06-01",
                                       "--horizon", "1", "--output", str(tmp_path / "x.toml")])
    assert result.exit_code != 0 and "at least 10 of each" in result.output
