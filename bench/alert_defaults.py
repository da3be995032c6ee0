"""The alert defaults on several generated histories (run on demand, not in the test suite).

    .venv/bin/python bench/alert_defaults.py                  # the seven histories of docs/alerts.md
    .venv/bin/python bench/alert_defaults.py --seeds 3 7 --env HEALTHSCORE_ALERTS__SILENCE=false

Each history is what `healthscore generate --output` writes for 2,000 customers, 150,000
events over 180 days (seeds 3, 7, 11, 19, 23, 31 ending 2026-11-22, and seed 7 ending
2026-12-03); each is backtested with `healthscore backtest --as-of <end - 45 days> --horizon
30` against the generator's labels, with the settings of config/healthscore.toml and any
``--env`` overrides. Printed: per history and the median, the figures the defaults are held
to (docs/alerts.md, "Defaults across histories"): alerts per customer-month (≤ 0.5), lift of
the alerted customers (≥ 2), churners alerted within the 90 days before they churn (≥ 70 %),
median lead (≥ 14 days), and the model's ROC AUC, also without the thin-evidence rule
(scoring.healthy_min_active_days = 0) to show it does not make the ranking worse.
The JSON goes to bench/measured/alert-defaults-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEALTHSCORE = str(Path(sys.executable).parent / "healthscore")
HISTORIES = [(3, "2026-11-22"), (7, "2026-11-22"), (11, "2026-11-22"), (19, "2026-11-22"), (23, "2026-11-22"), (31, "2026-11-22"), (7, "2026-12-03")]
AS_OF = "2026-10-08"  # the as-of for every history
TARGETS = {"per_customer_month": ("<=", 0.5), "lift": (">=", 2.0), "recall": (">=", 0.7), "median_lead_days": (">=", 14.0)}


def run(arguments: list[str], env: dict[str, str]) -> str:
    done = subprocess.run([HEALTHSCORE, *arguments], capture_output=True, text=True, env={**os.environ, **env}, check=False)
    if done.returncode != 0:
        raise SystemExit(f"healthscore {arguments[0]} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def backtest(history: Path, as_of: str, env: dict[str, str], workdir: Path) -> dict:
    labels = history.with_name(history.name + ".labels.csv")
    arguments = ["backtest", "--input", str(history), "--labels", str(labels), "--as-of", as_of, "--horizon", "30",
                 "--report", str(workdir / "report.html")]
    return json.loads(run(arguments, env))


def measure(seed: int, end: str, env: dict[str, str], workdir: Path, customers: int, events: int) -> dict:
    history = workdir / f"seed-{seed}-{end}.jsonl"
    if not history.exists():
        run(["generate", "--output", str(history), "--customers", str(customers), "--events", str(events),
             "--history-days", "180", "--end", end, "--seed", str(seed)], {})
    as_of = AS_OF
    summary = backtest(history, as_of, env, workdir)
    without_rule = backtest(history, as_of, {**env, "HEALTHSCORE_SCORING__HEALTHY_MIN_ACTIVE_DAYS": "0"}, workdir)
    overall = summary["alert_quality"]["overall"]
    return {
        "seed": seed, "end": end, "as_of": as_of, "customers": summary["customers"], "churned": summary["churned"],
        "per_customer_month": overall["per_customer_month"], "lift": overall["lift"], "recall": overall["recall"],
        "recall_in_window": overall["recall_in_window"], "median_lead_days": overall["median_lead_days"],
        "roc_auc": summary["model"]["roc_auc"], "roc_auc_without_thin_evidence_rule": without_rule["model"]["roc_auc"],
        "by_rule": {rule: {"alerts": quality["alerts"], "lift": quality["lift"]} for rule, quality in summary["alert_quality"]["by_rule"].items()},
    }


def holds(row: dict) -> bool:
    return all(row[name] is not None and (row[name] <= bound if sign == "<=" else row[name] >= bound) for name, (sign, bound) in TARGETS.items())


def table(rows: list[dict]) -> str:
    lines = ["| history | alerts / customer-month | lift | alerted ≤ 90 d before churn | median lead (d) | AUC | AUC without the rule | holds |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| seed {row['seed']}, ends {row['end']} | {row['per_customer_month']:.3f} | {row['lift']:.2f} | {row['recall']:.1%} | "
                     f"{row['median_lead_days']:.1f} | {row['roc_auc']:.4f} | {row['roc_auc_without_thin_evidence_rule']:.4f} | {'yes' if holds(row) else 'NO'} |")
    median = {name: statistics.median(row[name] for row in rows) for name in
              ("per_customer_month", "lift", "recall", "median_lead_days", "roc_auc", "roc_auc_without_thin_evidence_rule")}
    lines.append(f"| median | {median['per_customer_month']:.3f} | {median['lift']:.2f} | {median['recall']:.1%} | {median['median_lead_days']:.1f} | "
                 f"{median['roc_auc']:.4f} | {median['roc_auc_without_thin_evidence_rule']:.4f} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", help="only the histories of these seeds")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="a setting to try, as an environment variable")
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--events", type=int, default=150_000)
    parser.add_argument("--workdir", type=Path, help="keep the generated histories here (default: a temporary directory)")
    arguments = parser.parse_args()
    env = dict(item.split("=", 1) for item in arguments.env)
    histories = [(seed, end) for seed, end in HISTORIES if not arguments.seeds or seed in arguments.seeds]
    with tempfile.TemporaryDirectory() as scratch:
        workdir = arguments.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        rows = []
        for index, (seed, end) in enumerate(histories, 1):
            print(f"[{index}/{len(histories)}] seed {seed}, ending {end}", file=sys.stderr, flush=True)
            rows.append(measure(seed, end, env, workdir, arguments.customers, arguments.events))
    print(table(rows))
    out = ROOT / "bench" / "measured" / f"alert-defaults-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({"env": env, "histories": rows, "all_hold": all(holds(row) for row in rows)}, indent=1) + "\n")
    print(f"\nwritten to {out.relative_to(ROOT)}; every history holds the targets: {all(holds(row) for row in rows)}")


if __name__ == "__main__":
    main()
