"""The worker (through the real broker) and the replay give exactly the same final scores."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from stream.cli import main
from stream.commands.generate import write_history
from tests.integration.conftest import (
    CALIBRATED,
    Namespace,
    WorkerProcess,
    kcat_consume,
    metric_value,
    produce_file,
    wait_for,
    wait_until_published,
)

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000


@pytest.mark.parametrize("worker", ["default", "python", "calibrated"], indirect=True)
def test_worker_and_replay_agree_on_every_final_score(namespace: Namespace, worker: WorkerProcess, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    # The replay runs the Python model: the worker must agree with it through the Rust kernel
    # (where it is built, as in CI) and through the Python model.
    from scoring import kernel

    expected_path = "Python model" if request.node.callspec.params["worker"] == "python" or not kernel.available() else "Rust kernel"
    assert f"Each event goes through the {expected_path}" in worker.log_path.read_text()
    history = tmp_path / "history.jsonl"
    end = int(time.time() * 1000) - 3_600_000
    write_history(str(history), str(tmp_path / "labels.csv"), customers=120, events=4000, start_ms=end - 40 * DAY_MS, end_ms=end, seed=9)
    sent = asyncio.run(produce_file(namespace, history))
    url = worker.metrics_url
    inputs = list(namespace.settings.topics.inputs())
    wait_for(
        lambda: sum(metric_value(url, "healthscore_events_total", topic=t, outcome="applied") for t in inputs) == sent,
        timeout=120,
        message="the worker to apply every event",
    )
    wait_until_published(namespace, worker)
    from_worker: dict[str, dict] = {}
    for line in kcat_consume(namespace.topic("health")):
        key, _, value = line.partition("\t")
        from_worker[key] = json.loads(value)

    calibrated = request.node.callspec.params["worker"] == "calibrated"
    env = {"HEALTHSCORE_SCORING__CHURN_RISK": json.dumps(CALIBRATED)} if calibrated else {}
    result = CliRunner().invoke(main, ["replay", "--input", str(history), "--sweep-every", "0"], env=env)
    assert result.exit_code == 0, result.output
    from_replay: dict[str, dict] = {}
    for line in result.stdout.splitlines():
        record = json.loads(line)
        if record["kind"] == "score":
            from_replay[record["customer_id"]] = record

    assert len(from_worker) == 120 and set(from_worker) == set(from_replay)
    disagreements = {
        customer: (from_worker[customer]["score"], from_replay[customer]["score"])
        for customer in from_worker
        if (from_worker[customer]["score"], from_worker[customer]["band"], from_worker[customer]["churn_risk"])
        != (from_replay[customer]["score"], from_replay[customer]["band"], from_replay[customer]["churn_risk"])
    }
    assert not disagreements, disagreements
    # The calibrated churn risk, and its horizon in every score message.
    assert all(from_worker[c]["churn_risk_horizon_days"] == (30.0 if calibrated else None) for c in from_worker)
    assert all(from_worker[c]["as_of"] == from_replay[c]["as_of"] for c in from_worker)
