"""The HTTP API's checks, without a server: bearer tokens and readiness (stream/worker/web.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from stream.worker.web import bearer_token_accepted, readiness

TOKENS = [b"first-token", b"second-token"]


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("Bearer first-token", True),
        ("bearer second-token", True),
        ("Bearer  first-token ", True),
        ("Bearer first-toke", False),
        ("Bearer first-token-and-more", False),
        ("Basic first-token", False),
        ("first-token", False),
        ("Bearer ", False),
        ("", False),
    ],
)
def test_a_request_is_accepted_only_with_one_of_the_tokens(header: str, accepted: bool) -> None:
    request = SimpleNamespace(headers={"Authorization": header} if header else {})
    assert bearer_token_accepted(request, TOKENS) is accepted  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("assigned_once", "rebalancing", "in_recovery", "reason"),
    [
        (False, False, False, "waiting for the consumer group to assign partitions"),
        (True, True, False, "rebalancing"),
        (True, False, True, "reading the state back from the changelog"),
        (True, False, False, None),
    ],
)
def test_ready_only_once_assigned_and_the_state_is_read_back(assigned_once: bool, rebalancing: bool, in_recovery: bool, reason: str | None) -> None:
    app = SimpleNamespace(rebalancing=rebalancing, in_recovery=in_recovery)
    assert readiness(app, assigned_once) == reason  # type: ignore[arg-type]
