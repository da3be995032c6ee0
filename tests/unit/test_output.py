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


def test_the_same_second_twice_gives_the_same_text() -> None:
    assert rfc3339(1_790_000_000_001) == rfc3339(1_790_000_000_001)
    assert rfc3339(1_790_000_000_001) != rfc3339(1_790_000_001_001)
