"""The HTTP API locked down: bearer tokens on the lookups and /metrics, Faust's own pages off,
probes for an orchestrator (a real worker, real Kafka and Redis)."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from scoring.health import MODEL_REVISION
from stream.settings import PROJECT_ROOT
from tests.integration.conftest import (
    FAULT_INJECTION,
    Namespace,
    WorkerProcess,
    event,
    get_json,
    kcat_produce,
    metric_value,
    wait_for,
)

API_TOKEN = "api-token-for-the-test-0123456789abcdef"
METRICS_TOKEN = "metrics-token-for-the-test-0123456789abcdef"



@pytest.fixture
def locked_worker(namespace: Namespace, tmp_path: Path) -> Iterator[WorkerProcess]:
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"\n{API_TOKEN}-from-the-file\n")
    namespace.env.update(
        {
            "HEALTHSCORE_API_TOKENS": json.dumps([API_TOKEN]),
            "HEALTHSCORE_API_TOKENS_FILE": str(tokens_file),
            "HEALTHSCORE_METRICS_TOKEN": METRICS_TOKEN,
        }
    )
    worker = WorkerProcess(namespace, tmp_path / "worker.log")
    worker.start()
    yield worker
    worker.stop()


def test_lookups_and_metrics_need_a_token_and_faust_pages_are_off(namespace: Namespace, locked_worker: WorkerProcess) -> None:
    base = f"http://127.0.0.1:{namespace.settings.web_port}"
    kcat_produce(namespace.topic("usage"), [("acme", event("a-1", "usage.session", "acme", 1, {"user_id": "u", "duration_seconds": 60}))])
    wait_for(lambda: get_json(f"{base}/customers/acme/health", API_TOKEN)[0] == 200, timeout=30, message="acme's score")
    for path in ("/customers/acme/health", "/customers/at-risk"):
        for token in (None, "wrong-token", API_TOKEN[:-1]):
            status, body = get_json(base + path, token)
            assert status == 401 and "bearer token" in body["error"], (path, token, status, body)
        assert get_json(base + path, API_TOKEN)[0] == 200
        assert get_json(base + path, f"{API_TOKEN}-from-the-file")[0] == 200
    assert get_json(f"{base}/metrics")[0] == 401
    status, exposition = get_json(f"{base}/metrics", METRICS_TOKEN)
    assert status == 200 and 'healthscore_build_info{' in exposition and 'kernel="' in exposition
    for path in ("/router/", "/table/", "/router", "/table"):
        assert get_json(base + path, API_TOKEN)[0] == 404, path
    log = locked_worker.log_path.read_text()
    assert API_TOKEN not in log and METRICS_TOKEN not in log
    assert "healthscore " in log and f"model {MODEL_REVISION}+" in log


def test_probes_answer_without_a_token_and_say_when_the_worker_is_ready(namespace: Namespace, locked_worker: WorkerProcess) -> None:
    base = f"http://127.0.0.1:{namespace.settings.web_port}"
    status, body = wait_for(lambda: (lambda answer: answer if answer[1].get("processing") == "running" else None)(get_json(f"{base}/healthz")),
                            timeout=30, message="running")
    assert (status, body) == (200, {"status": "alive", "processing": "running"})
    assert get_json(f"{base}/readyz") == (200, {"status": "ready", "processing": "running"})


def test_error_bodies_carry_no_internal_text_and_limit_is_strict(namespace: Namespace, locked_worker: WorkerProcess) -> None:
    base = f"http://127.0.0.1:{namespace.settings.web_port}"
    for limit in ("%C2%B2", "1e3", "-1", "0", "1001", "5%20", "%EF%BC%95"):  # "²" and a fullwidth 5, URL-encoded
        status, body = get_json(f"{base}/customers/at-risk?limit={limit}", API_TOKEN)
        assert status == 400 and body["error"].startswith("limit must be an integer from 1 to 1000"), (limit, status, body)
    assert get_json(f"{base}/customers/at-risk?limit=5", API_TOKEN)[0] == 200
    status, body = get_json(f"{base}/customers/nobody/health", API_TOKEN)
    assert (status, body) == (404, {"error": "unknown customer (no score yet)"})


def test_json_logs_parse_line_by_line(namespace: Namespace, tmp_path: Path) -> None:
    namespace.env["HEALTHSCORE_LOG_FORMAT"] = "json"
    worker = WorkerProcess(namespace, tmp_path / "worker.log")
    worker.start()
    try:
        kcat_produce(namespace.topic("usage"), [("acme", b"{not json")])  # a dead letter: a WARNING with its reason
        wait_for(lambda: "Dead-lettered" in worker.log_path.read_text(), timeout=30, message="the dead letter's log line")
    finally:
        worker.stop()
    lines = [line for line in worker.log_path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line, or this raises
    assert len(records) > 10
    assert all({"time", "level", "logger", "message"} <= set(record) for record in records)
    assert any(record["level"] == "WARNING" and record["message"].startswith("Dead-lettered") for record in records)
    assert any(record["message"].startswith("healthscore ") and f"model {MODEL_REVISION}+" in record["message"] for record in records)


def test_readyz_stays_200_while_the_state_is_read_back_and_healthz_says_so(namespace: Namespace, tmp_path: Path) -> None:
    """A worker reading its changelog back still answers lookups (they come from Redis): a
    deploy or a rebalance must not take the API down. /healthz shows the processing state.
    The recovery is held (tests/integration/fault_injection) until released."""
    first = WorkerProcess(namespace, tmp_path / "first.log")
    first.start()
    kcat_produce(namespace.topic("usage"), [("acme", event(f"r{i}", "usage.session", "acme", 2 - i * 0.1, {"user_id": "u1", "duration_seconds": 60})) for i in range(5)])
    wait_for(lambda: metric_value(first.metrics_url, "healthscore_events_total", topic=namespace.topic("usage"), outcome="applied") == 5, timeout=60)
    first.stop()  # its changelog now holds acme's record: the next start reads it back

    hold = tmp_path / "hold-recovery"
    hold.write_text("")
    namespace.env.update({"PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(FAULT_INJECTION)]), "FAULT_RECOVERY_HOLD_FILE": str(hold)})
    held = WorkerProcess(namespace, tmp_path / "held.log")
    held.start(until=b"active offsets at start of reading")
    base = f"http://127.0.0.1:{namespace.settings.web_port}"
    try:
        status, body = wait_for(lambda: (lambda answer: answer if answer[1].get("processing") == "recovering" else None)(get_json(f"{base}/healthz")),
                                timeout=30, message="recovering")
        assert (status, body) == (200, {"status": "alive", "processing": "recovering"})
        assert get_json(f"{base}/readyz") == (200, {"status": "ready", "processing": "recovering"})
        assert get_json(f"{base}/customers/acme/health")[0] == 200  # lookups work meanwhile
        assert metric_value(held.metrics_url, "healthscore_processing_state", state="recovering") == 1
        hold.unlink()
        wait_for(lambda: get_json(f"{base}/healthz")[1].get("processing") == "running", timeout=30, message="running")
        assert metric_value(held.metrics_url, "healthscore_processing_state", state="recovering") == 0
    finally:
        held.stop()


def test_readyz_says_503_without_redis_text_when_redis_does_not_answer(namespace: Namespace, tmp_path: Path) -> None:
    namespace.env["HEALTHSCORE_REDIS_URL"] = "redis://internal-redis.example.invalid:6379/0"  # resolves nowhere
    worker = WorkerProcess(namespace, tmp_path / "worker.log")
    worker.start()
    base = f"http://127.0.0.1:{namespace.settings.web_port}"
    try:
        assert get_json(f"{base}/readyz") == (503, {"status": "not ready", "reason": "Redis does not answer", "processing": get_json(f"{base}/healthz")[1]["processing"]})
        status, body = get_json(f"{base}/customers/acme/health")
        assert (status, body) == (503, {"error": "Redis is unavailable"})
        assert "internal-redis" in worker.log_path.read_text()  # the detail goes to the log
    finally:
        worker.stop()


def test_the_web_port_answers_https_only_with_a_certificate(namespace: Namespace, tmp_path: Path) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
        check=True, capture_output=True, timeout=60,
    )
    namespace.env.update({"HEALTHSCORE_WEB_TLS_CERTFILE": str(tmp_path / "cert.pem"), "HEALTHSCORE_WEB_TLS_KEYFILE": str(tmp_path / "key.pem")})
    worker = WorkerProcess(namespace, tmp_path / "worker.log")
    worker.start()
    try:
        port = namespace.settings.web_port
        trusted = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        answer = urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=trusted, timeout=5)
        assert answer.status == 200 and json.loads(answer.read())["status"] == "alive"
        with pytest.raises(urllib.error.URLError):  # not trusted: refused by the client
            urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", timeout=5)
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):  # plain HTTP gets nothing
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        worker.stop()


def test_a_certificate_without_its_key_stops_the_start_naming_the_settings(namespace: Namespace, tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate")
    namespace.env.update({"HEALTHSCORE_WEB_TLS_CERTFILE": str(tmp_path / "cert.pem")})
    started = subprocess.run(
        [sys.executable, "-m", "stream.cli", "worker"], cwd=PROJECT_ROOT, env={**os.environ, **namespace.env},
        capture_output=True, text=True, timeout=60,
    )
    assert started.returncode != 0
    assert "web_tls_certfile and web_tls_keyfile go together" in started.stderr and "Traceback" not in started.stderr
