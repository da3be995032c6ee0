"""Helpers every test layer shares: events in the wire contract, HTTP and metrics reads, the
`healthscore` command, and waiting on facts (a condition, never a fixed sleep).

A metric series that does not exist is an error here, not 0: a check that a counter is 0
must fail when the metric was renamed or never created.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

PROJECT_ROOT = Path(__file__).resolve().parent.parent
HOUR_MS = 3_600_000
#: When the test session started: "hours ago" in :func:`event` counts from here.
NOW_MS = int(time.time() * 1000)


class MissingSeries(LookupError):
    """The metric (with those labels) is not exposed at all."""


def event_at(event_id: str, event_type: str, customer: str, at_ms: int, data: dict) -> bytes:
    """One event in the wire contract (docs/events.md), at ``at_ms`` epoch milliseconds."""
    return json.dumps({"event_id": event_id, "type": event_type, "customer_id": customer, "occurred_at": at_ms, "data": data}).encode()


def event(event_id: str, event_type: str, customer: str, hours_ago: float, data: dict) -> bytes:
    """One event ``hours_ago`` before the session started (negative: after)."""
    return event_at(event_id, event_type, customer, NOW_MS - int(hours_ago * HOUR_MS), data)


def usage_event(event_id: str, customer: str, at_ms: int) -> bytes:
    return event_at(event_id, "usage.session", customer, at_ms, {"user_id": "u1", "duration_seconds": 60})


def _series(url: str) -> list[tuple[str, frozenset[str], float]]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    series = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        metric, _, value = line.rpartition(" ")
        name, _, labels = metric.partition("{")
        series.append((name, frozenset(part for part in labels.rstrip("}").split(",") if part), float(value)))
    return series


def metric_value(url: str, name: str, **labels: str) -> float:
    """The value of one series; :class:`MissingSeries` when it is not exposed."""
    wanted = frozenset(f'{key}="{value}"' for key, value in labels.items())
    for found, found_labels, value in _series(url):
        if found == name and found_labels == wanted:
            return value
    raise MissingSeries(f"{name}{dict(labels) or ''} is not exposed at {url}")


def metric_sum(url: str, name: str) -> float:
    """The sum over every series of ``name``; :class:`MissingSeries` when there is none."""
    values = [value for found, _, value in _series(url) if found == name]
    if not values:
        raise MissingSeries(f"{name} is not exposed at {url}")
    return sum(values)


def get_json(url: str, token: str | None = None, timeout: float = 5) -> tuple[int, Any]:
    """(status, body) of a GET; the body parsed as JSON when it is JSON."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body, status = response.read().decode(), response.status
    except urllib.error.HTTPError as error:
        body, status = error.read().decode(), error.code
    try:
        return status, json.loads(body)
    except json.JSONDecodeError:
        return status, body


def run_cli(env: dict[str, str], *args: str, timeout: float = 120, check: bool = False, drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``healthscore ARGS`` with ``env`` over the test's environment (less the variables in
    ``drop``), no standard input."""
    base = {key: value for key, value in os.environ.items() if key not in drop}
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *args], cwd=PROJECT_ROOT, env={**base, **env},
        capture_output=True, text=True, timeout=timeout, check=check, stdin=subprocess.DEVNULL,
    )


def wait_for(predicate: Callable[[], Any], timeout: float = 30, interval: float = 0.5, message: str = "condition", explain: Callable[[], str] | None = None) -> Any:
    """Polls ``predicate`` until it is truthy and returns its value. A metric not exposed yet,
    or a process not answering yet, counts as not yet. ``explain`` (a worker's log tail, say)
    is added to the failure, so a flake in CI can be diagnosed."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (MissingSeries, OSError) as error:
            last = error
        else:
            if last:
                return last
        time.sleep(interval)
    detail = f"\n{explain()}" if explain is not None else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {message}; last value: {last!r}{detail}")
