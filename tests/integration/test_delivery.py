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
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from standardwebhooks.webhooks import Webhook

from tests.integration.conftest import PROJECT_ROOT, Namespace, free_port, kcat_consume, kcat_produce, wait_for

SECRET = "whsec_" + base64.b64encode(b"integration-secret-24byt").decode()
#: The receivers listen on http://127.0.0.1: both must be allowed explicitly.
LOCAL = {"allow_insecure_http": True, "allow_private_network": True}


class Receiver:
    """A webhook receiver in a thread: verifies each request's signature, answers 200 after ``delay``."""

    def __init__(self, port: int, delay: float = 0.0) -> None:
        self.verified: list[str] = []  # webhook-id of each verified request, in arrival order
        self.refused = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["content-length"]))
                try:
                    Webhook(SECRET).verify(body, {key.lower(): value for key, value in self.headers.items()})
                    receiver.verified.append(self.headers["webhook-id"])
                except Exception:
                    receiver.refused += 1
                time.sleep(delay)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def alert(number: int) -> tuple[str, bytes]:
    customer = f"cust-{number:03d}"
    return customer, json.dumps({
        "alert_id": f"alert-{number:03d}", "customer_id": customer, "rule": "band_downgrade", "severity": "warning",
        "score": 40.0, "previous_score": 55.0, "band": "at_risk", "churn_risk": 0.4, "reasons": [{"component": "usage", "change": -15.0}],
        "detail": "healthy to at_risk", "occurred_at": "2026-12-01T10:00:00.000Z", "raised_at": "2026-12-01T10:00:00.050Z",
    }).encode()


def deliver_env(namespace: Namespace, crm_port: int, down_port: int) -> dict[str, str]:
    endpoints = [
        {"name": "crm", "kind": "webhook", "url": f"http://127.0.0.1:{crm_port}/hook", "secret": SECRET, **LOCAL},
        {"name": "down", "kind": "webhook", "url": f"http://127.0.0.1:{down_port}/hook", "secret": SECRET, **LOCAL},
    ]
    return {
        **os.environ, **namespace.env,
        "HEALTHSCORE_DELIVERY__ENDPOINTS": json.dumps(endpoints),
        "HEALTHSCORE_DELIVERY__GROUP_ID": f"deliver-{namespace.tag}",
        "HEALTHSCORE_DELIVERY__RETRY_SCHEDULE_SECONDS": "[0.1, 0.2]",
        "HEALTHSCORE_DELIVERY__MAX_WAIT_PER_ALERT_SECONDS": "0.5",
        "HEALTHSCORE_DELIVERY__METRICS_PORT": str(free_port()),
    }


def start_deliver(env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "stream.cli", "deliver"], cwd=PROJECT_ROOT, env=env,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def test_alerts_reach_a_webhook_at_least_once_across_a_sigkill_and_parked_ones_are_redriven(namespace: Namespace, tmp_path: Path) -> None:
    alerts = [alert(number) for number in range(40)]
    kcat_produce(namespace.topic("alerts"), alerts)
    expected = {f"alert-{number:03d}" for number in range(40)}
    crm_port, down_port = free_port(), free_port()
    crm = Receiver(crm_port, delay=0.05)
    env = deliver_env(namespace, crm_port, down_port)
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
        time.sleep(3)  # let the last alerts of the history reach the topic
        alert_ids = raised()
        wait_for(lambda: set(receiver.verified) >= alert_ids, timeout=60, message="every alert delivered",
                 explain=lambda: (tmp_path / "deliver.log").read_text())
        assert receiver.refused == 0
    finally:
        process.terminate()
        process.wait(timeout=30)
        worker.stop()
        receiver.stop()
