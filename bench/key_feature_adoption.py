"""Key-feature adoption: inside the usage component (as the model has it) or its own weighted
component? Backtests three variants on one history (run on demand; issue 36, item 5).

    .venv/bin/python bench/key_feature_adoption.py HISTORY LABELS.csv AS_OF --features reports integrations api

Variants: no key features; key features inside usage (a quarter of usage's activity mean,
the model today); adoption as its own component (weight --weight, 0.10 by default, usage
without it), built here by patching the pure-Python model, not in the model or the kernel.
Prints each variant's ROC AUC, Brier score and lift as the backtest computes them, 30-day
horizon. Figures and the decision they led to: docs/model.md, "Key-feature adoption".
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ["HEALTHSCORE_PURE_PYTHON"] = "1"  # the model from source, so the variant can patch it


def backtest(history: Path, labels: Path, as_of: str) -> dict:
    from stream.cli import _parse_time
    from stream.commands.backtest import run_backtest
    from stream.settings import load_settings

    summary = run_backtest(load_settings(), history, labels, _parse_time(as_of, "--as-of"), 30.0, None, None, lambda _: None)
    return {"roc_auc": summary["model"]["roc_auc"], "brier": summary["model"]["brier"], "lift_at_k": summary["model"]["lift_at_k"]}


def own_component(features: tuple[str, ...], weight: float) -> None:
    """Adoption as a seventh component; usage scored without it."""
    import dataclasses

    from scoring import health

    original_values, original_usage = health._component_values, health.usage_score

    def adoption(state, at_ms: int) -> float | None:
        if not state.last_usage_ms:
            return None
        today = at_ms // health.DAY_MS
        used = sum(1 for f in features if 0 <= today - state.features_last_day.get(f, -(10**9)) < 30)
        return 100.0 * used / len(features)

    def values(state, at_ms, parameters, expected, sums):
        plain = dataclasses.replace(parameters, key_features=())
        return (*original_values(state, at_ms, plain, expected, sums), adoption(state, at_ms))

    from stream import settings

    health._component_values = values
    health.usage_score = original_usage
    health.COMPONENTS = settings.COMPONENTS = (*health.COMPONENTS, "adoption")
    health.DEFAULT_WEIGHTS["adoption"] = weight


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("history", type=Path)
    parser.add_argument("labels", type=Path)
    parser.add_argument("as_of")
    parser.add_argument("--features", nargs="+", default=["reports", "integrations", "api"])
    parser.add_argument("--weight", type=float, default=0.10)
    args = parser.parse_args()
    results = {"no_key_features": backtest(args.history, args.labels, args.as_of)}
    os.environ["HEALTHSCORE_SCORING__KEY_FEATURES"] = json.dumps(args.features)
    results["inside_usage"] = backtest(args.history, args.labels, args.as_of)
    own_component(tuple(args.features), args.weight)
    os.environ["HEALTHSCORE_SCORING__WEIGHTS"] = json.dumps({"usage": 0.30, "purchases": 0.20, "support": 0.15, "sentiment": 0.15,
                                                            "payments": 0.20, "relationship": 0.10, "adoption": args.weight})
    results["own_component"] = backtest(args.history, args.labels, args.as_of)
    print(json.dumps({"features": args.features, "weight": args.weight, **results}))


if __name__ == "__main__":
    main()
