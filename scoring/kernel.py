"""The Rust kernel (native/, built as ``scoring._kernel``): the per-event path of the model
without Python objects, for the worker's throughput (issue 7).

A feasibility step, not used by the worker yet. It covers applying an event, rescoring
and deciding whether the score changed, for models without BG/NBD; alert rules, the
score message and event validation are still to come. This module (``scoring/``) stays
the reference: tests/unit/test_kernel.py proves the kernel gives the same records,
byte for byte, and the same scores, and ``bench/kernel_cost.py`` measures both.
"""

from __future__ import annotations

from typing import Any

from scoring.contract import InvoiceIssued, TopicKind, parse_timestamp_ms
from scoring.health import ScoringParameters

try:
    from scoring import _kernel
except ImportError:  # built only where a Rust toolchain is (scripts/setup.sh)
    _kernel = None  # type: ignore[assignment]

#: The index the kernel takes for each input stream (the order of ``TopicKind``).
STREAM_INDEX = {kind: index for index, kind in enumerate(TopicKind)}


def available() -> bool:
    return _kernel is not None


def supports(parameters: ScoringParameters) -> bool:
    """The kernel does not compute BG/NBD yet."""
    return parameters.bgnbd is None


def build(parameters: ScoringParameters) -> Any:
    """The kernel for these parameters; ValueError when it cannot compute them."""
    if _kernel is None:
        raise ValueError("the Rust kernel is not built (scripts/setup.sh builds it where cargo is installed)")
    if not supports(parameters):
        raise ValueError("the Rust kernel does not compute BG/NBD yet")
    return _kernel.Kernel(
        list(parameters.weights.items()),
        [(plan, list(weights.items())) for plan, weights in parameters.segment_weights.items()],
        parameters.healthy_min,
        parameters.at_risk_min,
        parameters.usage_half_life_days,
        list(parameters.key_features),
        parameters.purchase_half_life_days,
        parameters.support_target_resolution_hours,
        parameters.sentiment_half_life_days,
    )


def due_ms(data: object, occurred_at_ms: int) -> int | None:
    """An invoice's due time as ``scoring.state.apply_event`` reads it (the kernel does not
    parse timestamps yet); None for other events."""
    if not isinstance(data, InvoiceIssued):
        return None
    due = parse_timestamp_ms(data.due_at, "data.due_at")
    return due if isinstance(due, int) else occurred_at_ms
