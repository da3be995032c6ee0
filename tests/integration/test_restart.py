"""A restarted worker gets every customer's record back from the changelog (stream/recovery.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.integration.conftest import Namespace, WorkerProcess, kcat_produce, wait_for
from tests.integration.test_end_to_end import metric_value

pytestmark = pytest.mark.integration

CUSTOMERS = 600
ROUNDS = 3


def usage_event(event_id: str, customer: str, at_ms: int) -> bytes:
    return json.dumps(
        {
            "event_id": event_id,
            "type": "usage.session",
            "customer_id": customer,
            "occurred_at": at_ms,
            "data": {"user_id": "u1", "duration_seconds": 60},
        }
    ).encode()


def test_a_restarted_worker_reads_every_record_back_and_knows_every_event_it_applied(namespace: Namespace, tmp_path: Path) -> None:
    namespace.env["HEALTHSCORE_FLEET_METRICS_INTERVAL_SECONDS"] = "1"
    usage = namespace.topic("usage")
    now_ms = int(time.time() * 1000)
    rounds = [
        [(f"c{index:04d}", usage_event(f"e{round_index}-{index}", f"c{index:04d}", now_ms - (ROUNDS - round_index) * 60_000)) for index in range(CUSTOMERS)]
        for round_index in range(ROUNDS)
    ]
    worker = WorkerProcess(namespace, tmp_path / "worker.log")
    worker.start()
    try:
        url = worker.metrics_url
        for done, messages in enumerate(rounds, start=1):
            # One round at a time: every customer's record is written (to the changelog) once per round.
            kcat_produce(usage, messages)
            wait_for(
                lambda: metric_value(url, "healthscore_events_total", topic=usage, outcome="applied") == CUSTOMERS * done,
                timeout=60,
                message=f"round {done} applied",
            )
        worker.stop()

        worker.start()
        wait_for(
            lambda: metric_value(url, "healthscore_fleet_customers", state="total") == CUSTOMERS,
            timeout=60,
            message="every customer's record back in the table",
        )
        assert metric_value(url, "healthscore_changelog_records_restored_total") >= CUSTOMERS
        # Every event again, as new messages: each record remembers the events it applied.
        kcat_produce(usage, [message for messages in rounds for message in messages])
        wait_for(
            lambda: metric_value(url, "healthscore_events_total", topic=usage, outcome="duplicate") == CUSTOMERS * ROUNDS,
            timeout=60,
            message="every event recognised as already applied",
        )
        assert metric_value(url, "healthscore_events_total", topic=usage, outcome="applied") == 0
    finally:
        worker.stop()
