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
    configure_model,
    WorkerProcess,
    kcat_consume,
    metric_value,
    produce_file,
    wait_for,
    wait_until_published,
)

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000


@pytest.mark.parametrize("model", ["default", "python", "calibrated"])
def test_worker_and_replay_agree_on_every_final_score(namespace: Namespace, tmp_path: Path, model: str) -> None:
    # The replay runs the Python model: the worker must agree with it through the Rust kernel
    # (where it is built, as in CI) and through the Python model.
    from scoring import kernel

    history = tmp_path / "history.jsonl"
    end = int(time.time() * 1000) - 3_600_000
    write_history(str(history), str(tmp_path / "labels.csv"), customers=120, events=4000, start_ms=end - 40 * DAY_MS, end_ms=end, seed=9)
    configure_model(namespace, model)
    worker = WorkerProcess(namespace, tmp_path / "worker.log")
    worker.start()
    try:
        sent = asyncio.run(produce_file(namespace, history))
        _agree(namespace, worker, history, sent, model, kernel.available())
    finally:
        worker.stop()


def test_a_worker_started_on_a_backlog_applies_it_in_event_time_order(namespace: Namespace, tmp_path: Path) -> None:
    # The whole history is on the broker before the worker's group first reads: the event-time
    # merge must hand every customer's events over in order although the four topics' fetches
    # come in any order (a partition's fetch, drained in the consumer thread, once reached the
    # loop after other topics' later records: docs/alerts.md). Then even the active days agree.
    from scoring import kernel

    history = tmp_path / "history.jsonl"
    end = int(time.time() * 1000) - 3_600_000
    write_history(str(history), str(tmp_path / "labels.csv"), customers=120, events=4000, start_ms=end - 40 * DAY_MS, end_ms=end, seed=11)
    configure_model(namespace, "calibrated")
    sent = asyncio.run(produce_file(namespace, history))
    worker = WorkerProcess(namespace, tmp_path / "worker.log")
    worker.start()
    try:
        _agree(namespace, worker, history, sent, "calibrated", kernel.available(), all_in_order=True)
    finally:
        worker.stop()


def _agree(
    namespace: Namespace, worker: WorkerProcess, history: Path, sent: int, model: str, kernel_built: bool, all_in_order: bool = False
) -> None:
    expected_path = "Python model" if model == "python" or not kernel_built else "Rust kernel"
    assert f"Each event goes through the {expected_path}" in worker.log_path.read_text()
    url = worker.metrics_url
    inputs = list(namespace.settings.topics.inputs())
    wait_for(
        lambda: sum(metric_value(url, "healthscore_events_total", topic=t, outcome="applied") for t in inputs) == sent,
        timeout=120,
        message="the worker to apply every event",
    )
    out_of_order = sum(metric_value(url, "healthscore_events_out_of_order_total", topic=t) for t in inputs)
    if all_in_order:
        assert out_of_order == 0, f"{out_of_order} events applied after a later-stamped one"
    wait_until_published(namespace, worker)
    from_worker: dict[str, dict] = {}
    for line in kcat_consume(namespace.topic("health")):
        key, _, value = line.partition("\t")
        from_worker[key] = json.loads(value)

    calibrated = model == "calibrated"
    env = {"HEALTHSCORE_SCORING__CHURN_RISK": json.dumps(CALIBRATED)} if calibrated else {}
    result = CliRunner().invoke(main, ["replay", "--input", str(history), "--sweep-every", "0"], env=env)
    assert result.exit_code == 0, result.output
    from_replay: dict[str, dict] = {}
    for line in result.stdout.splitlines():
        record = json.loads(line)
        if record["kind"] == "score":
            from_replay[record["customer_id"]] = record

    assert len(from_worker) == 120 and set(from_worker) == set(from_replay)
    # An event that reached the worker after a later-stamped one (it was produced while the worker
    # read, and the merge's wait ran out under load: rare, seen on a loaded CI machine) is applied as
    # it comes. Its customer's KPIs and score stay exact, but active days count forward only, and
    # with them the confidence and the calibrated churn risk (docs/alerts.md): those are compared
    # when every event came in order.
    def told(message: dict) -> tuple:
        if out_of_order:
            return message["score"], message["band"]
        return message["score"], message["band"], message["churn_risk"], message["confidence"]

    disagreements = {
        customer: (told(from_worker[customer]), told(from_replay[customer]))
        for customer in from_worker
        if told(from_worker[customer]) != told(from_replay[customer])
    }
    assert not disagreements, disagreements
    # The calibrated churn risk, and its horizon in every score message.
    assert all(from_worker[c]["churn_risk_horizon_days"] == (30.0 if calibrated else None) for c in from_worker)
    assert all(from_worker[c]["as_of"] == from_replay[c]["as_of"] for c in from_worker)
