"""`healthscore deliver` against a real broker and real HTTP receivers on 127.0.0.1: every
request verified with the `standardwebhooks` library; a SIGKILL of the delivery process
mid-stream loses nothing (each alert arrives at least once, exactly once after the
receiver deduplicates on webhook-id); an endpoint that is down gets its alerts parked
while a healthy one keeps receiving, and `--redrive` delivers them once it is back."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import (
    LOCAL,
    PROJECT_ROOT,
    SECRET,
    Namespace,
    Receiver,
    SlackReceiver,
    alert,
    deliver_env,
    free_port,
    kcat_consume,
    kcat_produce,
    start_deliver,
    wait_for,
    wait_until_published,
)


def test_alerts_reach_a_webhook_at_least_once_across_a_sigkill_and_parked_ones_are_redriven(namespace: Namespace, tmp_path: Path) -> None:
    alerts = [alert(number) for number in range(40)]
    kcat_produce(namespace.topic("alerts"), alerts)
    expected = {f"alert-{number:03d}" for number in range(40)}
    crm_port, down_port = free_port(), free_port()
    crm = Receiver(crm_port, delay=0.05)
    env = deliver_env(namespace, crm_port, down_port)
    # The endpoint that is down gives up on each alert quickly: 40 alerts wait on it in turn.
    env.update({"HEALTHSCORE_DELIVERY__RETRY_SCHEDULE_SECONDS": "[0.02, 0.05]", "HEALTHSCORE_DELIVERY__MAX_WAIT_PER_ALERT_SECONDS": "0.2"})
    log = tmp_path / "deliver.log"
    process = start_deliver(env, log)
    try:
        wait_for(lambda: len(crm.verified) >= 10, timeout=60, message="the first deliveries", explain=lambda: log.read_text())
        process.kill()  # SIGKILL mid-stream: offsets of alerts not fully handled are not committed
        process.wait()
        assert len(set(crm.verified)) < 40
        process = start_deliver(env, log)
        wait_for(lambda: set(crm.verified) == expected, timeout=90, message="every alert at the webhook", explain=lambda: log.read_text())
    finally:
        process.terminate()
        process.wait(timeout=30)
        crm.stop()
    assert crm.refused == 0  # every request carried a valid Standard Webhooks signature
    assert len(crm.verified) >= 40  # at least once; deduplicated on webhook-id, exactly once
    parked = [line for line in kcat_consume(namespace.topic("delivery_failed"), "%h\n") if "delivery.endpoint=down" in line]
    assert len(parked) >= 40 and all("delivery.error=" in line for line in parked)

    down = Receiver(down_port)  # the endpoint is back
    try:
        result = subprocess.run([sys.executable, "-m", "stream.cli", "deliver", "--redrive", "down"], cwd=PROJECT_ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert set(down.verified) == expected and down.refused == 0
        again = subprocess.run([sys.executable, "-m", "stream.cli", "deliver", "--redrive", "down"], cwd=PROJECT_ROOT, env=env,
                               capture_output=True, text=True, timeout=120)
        assert "0 parked alert(s) delivered" in again.stdout  # a redrive does not send them twice
    finally:
        down.stop()


def test_deliver_test_sends_a_sample_alert(namespace: Namespace) -> None:
    port = free_port()
    receiver = Receiver(port)
    try:
        env = deliver_env(namespace, port, free_port())
        result = subprocess.run([sys.executable, "-m", "stream.cli", "deliver", "--test", "crm"], cwd=PROJECT_ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "crm: delivered" in result.stdout, result.stderr
        assert receiver.verified == ["test-0000"]
        failing = subprocess.run([sys.executable, "-m", "stream.cli", "deliver", "--test", "down"], cwd=PROJECT_ROOT, env=env,
                                 capture_output=True, text=True, timeout=60)
        assert failing.returncode != 0 and "down: not delivered" in failing.stderr
    finally:
        receiver.stop()


def test_alerts_a_worker_raises_from_a_generated_history_all_arrive_signed(namespace: Namespace, tmp_path: Path) -> None:
    """The whole path: generated events, the worker's alerts, `deliver`, a verifying receiver."""
    from tests.integration.conftest import WorkerProcess, healthscore

    port = free_port()
    receiver = Receiver(port)
    worker = WorkerProcess(namespace, tmp_path / "worker.log")
    worker.start()
    process = start_deliver(deliver_env(namespace, port, free_port()), tmp_path / "deliver.log")
    try:
        subprocess.run([sys.executable, "-m", "stream.cli", "generate", "--customers", "60", "--rate", "1500", "--duration", "2",
                        "--history-days", "120", "--seed", "5"], cwd=PROJECT_ROOT, env={**os.environ, **namespace.env}, check=True, timeout=120)
        healthscore(namespace, "sweep")

        def raised() -> set[str]:
            return {json.loads(line.partition("\t")[2])["alert_id"] for line in kcat_consume(namespace.topic("alerts"))}

        alert_ids = wait_for(lambda: len(raised()) >= 5 and raised(), timeout=90, message="alerts raised", explain=worker.log_tail)
        wait_until_published(namespace, worker)  # the last alerts of the history are on the topic
        alert_ids = raised()
        wait_for(lambda: set(receiver.verified) >= alert_ids, timeout=60, message="every alert delivered",
                 explain=lambda: (tmp_path / "deliver.log").read_text())
        assert receiver.refused == 0
    finally:
        process.terminate()
        process.wait(timeout=30)
        worker.stop()
        receiver.stop()


def test_a_receiver_with_another_secret_refuses_and_the_alert_parks_while_slack_gets_block_kit(namespace: Namespace, tmp_path: Path) -> None:
    """Signatures prove something only if a receiver with the wrong secret refuses them: it
    answers 401, the alert is parked for that endpoint; the Slack endpoint meanwhile gets the
    Block Kit message slack_sdk builds, which slack_sdk's own checks accept."""
    from slack_sdk.models.blocks import Block

    from stream.delivery.payloads import read_alert, slack_message

    crm_port, slack_port = free_port(), free_port()
    other_secret = "whsec_" + base64.b64encode(b"not-the-endpoint-secret!").decode()
    crm = Receiver(crm_port, secret=other_secret)
    slack = SlackReceiver(slack_port)
    endpoints = [
        {"name": "crm", "kind": "webhook", "url": f"http://127.0.0.1:{crm_port}/hook", "secret": SECRET, **LOCAL},
        {"name": "cs", "kind": "slack", "url": f"http://127.0.0.1:{slack_port}/services/T0/B0/x", **LOCAL},
    ]
    env = {**deliver_env(namespace, crm_port, free_port()), "HEALTHSCORE_DELIVERY__ENDPOINTS": json.dumps(endpoints)}
    alerts = [alert(number) for number in range(2)]
    kcat_produce(namespace.topic("alerts"), alerts)
    log = tmp_path / "deliver.log"
    process = start_deliver(env, log)
    try:
        parked = wait_for(lambda: len(lines := [line for line in kcat_consume(namespace.topic("delivery_failed"), "%h\n") if "delivery.endpoint=crm" in line]) == 2 and lines,
                          timeout=60, message="both alerts parked for crm", explain=lambda: log.read_text())
        wait_for(lambda: len(slack.bodies) == 2, timeout=30, message="both alerts in Slack", explain=lambda: log.read_text())
    finally:
        process.terminate()
        process.wait(timeout=30)
        crm.stop()
        slack.stop()
    assert crm.verified == [] and crm.refused >= 2
    assert all("delivery.error=" in line and "HTTP 401" in line for line in parked)  # the first after its retries, the next at once (paused)
    assert sorted(slack.bodies, key=lambda body: body["text"]) == [slack_message(read_alert(value), None) for _, value in alerts]
    for body in slack.bodies:
        for block in body["blocks"]:
            Block.parse(block).validate_json()
