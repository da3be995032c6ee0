"""The backtest before and after the customer-success inputs of issue 36 (run on demand).

    .venv/bin/python bench/csm_components.py --seeds 7 3

For each seed, `healthscore generate --with-csm` writes 2,000 customers' history (150,000
events over 180 days, ending 2026-11-22; the company's side included: CSM touchpoints
and pulses, CSAT surveys sent, e-mails) and the same history without `--with-csm`. Each
is backtested at 2026-10-08 (30-day horizon) twice:

- **before**: the model without the new inputs: the relationship component's weight 0
  and unanswered surveys never counted (`survey_response_days` at its bound, 365 days);
- **after**: the model as it ships (relationship 0.10, an unanswered survey counts 25 points
  after 14 days).

Prints ROC AUC, Brier score and lift for each. Caveat: in the generated histories the
company's side follows each customer's trouble because the generator makes it so
(stream/commands/generate.py, `_outreach`): the difference says the model reads these
signals when they carry information, not that they will on your history. Run the
backtest on a real history with these events before trusting the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HEALTHSCORE = str(Path(sys.executable).parent / "healthscore")
END, AS_OF = "2026-11-22", "2026-10-08"
BEFORE = {
    "HEALTHSCORE_SCORING__WEIGHTS": json.dumps({"usage": 0.30, "purchases": 0.20, "support": 0.15, "sentiment": 0.15, "payments": 0.20, "relationship": 0.0}),
    "HEALTHSCORE_SCORING__SURVEY_RESPONSE_DAYS": "365",
}


def run(arguments: list[str], env: dict[str, str]) -> str:
    done = subprocess.run([HEALTHSCORE, *arguments], capture_output=True, text=True, env={**os.environ, **env}, check=False)
    if done.returncode != 0:
        raise SystemExit(f"healthscore {arguments[0]} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def backtest(history: Path, env: dict[str, str]) -> dict:
    labels = history.with_name(history.name + ".labels.csv")
    summary = json.loads(run(["backtest", "--input", str(history), "--labels", str(labels), "--as-of", AS_OF, "--horizon", "30"], env))
    model = summary["model"]
    return {"roc_auc": round(model["roc_auc"], 4), "brier": round(model["brier"], 4), "lift_at_k": round(model["lift_at_k"], 2)}


def measure(seed: int, csm: bool, workdir: Path, customers: int, events: int) -> dict:
    history = workdir / f"seed-{seed}{'-csm' if csm else ''}.jsonl"
    run(["generate", "--output", str(history), "--customers", str(customers), "--events", str(events),
         "--history-days", "180", "--end", END, "--seed", str(seed), *(["--with-csm"] if csm else [])], {})
    return {"seed": seed, "with_csm": csm, "before": backtest(history, BEFORE), "after": backtest(history, {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 3])
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--events", type=int, default=150_000)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        for seed in arguments.seeds:
            for csm in (True, False):
                print(json.dumps(measure(seed, csm, Path(workdir), arguments.customers, arguments.events)), flush=True)


if __name__ == "__main__":
    main()
