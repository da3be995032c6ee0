"""The Rust kernel (native/, built as ``scoring._kernel``): the per-event path of the model
without Python objects, for the worker's throughput (at least 25,000 events/s per worker).

It covers ``scoring.pipeline.step`` for models without BG/NBD: apply the event, rescore,
check the alert rules, decide whether the score changed, and the score and alert
messages (``scoring.output``); ``step_raw`` also validates the message when
``scoring.contract`` surely accepts it, and declines the rest to it. ``next_sweep_due`` is
``scoring.due``'s search for the sweep's due-time index (the worker's sweep and the replay);
``replay_step`` and ``replay_visit`` run ``scoring.replay.KernelReplayer`` on encoded
records (a step, a sweep's visit of a due customer), writing the replay's lines.
``fleet_recount`` is the fleet export's recount of one customer (``scoring.fleet_sums``'
contribution and next moment, ``customer_kpis`` as JSON) on sums kept in Rust
(``_kernel.FleetSums``; tests/unit/test_kernel_fleet.py holds it to the model).
``scoring/`` stays the reference: tests/unit/test_kernel.py proves the kernel gives the
same records and messages, byte for byte, and ``bench/kernel_cost.py`` measures both.
"""

from __future__ import annotations

from typing import Any

from scoring.contract import CsmPulse, InvoiceIssued, TopicKind, parse_timestamp_ms
from scoring.state import pulse_expiry_ms
from scoring.alerts import AlertParameters
from scoring.health import ScoringParameters

try:
    from scoring import _kernel  # type: ignore[attr-defined]
except ImportError:  # built only where a Rust toolchain is (scripts/setup.sh)
    _kernel = None  # type: ignore[assignment]

#: The index the kernel takes for each input stream (the order of ``TopicKind``).
STREAM_INDEX = {kind: index for index, kind in enumerate(TopicKind)}


def available() -> bool:
    return _kernel is not None


def supports(parameters: ScoringParameters) -> bool:
    """The kernel does not compute BG/NBD yet."""
    return parameters.bgnbd is None


def build_where_possible(parameters: ScoringParameters, rules: AlertParameters | None, wanted: bool) -> Any | None:
    """The kernel when ``wanted`` (the native_kernel setting), built and able to compute this
    model; None otherwise (the caller runs the Python model, which gives the same results)."""
    return build(parameters, rules) if wanted and available() and supports(parameters) else None


def build(parameters: ScoringParameters, rules: AlertParameters | None = None) -> Any:
    """The kernel for these parameters and alert rules (None: no alerts, as
    ``scoring.pipeline.step`` without rules); ValueError when it cannot compute them."""
    if _kernel is None:
        raise ValueError("the Rust kernel is not built (scripts/setup.sh builds it where cargo is installed)")
    if not supports(parameters):
        raise ValueError("the Rust kernel does not compute BG/NBD yet")
    return _kernel.Kernel(
        list(parameters.weights.items()),
        [(plan, list(weights.items())) for plan, weights in parameters.segment_weights.items()],
        parameters.healthy_min,
        parameters.at_risk_min,
        parameters.healthy_min_active_days,
        parameters.usage_half_life_days,
        list(parameters.key_features),
        parameters.purchase_half_life_days,
        parameters.support_target_resolution_hours,
        parameters.sentiment_half_life_days,
        parameters.survey_response_days,
        parameters.unanswered_survey_points,
        parameters.relationship_half_life_days,
        rules,
        parameters.model_version,
        parameters.user_hash_key,
        None if parameters.churn_model is None else (
            parameters.churn_model.intercept, list(parameters.churn_model.coefficients), parameters.churn_model.horizon_days
        ),
    )


def due_ms(data: object, occurred_at_ms: int) -> int | None:
    """An invoice's due time, or a CSM pulse's expiry, as ``scoring.state.apply_event`` reads
    it (so both models agree on the parse); None for other events."""
    if isinstance(data, CsmPulse):
        return pulse_expiry_ms(data, occurred_at_ms)
    if not isinstance(data, InvoiceIssued):
        return None
    due = parse_timestamp_ms(data.due_at, "data.due_at")
    return due if isinstance(due, int) else occurred_at_ms
