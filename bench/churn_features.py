"""Do candidate signals add to the churn-risk features of `healthscore calibrate`? Prints the
cross-validated ROC AUC, Brier score and the candidate's coefficient with and without it as
a tenth feature, fitted as calibrate fits (BG/NBD included). Candidates: tenure, log(1 +
days since the first event); no_tickets, 1 for a customer active in the last 30 days who
opened no ticket in the last 90 and has none open (issue 36: "too few tickets can be a
sign"), else 0.

    python bench/churn_features.py HISTORY LABELS.csv|- AS_OF HORIZON_DAYS

Figures and the decisions they led to: docs/model.md ("Calibrated churn risk", "Key-feature adoption")."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from scoring import backtest as metrics
from scoring.churn import churn_features
from scoring.health import days_with_events
from scoring.state import window_total
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
    parser.add_argument("--candidate", choices=["tenure", "no_tickets"], default="tenure")
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
    def candidate(state) -> float:
        if args.candidate == "tenure":
            return math.log1p((as_of_ms - state.first_event_ms) / 86_400_000)
        active = as_of_ms - state.last_event_ms <= 30 * 86_400_000
        return float(active and not state.open_tickets and window_total(state, "tickets_opened", as_of_ms, 90) == 0)

    extended = [row + [candidate(st[c])] for row, c in zip(base, population)]
    flagged = [c for c in population if candidate(st[c]) == 1.0] if args.candidate == "no_tickets" else []
    if flagged:
        rate = sum(churned[i] for i, c in enumerate(population) if c in set(flagged)) / len(flagged)
        print(f"{len(flagged)} customers flagged, churn rate {rate:.3f} against {sum(churned) / len(churned):.3f} overall")
    for name, x in ((f"without {args.candidate}", base), (f"with {args.candidate}", extended)):
        _, coef, _, oos = _fit(x, churned)
        print(name, round(metrics.roc_auc(oos, churned), 4), round(metrics.brier_score(oos, churned), 4), round(coef[-1], 3))


if __name__ == "__main__":
    main()
