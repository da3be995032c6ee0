"""The calibrated churn risk: a logistic model over what the worker knows when it scores,
fitted on the user's own history by ``healthscore calibrate`` (the fit itself is not here:
scikit-learn does it, in stream/commands/calibrate.py). Pure, and evaluated operation for
operation by the Rust kernel too (native/src/health.rs): a fixed feature order, a
left-to-right sum, the C library's ``exp`` and ``log1p``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Mapping

from scoring.structs import ComponentScore

COMPONENTS: Final = ("usage", "purchases", "support", "sentiment", "payments")
#: The features, in the order of the coefficients (docs/model.md, "Calibrated churn risk").
FEATURES: Final = (
    "score", "usage", "purchases", "support", "sentiment", "payments", "confidence", "log_days_silent", "log_active_days",
)
DAY_MS: Final = 86_400_000
#: A component without data counts as this (0-1) in the features; confidence says how much was missing.
MISSING_COMPONENT: Final = 0.5


@dataclass(frozen=True)
class ChurnModel:
    """z = intercept + Σ coefficient × feature; churn risk = 1 / (1 + e^−z), the probability of
    churning within ``horizon_days``."""

    intercept: float
    coefficients: tuple[float, ...]
    horizon_days: float


def churn_features(
    score: float, components: Mapping[str, ComponentScore], confidence: float, silent_ms: int, active_days: int
) -> list[float]:
    """The features of one score: the published score and each component on 0-1 (a missing one
    at 0.5), the confidence, log(1 + days since the last event), log(1 + days with counted
    events in the last 90 days: ``scoring.health.days_with_events``, whatever their order)."""
    features = [score / 100.0]
    for name in COMPONENTS:
        component = components.get(name)
        features.append(component.score / 100.0 if component is not None else MISSING_COMPONENT)
    features.append(confidence)
    features.append(math.log1p(max(0, silent_ms) / DAY_MS))
    features.append(math.log1p(float(active_days)))
    return features


def churn_probability(model: ChurnModel, features: list[float]) -> float:
    z = model.intercept
    for coefficient, feature in zip(model.coefficients, features):
        z += coefficient * feature
    z = min(500.0, max(-500.0, z))  # e^500 is finite: no overflow whatever the coefficients
    return 1.0 / (1.0 + math.exp(-z))
