"""`healthscore calibrate`: fits the churn risk on the user's own history and writes a config
that uses it. The history is replayed to --as-of through the worker's model (the backtest's
replay); each customer's features at that time (scoring.churn.churn_features) are fitted
against who churned within --horizon days (a labels file, or no purchase within it) by an
L2-regularised logistic regression whose strength is chosen by cross-validation
(scikit-learn, for the fit only: the worker and the kernel evaluate the coefficients).

When customers without a subscription bought, BG/NBD is fitted first on their purchases up to
--as-of (``scoring.bgnbd.fit``, by the book) and the replay runs with it, so the purchase
component the features read is the one the worker will compute with the written config."""

from __future__ import annotations

import math
import os
import re
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from scoring import backtest as metrics
from scoring.bgnbd import fit as fit_bgnbd
from scoring.bgnbd import summarize
from scoring.churn import COMPONENTS, FEATURES, churn_features
from scoring.health import days_with_events
from scoring.output import rfc3339
from stream.commands.backtest import BacktestError, _churn_labels, _replay_until
from stream.commands.history import read_history
from stream.settings import DEFAULT_CONFIG_FILE, BgNbdSettings, Settings

#: Fewest churned and retained customers a fit is tried on.
MIN_PER_CLASS = 10
FOLDS = 5
#: Fewest buyers without a subscription, and of them repeat buyers, BG/NBD is fitted on.
BGNBD_MIN_BUYERS = 50
BGNBD_MIN_REPEAT_BUYERS = 10


def _fit(features: list[list[float]], churned: list[bool]) -> tuple[float, list[float], float, list[float]]:
    """(intercept, coefficients, regularisation C, cross-validated probabilities): the model is
    refitted on every fold with the chosen C, so the figures are out of sample."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x, y = np.asarray(features, dtype=float), np.asarray(churned, dtype=int)
    folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=7)
    with warnings.catch_warnings():  # scikit-learn's notices about its future defaults, not about this fit
        warnings.simplefilter("ignore", FutureWarning)
        chosen = LogisticRegressionCV(Cs=10, cv=folds, scoring="neg_log_loss", max_iter=5000).fit(x, y)
    strength = float(chosen.C_[0])
    out_of_sample = cross_val_predict(LogisticRegression(C=strength, max_iter=5000), x, y, cv=folds, method="predict_proba")[:, 1]
    return float(chosen.intercept_[0]), [float(c) for c in chosen.coef_[0]], strength, [float(p) for p in out_of_sample]


def _suggested_weights(coefficients: dict[str, float], finals: list, churned: list[bool]) -> dict:
    """Component weights in proportion to how much each component's fitted coefficient lowers
    the risk (a positive one, which would reward a worse component, counts 0), with the ROC AUC
    of the score they would give against the current score's: a suggestion, never applied."""
    pull = {name: max(0.0, -coefficients[name]) for name in COMPONENTS}
    total = sum(pull.values())
    if total <= 0:
        return {"weights": None, "why": "no component lowers the fitted risk"}
    weights = {name: round(value / total, 3) for name, value in pull.items()}

    def score_with(health) -> float:
        present = [(weights[name], c.score) for name, c in health.components.items() if weights.get(name)]
        share = sum(weight for weight, _ in present)
        return sum(weight * value for weight, value in present) / share if share else 50.0

    return {
        "weights": weights,
        "roc_auc": metrics.roc_auc([-score_with(health) for health in finals], churned),
        "roc_auc_of_the_current_score": metrics.roc_auc([-health.score for health in finals], churned),
    }


def fit_purchases(states: dict, events: list, as_of_ms: int) -> tuple[BgNbdSettings | None, dict]:
    """BG/NBD (weekly) fitted on the purchases up to ``as_of_ms`` of the customers who have no
    subscription in ``states`` (the replay to then; the model applies BG/NBD to them only),
    with a summary; (None, why) when too few bought to fit it."""
    without_subscription = {customer for customer, state in states.items() if state.mrr <= 0}
    purchases = [
        (event.customer_id, event.occurred_at_ms) for event in events
        if event.type == "purchase.completed" and event.occurred_at_ms <= as_of_ms and event.customer_id in without_subscription
    ]
    histories = list(summarize(purchases, as_of_ms, 7.0).values())
    repeat_buyers = sum(1 for history in histories if history.x > 0)
    if len(histories) < BGNBD_MIN_BUYERS or repeat_buyers < BGNBD_MIN_REPEAT_BUYERS:
        return None, {"fitted": False, "buyers_without_subscription": len(histories), "repeat_buyers": repeat_buyers,
                      "why": f"at least {BGNBD_MIN_BUYERS} buyers without a subscription and {BGNBD_MIN_REPEAT_BUYERS} repeat buyers are needed"}
    result = fit_bgnbd(histories)
    fitted = result.parameters
    parameters = BgNbdSettings(r=fitted.r, alpha=fitted.alpha, a=fitted.a, b=fitted.b, time_unit="week")
    return parameters, {"fitted": True, "buyers_without_subscription": len(histories), "repeat_buyers": repeat_buyers,
                        "r": fitted.r, "alpha": fitted.alpha, "a": fitted.a, "b": fitted.b, "time_unit": "week",
                        "log_likelihood": result.log_likelihood}


def with_bgnbd(settings: Settings, parameters: BgNbdSettings) -> Settings:
    return settings.model_copy(update={"scoring": settings.scoring.model_copy(update={"bgnbd": parameters})})


def _without_table(text: str, table: str) -> str:
    """The config text without the ``[table]`` and ``[table.*]`` sections (and their comments
    above the next section are kept: only the section bodies go)."""
    name = re.escape(table)
    return re.sub(rf"(?ms)^\[{name}(\.[A-Za-z_]+)?\][^\[]*?(?=^\[|\Z)", "", text)


def config_with_model(base: str, table: str, bgnbd_table: str = "") -> str:
    """The config text with its [scoring.churn_risk] tables (if any) replaced by ``table``, and
    its [scoring.bgnbd] table too when ``bgnbd_table`` is given."""
    kept = _without_table(base, "scoring.churn_risk")
    if bgnbd_table:
        kept = _without_table(kept, "scoring.bgnbd")
    return kept.rstrip("\n") + "\n\n" + (bgnbd_table + "\n" if bgnbd_table else "") + table


def bgnbd_table(parameters: BgNbdSettings, summary: dict) -> str:
    lines = [
        "# Fitted by `healthscore calibrate` on the purchases of customers without a subscription",
        f"# ({summary['buyers_without_subscription']} buyers, {summary['repeat_buyers']} repeat buyers; as `healthscore fit-bgnbd` does).",
        "[scoring.bgnbd]",
        f"r = {parameters.r!r}",
        f"alpha = {parameters.alpha!r}",
        f"a = {parameters.a!r}",
        f"b = {parameters.b!r}",
        f'time_unit = "{parameters.time_unit}"',
    ]
    return "\n".join(lines) + "\n"


def model_table(intercept: float, coefficients: dict[str, float], horizon_days: float, as_of_ms: int, customers: int, churned: int) -> str:
    fitted_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = [
        "# Fitted by `healthscore calibrate` (docs/model.md, \"Calibrated churn risk\"): churn_risk is the",
        f"# probability of churning within {horizon_days:g} days. Recalibrate on newer history every quarter.",
        "[scoring.churn_risk]",
        f"horizon_days = {float(horizon_days)!r}",
        f"intercept = {intercept!r}",
        f'fitted_at = "{fitted_at}"',
        f'as_of = "{rfc3339(as_of_ms)}"',
        f"customers = {customers}",
        f"churned = {churned}",
        "",
        "[scoring.churn_risk.coefficients]",
        *(f"{name} = {coefficients[name]!r}" for name in FEATURES),
    ]
    return "\n".join(lines) + "\n"


def _labelled(replayer, events: list, labels_path: Path | None, as_of_ms: int, horizon_days: float) -> tuple[list[str], list[bool], str]:
    """The customers scored at ``as_of_ms`` and whether each churned within the horizon."""
    population, churned_at, source = _churn_labels(replayer, events, labels_path, as_of_ms, int(horizon_days * 86_400_000))
    scored = {final.customer_id for final in replayer.final_scores(as_of_ms)}
    population = [c for c in population if c in scored]
    churned = [c in churned_at for c in population]
    if min(sum(churned), len(churned) - sum(churned)) < MIN_PER_CLASS:
        raise BacktestError(f"{sum(churned)} churned and {len(churned) - sum(churned)} retained customers at {rfc3339(as_of_ms)}: "
                            f"at least {MIN_PER_CLASS} of each are needed to fit (a longer history, another --as-of or --horizon)")
    return population, churned, source


def run_calibration(
    settings: Settings, input_path: Path, labels_path: Path | None, as_of_ms: int, horizon_days: float, echo: Callable[[str], None]
) -> tuple[dict, str]:
    """(the JSON summary, the config text with the fitted model). "before" is the churn risk of
    the config in use; when BG/NBD is fitted, the features come from a second replay with it."""
    history = read_history(input_path)
    if history.rejected:
        echo(f"{len(history.rejected)} of {history.read} lines rejected and left out (`healthscore replay --rejects FILE` shows them)")
    current, _ = _replay_until(settings, history.events, as_of_ms)
    population, churned, source = _labelled(current, history.events, labels_path, as_of_ms, horizon_days)
    prior_finals = {final.customer_id: final.health for final in current.final_scores(as_of_ms)}
    prior = [prior_finals[c].churn_risk for c in population]
    bgnbd, bgnbd_summary = fit_purchases(current.states, history.events, as_of_ms)
    replayer = current
    if bgnbd is not None:
        echo(f"BG/NBD fitted on {bgnbd_summary['buyers_without_subscription']} buyers without a subscription; replaying with it")
        replayer, _ = _replay_until(with_bgnbd(settings, bgnbd), history.events, as_of_ms)
    finals = {final.customer_id: final.health for final in replayer.final_scores(as_of_ms)}
    states = replayer.states
    features = [churn_features(finals[c].score, finals[c].components, finals[c].confidence, as_of_ms - states[c].last_event_ms,
                               days_with_events(states[c], as_of_ms)) for c in population]
    intercept, fitted, strength, out_of_sample = _fit(features, churned)
    if not all(math.isfinite(value) for value in (intercept, *fitted)):
        raise BacktestError("the fit did not converge to finite coefficients")
    coefficients = dict(zip(FEATURES, fitted))
    base_rate = sum(churned) / len(churned)
    summary = {
        "as_of": rfc3339(as_of_ms), "horizon_days": horizon_days, "labels": source,
        "customers": len(population), "churned": sum(churned), "base_rate": round(base_rate, 4),
        "before": {"roc_auc": metrics.roc_auc(prior, churned), "brier": metrics.brier_score(prior, churned)},
        "after_cross_validated": {"roc_auc": metrics.roc_auc(out_of_sample, churned), "brier": metrics.brier_score(out_of_sample, churned),
                                  "folds": FOLDS},
        "brier_base_rate": metrics.brier_score([base_rate] * len(churned), churned),
        "regularisation_c": strength,
        "intercept": intercept,
        "coefficients": coefficients,
        "suggested_weights": _suggested_weights(coefficients, [finals[c] for c in population], churned),
        "bgnbd": bgnbd_summary,
    }
    base = Path(os.environ.get("HEALTHSCORE_CONFIG", DEFAULT_CONFIG_FILE)).read_text()
    table = model_table(intercept, coefficients, horizon_days, as_of_ms, len(population), sum(churned))
    return summary, config_with_model(base, table, bgnbd_table(bgnbd, bgnbd_summary) if bgnbd is not None else "")
