"""Output messages: timestamps as RFC 3339 UTC with milliseconds."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scoring.output import rfc3339


@pytest.mark.parametrize(
    ("epoch_ms", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (1_790_000_000_123, "2026-09-21T14:13:20.123Z"),
        (1_790_000_000_999, "2026-09-21T14:13:20.999Z"),
        (-1, "1969-12-31T23:59:59.999Z"),
    ],
)
def test_rfc3339_table(epoch_ms: int, text: str) -> None:
    assert rfc3339(epoch_ms) == text


@given(st.integers(min_value=-10**12, max_value=4 * 10**12))
def test_rfc3339_matches_the_standard_library(epoch_ms: int) -> None:
    seconds, milliseconds = divmod(epoch_ms, 1000)
    expected = datetime.fromtimestamp(seconds, tz=timezone.utc)
    assert rfc3339(epoch_ms) == expected.strftime("%Y-%m-%dT%H:%M:%S") + f".{milliseconds:03d}Z"


def test_a_day_read_from_the_cache_gives_the_standard_librarys_text() -> None:
    """The first call formats the day and keeps it; later ones of that day read it back."""
    first = rfc3339(1_790_000_000_001)
    again = rfc3339(1_790_000_000_001)  # the day from the cache
    later = rfc3339(1_790_000_001_001)
    assert first == again == "2026-09-21T14:13:20.001Z"
    assert later == "2026-09-21T14:13:21.001Z"


@given(st.floats(min_value=-200, max_value=200, allow_nan=False))
def test_message_values_are_rounded_to_the_published_precision(value: float) -> None:
    from scoring.health import ComponentScore, HealthScore
    from scoring.output import health_message

    health = HealthScore(
        score=50.0, band="at_risk", churn_risk=0.2, components={"usage": ComponentScore(value, 0.5, value / 2)},
        as_of_ms=0, confidence=0.5, changes={"usage": value},
    )
    message = health_message("acme", health, 0, "v", None)
    shown = message.components["usage"].score
    assert abs(shown - value) <= 0.005 + 1e-9
    assert abs(shown * 100 - round(shown * 100)) < 1e-6
    assert message.changes["usage"] == shown
    # round() agrees except within a rounding error of an exact tie
    if abs(abs(value * 100) % 1 - 0.5) > 1e-6:
        assert shown == round(value, 2)


def test_an_alert_message_carries_the_customers_plan_for_routing_by_segment() -> None:
    from scoring.output import alert_message
    from scoring.structs import Alert, Reason

    alert = Alert("a-1", "acme", "cancellation", "critical", 20.0, 45.0, "critical", 0.9, [Reason("payments", -20.0)], 0, "cancelled", "enterprise")
    message = alert_message(alert, 1000, "2+x")
    assert message["plan"] == "enterprise" and list(message)[-4] == "plan"
    assert alert_message(Alert("a-2", "solo", "silence", "warning", 40.0, None, "at_risk", 0.4, [], 0, ""), 1000, "2+x")["plan"] is None
