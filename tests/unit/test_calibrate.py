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
from scoring.contract import Event, PurchaseCompleted
from stream.commands.calibrate import BGNBD_MIN_BUYERS, _fit, bgnbd_table, config_with_model, fit_purchases, model_table
from stream.commands.generate import write_history
from stream.settings import BgNbdSettings, load_settings


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


def test_a_fitted_bgnbd_table_replaces_the_configs_and_keeps_the_rest() -> None:
    parameters = BgNbdSettings(r=0.25, alpha=4.5, a=0.8, b=2.5, time_unit="week")
    summary = {"buyers_without_subscription": 60, "repeat_buyers": 20}
    base = 'app_id = "x"\n# [scoring.bgnbd]\n\n[scoring]\nhealthy_min = 50.0\n\n[scoring.bgnbd]\nr = 9.0\nalpha = 9.0\na = 9.0\nb = 9.0\n\n[alerts]\nsilence = true\n'
    table = model_table(0.5, dict.fromkeys(FEATURES, -1.0), 30.0, 1_790_000_000_000, 10, 2)
    written = config_with_model(base, table, bgnbd_table(parameters, summary))
    assert written.count("\n[scoring.bgnbd]") == 1 and "r = 9.0" not in written and "r = 0.25" in written
    assert "[alerts]\nsilence = true" in written and "# [scoring.bgnbd]" in written
    assert config_with_model(base, table).count("r = 9.0") == 1  # without a fit, the user's own stays


class _State:
    def __init__(self, mrr: float) -> None:
        self.mrr = mrr


def purchase(customer: str, day: int) -> Event:
    return Event(f"{customer}-{day}", "purchase.completed", customer, day * 86_400_000, PurchaseCompleted(f"{customer}-{day}", 10.0, "EUR"))


def test_bgnbd_is_fitted_on_buyers_without_a_subscription_only_and_never_on_too_few() -> None:
    rng = random.Random(5)
    buyers = [f"c{i}" for i in range(BGNBD_MIN_BUYERS)]
    events = [purchase(c, day) for c in buyers for day in sorted(rng.sample(range(20_000, 20_140), rng.randint(1, 6)))]
    events += [purchase(c, 20_160) for c in buyers]  # after --as-of: not counted
    subscribed = [purchase("s1", day) for day in range(20_000, 20_200, 2)]
    as_of = 20_150 * 86_400_000
    states = {**{c: _State(0.0) for c in buyers}, "s1": _State(99.0)}
    fitted, summary = fit_purchases(states, events + subscribed, as_of)
    assert fitted is not None and summary["fitted"] and summary["buyers_without_subscription"] == BGNBD_MIN_BUYERS
    assert summary["repeat_buyers"] == sum(1 for c in buyers if sum(1 for e in events if e.customer_id == c and e.occurred_at_ms <= as_of) > 1)
    assert fitted.time_unit == "week" and min(fitted.r, fitted.alpha, fitted.a, fitted.b) > 0
    states["c0"] = _State(10.0)  # one fewer without a subscription: below the floor, nothing fitted
    none, why = fit_purchases(states, events + subscribed, as_of)
    assert none is None and not why["fitted"] and "at least" in why["why"]


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


def test_calibrated_at_one_date_it_beats_the_prior_at_a_later_one(history: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "calibrated.toml"
    result = CliRunner().invoke(main, ["calibrate", "--input", str(history), "--labels", f"{history}.labels.csv", "--as-of", "2026-09-08",
                                       "--horizon", "30", "--output", str(config)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["after_cross_validated"]["roc_auc"] >= summary["before"]["roc_auc"]
    assert summary["suggested_weights"]["weights"] is not None
    assert summary["bgnbd"]["fitted"] and summary["bgnbd"]["buyers_without_subscription"] > 0
    monkeypatch.setenv("HEALTHSCORE_CONFIG", str(config))
    loaded = load_settings()  # the written file is a config the worker loads, BG/NBD included
    assert loaded.scoring.bgnbd is not None and loaded.scoring.bgnbd.r == summary["bgnbd"]["r"] and loaded.scoring.churn_risk is not None
    monkeypatch.delenv("HEALTHSCORE_CONFIG")
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
