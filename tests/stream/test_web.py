"""The HTTP API's checks, without a server: bearer tokens, the processing state and the
agent's progress behind /healthz (stream/worker/web.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from stream.worker.web import AgentProgress, bearer_token_accepted, processing_state

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
    ("assigned_once", "rebalancing", "in_recovery", "state"),
    [
        (False, False, False, "assigning"),
        (True, True, False, "rebalancing"),
        (True, True, True, "recovering"),
        (True, False, False, "running"),
    ],
)
def test_the_processing_state(assigned_once: bool, rebalancing: bool, in_recovery: bool, state: str) -> None:
    app = SimpleNamespace(rebalancing=rebalancing, in_recovery=in_recovery)
    assert processing_state(app, assigned_once) == state  # type: ignore[arg-type]


def test_healthz_fails_for_a_dead_agent_or_one_that_stalls_while_records_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("stream.worker.web.time.monotonic", lambda: clock[0])
    waiting, alive = [0], [True]
    progress = AgentProgress(lambda: waiting[0], lambda: alive[0], stall_seconds=60)
    clock[0] += 600
    assert progress.problem("running") is None  # idle, but nothing waits: fine
    waiting[0] = 10
    assert "not advanced for 600 s while records wait" in (progress.problem("running") or "")
    assert progress.problem("recovering") is None  # reading state back is not a stall
    progress.note_batch()
    clock[0] += 59
    assert progress.problem("running") is None
    alive[0] = False
    assert progress.problem("running") == "the apply agent is not running"


def test_an_agent_whose_actor_died_is_not_alive() -> None:
    import asyncio

    from stream.worker.app import agent_alive

    async def scenario() -> list[bool]:
        running = asyncio.ensure_future(asyncio.sleep(10))
        finished = asyncio.ensure_future(asyncio.sleep(0))
        await asyncio.sleep(0.01)
        answers = [
            agent_alive(SimpleNamespace(started=False, crashed=False, _actors=[])),  # not started yet: nothing failed
            agent_alive(SimpleNamespace(started=True, crashed=False, _actors=[SimpleNamespace(actor_task=running, crashed=False)])),
            agent_alive(SimpleNamespace(started=True, crashed=False, _actors=[SimpleNamespace(actor_task=finished, crashed=False)])),
            agent_alive(SimpleNamespace(started=True, crashed=False, _actors=[SimpleNamespace(actor_task=running, crashed=True)])),
            agent_alive(SimpleNamespace(started=True, crashed=True, _actors=[])),
        ]
        running.cancel()
        return answers

    assert asyncio.run(scenario()) == [True, True, False, False, False]
