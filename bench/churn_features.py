"""Does tenure add to the churn-risk features of `healthscore calibrate`? Prints the
cross-validated ROC AUC, Brier score and tenure coefficient with and without log(1 + days
since the first event) as a tenth feature, fitted as calibrate fits (BG/NBD included).

    python bench/churn_features.py HISTORY LABELS.csv|- AS_OF HORIZON_DAYS

Figures and the decision they led to: docs/model.md, "Calibrated churn risk"."""
import math, sys
from pathlib import Path
from scoring import backtest as metrics
from scoring.churn import churn_features
from scoring.health import days_with_events
from stream.commands.calibrate import _fit, _labelled, fit_purchases, with_bgnbd
from stream.commands.backtest import _replay_until
from stream.commands.history import read_history
from stream.settings import load_settings
from stream.cli import _parse_time

path, labels, as_of, horizon = sys.argv[1], (Path(sys.argv[2]) if sys.argv[2] != "-" else None), sys.argv[3], float(sys.argv[4])
as_of_ms = _parse_time(as_of, "--as-of")
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
