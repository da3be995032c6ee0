"""Does tenure add to the churn-risk features of `healthscore calibrate`? Prints the
cross-validated ROC AUC, Brier score and tenure coefficient with and without log(1 + days
since the first event) as a tenth feature, fitted as calibrate fits (BG/NBD included).

    python bench/churn_features.py HISTORY LABELS.csv|- AS_OF HORIZON_DAYS

Figures and the decision they led to: docs/model.md, "Calibrated churn risk"."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from scoring import backtest as metrics
from scoring.churn import churn_features
from scoring.health import days_with_events
from stream.commands.calibrate import _fit, _labelled, fit_purchases, with_bgnbd
from stream.commands.backtest import _replay_until
from stream.commands.history import read_history
from stream.settings import load_settings
from stream.cli import _parse_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("history", help="JSON Lines history or purchase CSV")
    parser.add_argument("labels", help="CSV customer_id,churned_at, or - for 'no purchase within the horizon'")
    parser.add_argument("as_of", help="as --as-of of healthscore calibrate")
    parser.add_argument("horizon", type=float, help="days")
    args = parser.parse_args()
    path, labels, horizon = args.history, (Path(args.labels) if args.labels != "-" else None), args.horizon
    as_of_ms = _parse_time(args.as_of, "--as-of")
    settings = load_settings()
    history = read_history(Path(path))
    current, _ = _replay_until(settings, history.events, as_of_ms)
    population, churned, _ = _labelled(current, history.events, labels, as_of_ms, horizon)
    bgnbd, _ = fit_purchases(current.states, history.events, as_of_ms)
    replayer = current if bgnbd is None else _replay_until(with_bgnbd(settings, bgnbd), history.events, as_of_ms)[0]
    finals = {f.customer_id: f.health for f in replayer.final_scores(as_of_ms)}
    st = replayer.states
    base = [churn_features(finals[c].score, finals[c].components, finals[c].confidence, as_of_ms - st[c].last_event_ms, days_with_events(st[c], as_of_ms)) for c in population]
    tenure = [row + [math.log1p((as_of_ms - st[c].first_event_ms) / 86_400_000)] for row, c in zip(base, population)]
    for name, x in (("without tenure", base), ("with tenure", tenure)):
        _, coef, _, oos = _fit(x, churned)
        print(name, round(metrics.roc_auc(oos, churned), 4), round(metrics.brier_score(oos, churned), 4), round(coef[-1], 3))


if __name__ == "__main__":
    main()
