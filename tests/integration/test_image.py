"""The container image, built here by scripts/image-build.sh (podman) and run as
deploy/kubernetes runs it: uid 10001 from the image's own USER, a read-only root filesystem
with only the data directory and /tmp writable, no capabilities, no privilege escalation;
against the real local broker and Redis (host network). The worker scores an event, and
`deliver` and `ingest` start from the same image (an event sent through ingest is scored)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from stream.settings import PROJECT_ROOT
from tests.integration.conftest import Namespace, event, free_port, get_json, kcat_produce, wait_for

pytestmark = pytest.mark.integration

IMAGE = "localhost/healthscore:test"
PODMAN = ["podman", "--runtime", "runc"]
TOKEN = "image-test-ingest-token-0123456789abcdef"


@pytest.fixture(scope="session")
def image() -> str:
    built = subprocess.run(["bash", "scripts/image-build.sh", IMAGE], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1200)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert "compiled, Rust kernel built" in built.stdout
    return IMAGE


class Container:
    """One `podman run` of the image, locked down as the manifests lock the pods down."""

    def __init__(self, image: str, args: list[str], env: dict[str, str], data_dir: Path) -> None:
        self.name = f"hs-test-{uuid.uuid4().hex[:8]}"
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chown(data_dir, 10001, 10001)  # the volume, writable by the image's user only
        variables = [item for name, value in env.items() for item in ("--env", f"{name}={value}")]
        self.log_path = data_dir.parent / f"{self.name}.log"
        self.process = subprocess.Popen(
            [*PODMAN, "run", "--rm", "--name", self.name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
             "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
             "--volume", f"{data_dir}:/var/lib/healthscore", *variables, image, *args],
            stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def exec(self, *command: str) -> str:
        return subprocess.run([*PODMAN, "exec", self.name, *command], capture_output=True, text=True, check=True).stdout.strip()

    def stop(self) -> str:
        logs = self.logs()
        subprocess.run([*PODMAN, "stop", "--time", "10", self.name], capture_output=True)
        self.process.wait(timeout=30)
        return logs


@pytest.fixture
def containers() -> Iterator[list[Container]]:
    started: list[Container] = []
    yield started
    for container in started:
        logs = container.stop()
        assert "Read-only file system" not in logs, logs[-3000:]  # nothing written outside the volumes


def container_env(namespace: Namespace) -> dict[str, str]:
    """The namespace's settings, inside the image: its own data directory, the API on loopback."""
    env = {name: value for name, value in namespace.env.items() if name != "HEALTHSCORE_DATA_DIR"}
    return {**env, "HEALTHSCORE_WEB_HOST": "127.0.0.1"}


def test_the_image_runs_the_worker_deliver_and_ingest_locked_down(image: str, namespace: Namespace, tmp_path: Path, containers: list[Container]) -> None:
    user = subprocess.run([*PODMAN, "image", "inspect", "--format", "{{.Config.User}}", image], capture_output=True, text=True, check=True)
    assert user.stdout.strip() == "10001:10001"  # not root, without --user: the image's own
    env = container_env(namespace)
    worker = Container(image, ["worker"], env, tmp_path / "worker-data")
    containers.append(worker)
    base = f"http://127.0.0.1:{namespace.settings.web_port}"
    wait_for(lambda: get_json(f"{base}/readyz")[0] == 200, timeout=90, message="the worker in the image ready", explain=worker.logs)
    assert worker.exec("id", "-u") == "10001"
    kcat_produce(namespace.topic("usage"), [("boxed", event("b-1", "usage.session", "boxed", 1, {"user_id": "u", "duration_seconds": 60}))])
    health = wait_for(lambda: (lambda answer: answer[1] if answer[0] == 200 else None)(get_json(f"{base}/customers/boxed/health")),
                      timeout=60, message="the event scored by the worker in the image", explain=worker.logs)
    assert health["components"]["usage"]["score"] > 0

    ingest_port = free_port()
    ingest = Container(image, ["ingest"], {**env, "HEALTHSCORE_INGEST__PORT": str(ingest_port), "HEALTHSCORE_INGEST__API_TOKENS": json.dumps([TOKEN])},
                       tmp_path / "ingest-data")
    containers.append(ingest)
    wait_for(lambda: get_json(f"http://127.0.0.1:{ingest_port}/healthz")[0] == 200, timeout=90, message="ingest in the image", explain=ingest.logs)
    sent = json.dumps({"event_id": "b-2", "type": "usage.session", "customer_id": "through-ingest", "occurred_at": int(time.time() * 1000) - 1000,
                       "data": {"user_id": "u", "duration_seconds": 30}}).encode()
    answer = subprocess.run(["curl", "-s", "-H", f"Authorization: Bearer {TOKEN}", "--data-binary", "@-", f"http://127.0.0.1:{ingest_port}/v1/events"],
                            input=sent, capture_output=True, check=True)
    assert json.loads(answer.stdout)["accepted"] == 1
    wait_for(lambda: get_json(f"{base}/customers/through-ingest/health")[0] == 200, timeout=60, message="the ingested event scored", explain=worker.logs)

    metrics_port = free_port()
    endpoints = [{"name": "crm", "kind": "webhook", "url": f"http://127.0.0.1:{free_port()}/hook", "secret": "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY",
                  "allow_insecure_http": True, "allow_private_network": True}]
    deliver = Container(image, ["deliver"], {**env, "HEALTHSCORE_DELIVERY__METRICS_PORT": str(metrics_port), "HEALTHSCORE_DELIVERY__ENDPOINTS": json.dumps(endpoints)},
                        tmp_path / "deliver-data")
    containers.append(deliver)
    wait_for(lambda: "Delivering" in deliver.logs(), timeout=90, message="deliver in the image", explain=deliver.logs)
    wait_for(lambda: get_json(f"http://127.0.0.1:{metrics_port}/metrics")[0] == 200, timeout=30, message="deliver's metrics", explain=deliver.logs)


def test_the_locked_down_container_cannot_write_outside_its_volumes(image: str, tmp_path: Path) -> None:
    """The check above holds only if the lock-down bites: here a write to the root filesystem fails."""
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 10001, 10001)
    run = [*PODMAN, "run", "--rm", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
           "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--volume", f"{data}:/var/lib/healthscore", "--entrypoint", "sh", image, "-c"]
    assert subprocess.run([*run, "touch /var/lib/healthscore/ok && touch /tmp/ok"], capture_output=True).returncode == 0
    outside = subprocess.run([*run, "touch /etc/healthscore/nope"], capture_output=True, text=True)
    assert outside.returncode != 0 and "Read-only file system" in outside.stderr
    assert subprocess.run([*run, "id -u"], capture_output=True, text=True).stdout.strip() == "10001"
