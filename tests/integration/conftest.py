"""Real services for integration tests: the project's own Kafka (KRaft) and Redis.

The services are started once per session (idempotently: already running ones
are reused); a test that kills a broker starts one of its own (:class:`PrivateBroker`). Every test session uses its own topic names, consumer group and
Redis key prefix, so runs never see each other's data.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import msgspec
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from stream.services.local import ServicePaths, default_paths, start_kafka, start_redis
from stream.settings import PROJECT_ROOT, KafkaSettings, Settings, isolated_environment, load_settings
from stream.kafka.topics import delete_topics_containing, ensure_topics
from tests.helpers import event, event_at, get_json, metric_sum, metric_value, run_cli, usage_event, wait_for  # noqa: F401 (shared)

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: The namespaces this test run made, whose topics it deletes at its end.
NAMESPACE_TAGS: list[str] = []


@pytest.fixture(scope="session")
def services() -> Iterator[None]:
    missing = [tool for tool in ("kcat", "redis-server", "java") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"integration tests need {missing}: run scripts/setup.sh", pytrace=False)
    paths = default_paths()
    start_redis(paths)
    start_kafka(paths)
    yield
    # A suite makes about 50 namespaces of 14 topics; left on a developer's broker they add up
    # to thousands of partitions, whose upkeep then shows in the benchmarks run against it.
    try:
        asyncio.run(delete_topics_containing(KafkaSettings(), NAMESPACE_TAGS))
    except Exception as error:  # the tests have passed or failed already; say why and go on
        warnings.warn(f"could not delete the test topics: {error!r}", stacklevel=1)


@dataclass
class Namespace:
    """One isolated set of names: topics, app id, Redis prefix, web port."""

    tag: str
    env: dict[str, str]
    settings: Settings

    def topic(self, kind: str) -> str:
        return getattr(self.settings.topics, kind)


def make_namespace(tmp_path: Path, partitions: int = 4, extra_env: dict[str, str] | None = None, create_topics: bool = True) -> Namespace:
    """A namespace of its own; ``extra_env`` on top (another broker's settings, say), and its
    topics created here unless the test makes them itself."""
    tag = f"t{uuid.uuid4().hex[:8]}"
    NAMESPACE_TAGS.append(tag)
    env = {**isolated_environment(tag, partitions, free_port(), tmp_path / "worker-data"), **(extra_env or {})}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        settings = load_settings()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if create_topics:
        asyncio.run(ensure_topics(settings, echo=lambda _: None))
    return Namespace(tag, env, settings)


class WorkerProcess:
    """``healthscore worker`` as a real subprocess, as an operator runs it."""

    def __init__(self, namespace: Namespace, log_path: Path) -> None:
        self.namespace = namespace
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60, until: bytes = b"[^Worker]: Ready") -> None:
        """Starts the worker and waits until its log says ``until`` (by default: ready)."""
        env = {**os.environ, **self.namespace.env}
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "worker", "--loglevel", "info"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.log_tail()}")
            if until in self.log_path.read_bytes()[offset:]:
                return
            time.sleep(0.2)
        raise AssertionError(f"worker log without {until!r} within {timeout} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def what_it_waits_on(self, settle_seconds: float = 3.0) -> str:
        """Where each of the worker's threads and asyncio tasks is, one line each: for a test
        that times out on a worker that looks alive but does nothing. Uses mode's own
        SIGUSR1 handler, which writes every thread's and task's stack to the worker's log."""
        if self.process is None or self.process.poll() is not None:
            return "(worker not running)"
        start = self.log_path.stat().st_size
        self.process.send_signal(signal.SIGUSR1)
        deadline, size = time.monotonic() + settle_seconds, start
        while time.monotonic() < deadline:
            time.sleep(0.5)
            grown = self.log_path.stat().st_size
            if grown > start and grown == size:
                break
            size = grown
        with open(self.log_path, "rb") as log:
            log.seek(start)
            return summarize_stack_dump(log.read().decode(errors="replace"))

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    @property
    def metrics_url(self) -> str:
        port = self.namespace.env.get("HEALTHSCORE_WEB_PORT", self.namespace.settings.web_port)
        return f"http://127.0.0.1:{port}/metrics"


_FRAME = re.compile(r'^  File "(?P<path>[^"]+)", line (?P<line>\d+), in (?P<function>\S+)', re.MULTILINE)


def _short_path(path: str) -> str:
    """A frame's file relative to the project, site-packages or the standard library."""
    for anchor in ("site-packages/", f"python{sys.version_info.major}.{sys.version_info.minor}/"):
        if anchor in path:
            return path.split(anchor)[-1]
    return path.removeprefix(str(PROJECT_ROOT) + "/")


def summarize_stack_dump(dump: str) -> str:
    """mode's dump (thread stacks, then task stacks, each with its local variables) as one
    line per thread or task, innermost frame first."""

    def frames(block: str) -> str:
        found = [
            f"{match['function']} ({_short_path(match['path'])}:{match['line']})"
            for match in _FRAME.finditer(block)
        ]
        return " <- ".join(reversed(found[-6:])) or "(no frames)"

    lines = []
    for thread in re.split(r"^THREAD ", dump, flags=re.MULTILINE)[1:]:
        name, _, rest = thread.partition("\n")
        stack, _, tasks = rest.partition("\nTASKS\n")
        lines.append(f"thread {name}: {frames(stack.split('LOCAL VARIABLES')[0])}")
        for task in tasks.split("Stack for <Task ")[1:]:
            lines.append(f"  task: {frames(task)}")
    return "\n".join(lines) if lines else f"(no stack dump in the log; it printed {len(dump)} characters)"


@pytest.fixture
def namespace(services: None, tmp_path: Path) -> Namespace:
    return make_namespace(tmp_path)


@pytest.fixture
def worker(namespace: Namespace, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[WorkerProcess]:
    """A started worker; parametrized indirectly with "python", it runs the Python model
    instead of the Rust kernel (the default where the kernel is built)."""
    configure_model(namespace, getattr(request, "param", None))
    process = WorkerProcess(namespace, tmp_path / "worker.log")
    process.start()
    yield process
    process.stop()


def configure_model(namespace: Namespace, mode: str | None) -> None:
    """The worker's model: "python" (the Python model instead of the Rust kernel), "calibrated"
    (the churn model below) or the default."""
    if mode == "python":
        namespace.env["HEALTHSCORE_NATIVE_KERNEL"] = "false"
    if mode == "calibrated":
        namespace.env["HEALTHSCORE_SCORING__CHURN_RISK"] = json.dumps(CALIBRATED)


#: A churn model as `healthscore calibrate` writes one ([scoring.churn_risk]), for the worker fixture's "calibrated".
CALIBRATED = {
    "horizon_days": 30.0, "intercept": 14.1,
    "coefficients": {"score": -0.99, "usage": -1.03, "purchases": -0.6, "support": -1.77, "sentiment": -4.62, "payments": 2.14,
                     "confidence": -3.45, "log_days_silent": 0.68, "log_active_days": -3.09},
}


@pytest.fixture
def worker_without_budget(namespace: Namespace, tmp_path: Path) -> Iterator[WorkerProcess]:
    """A started worker without the per-customer alert budget (one alert in any 30 days by
    default), which holds back all but the first of the alerts a customer's events open at
    once: for tests of what each rule raises. Its fleet export (gauges, customers' KPIs) runs every second."""
    namespace.env["HEALTHSCORE_ALERTS__MAX_ALERTS_PER_CUSTOMER_30D"] = "0"
    namespace.env["HEALTHSCORE_FLEET_METRICS_INTERVAL_SECONDS"] = "1"
    process = WorkerProcess(namespace, tmp_path / "worker.log")
    process.start()
    yield process
    process.stop()


def kcat_produce(topic: str, lines: list[tuple[str | None, bytes]], compression: str = "none") -> None:
    """Produces with kcat: one message per (key, value); key None sends no key."""
    keyed = [(k, v) for k, v in lines if k is not None]
    keyless = [v for k, v in lines if k is None]
    if keyed:
        payload = b"".join(k.encode() + b"\t" + v + b"\n" for k, v in keyed)
        subprocess.run(
            ["kcat", "-P", "-b", "127.0.0.1:9092", "-t", topic, "-K", "\t", "-X", f"compression.codec={compression}",
             "-X", "enable.idempotence=true", "-X", "partitioner=murmur2_random"],
            input=payload,
            check=True,
            timeout=30,
        )
    if keyless:
        subprocess.run(
            ["kcat", "-P", "-b", "127.0.0.1:9092", "-t", topic], input=b"\n".join(keyless) + b"\n", check=True, timeout=30
        )


def healthscore(namespace: Namespace, *args: str) -> subprocess.CompletedProcess:
    """Runs a ``healthscore`` subcommand in the namespace's configuration."""
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, **namespace.env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def kcat_consume(topic: str, fmt: str = "%k\t%s\n", bootstrap: str = "127.0.0.1:9092") -> list[str]:
    """Everything currently on a topic, read with kcat (-e: stop at the end)."""
    result = subprocess.run(
        ["kcat", "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-q", "-f", fmt],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return [line for line in result.stdout.decode().split("\n") if line]


@dataclass(frozen=True)
class PrivateBroker:
    """A broker of a test's own: its port, controller port and data directory."""

    paths: ServicePaths
    port: int
    controller_port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        start_kafka(self.paths, port=self.port, controller_port=self.controller_port, echo=lambda _: None)

    def kill(self) -> None:
        stop_broker(self.paths, signal.SIGKILL)

    def namespace(self, tmp_path: Path) -> Namespace:
        """A namespace of its own (names, Redis prefix, web port) with its topics on this broker."""
        shared = make_namespace(tmp_path)
        env = {**shared.env, "HEALTHSCORE_KAFKA_BOOTSTRAP": self.bootstrap}
        namespace = dataclasses.replace(shared, env=env, settings=shared.settings.model_copy(update={"kafka_bootstrap": self.bootstrap, "kafka": KafkaSettings(bootstrap=self.bootstrap)}))
        asyncio.run(ensure_topics(namespace.settings, echo=lambda _: None))
        return namespace


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    broker = PrivateBroker(ServicePaths(tmp_path / "services"), free_port(), free_port())
    broker.start()
    yield broker
    stop_broker(broker.paths, signal.SIGKILL)  # its data goes with the test


def stop_broker(paths: ServicePaths, sig: int = signal.SIGTERM) -> None:
    pidfile = paths.kafka / "kafka.pid"
    if not pidfile.exists():
        return
    pid = int(pidfile.read_text())
    try:
        os.kill(pid, sig)
        for _ in range(300):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break  # a broker this process started: reaped, not left a zombie
            except ChildProcessError:
                pass  # started by another process
            os.kill(pid, 0)
            time.sleep(0.1)
    except ProcessLookupError:
        pass
    pidfile.unlink(missing_ok=True)


@dataclass(frozen=True)
class Certificates:
    """A test CA, a server certificate it signed for 127.0.0.1, and a CA that signed nothing
    here (the "wrong CA"), made with openssl as an operator would."""

    ca: Path
    server_certificate: Path
    server_key: Path  # PKCS#8, unencrypted
    keystore: Path  # key and certificate in one PEM file (Kafka's PEM keystore)
    other_ca: Path


def make_certificates(directory: Path) -> Certificates:
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str | Path) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)

    for name in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=healthscore test {name}",
                "-keyout", directory / f"{name}.key", "-out", directory / f"{name}.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", directory / "server.key", "-out", directory / "server.csr")
    extensions = directory / "server.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", directory / "server.csr", "-CA", directory / "ca.pem", "-CAkey", directory / "ca.key",
            "-CAcreateserial", "-days", "2", "-out", directory / "server.pem", "-extfile", extensions)
    keystore = directory / "server-keystore.pem"
    keystore.write_text((directory / "server.key").read_text() + (directory / "server.pem").read_text())
    return Certificates(directory / "ca.pem", directory / "server.pem", directory / "server.key", keystore, directory / "other-ca.pem")


# Kafka facts tests wait on, and what several modules share.
FAULT_INJECTION = Path(__file__).parent / "fault_injection"


@contextlib.asynccontextmanager
async def assigned_outside_the_group(group: str, topic: str, partitions: int, bootstrap: str = "127.0.0.1:9092"):
    """A consumer with ``group``'s id that is assigned every partition of ``topic`` without
    joining the group: it reads and commits the group's offsets. Yields it and the partitions."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions_of_topic = [TopicPartition(topic, partition) for partition in range(partitions)]
        consumer.assign(partitions_of_topic)
        yield consumer, partitions_of_topic
    finally:
        await consumer.stop()


def committed_and_end_offsets(
    group: str, topic: str, partitions: int, bootstrap: str = "127.0.0.1:9092"
) -> tuple[list[int | None], list[int]]:
    """Per partition of ``topic``: the group's committed offset (None: nothing committed), and the end offset."""

    async def read() -> tuple[list[int | None], list[int]]:
        async with assigned_outside_the_group(group, topic, partitions, bootstrap) as (consumer, partitions_of_topic):
            ends = await consumer.end_offsets(partitions_of_topic)
            return [await consumer.committed(tp) for tp in partitions_of_topic], [ends[tp] for tp in partitions_of_topic]

    return asyncio.run(read())


def wait_until_committed(namespace: Namespace, topics: list[str] | None = None, timeout: float = 120, explain=None) -> None:
    """Every record of the inputs (or ``topics``) committed by the namespace's group. A worker
    sends its outputs before it commits its inputs, so they are all on their topics then."""
    settings = namespace.settings

    def done() -> bool:
        for topic in topics or list(settings.topics.inputs()):
            committed, ends = committed_and_end_offsets(settings.app_id, topic, settings.partitions, settings.kafka_bootstrap)
            if [offset or 0 for offset in committed] != ends:
                return False
        return True

    wait_for(done, timeout=timeout, interval=0.5, message="every input record committed", explain=explain)


def wait_until_published(namespace: Namespace, worker: "WorkerProcess", timeout: float = 60) -> None:
    """Every score and alert the worker counted is on its topic (one worker's lifetime): the
    topics' message counts equal its counters."""
    url = worker.metrics_url

    def done() -> bool:
        scores = len(kcat_consume(namespace.topic("health")))
        alerts = len(kcat_consume(namespace.topic("alerts")))
        return scores == metric_value(url, "healthscore_scores_published_total") and alerts == metric_sum(url, "healthscore_alerts_raised_total")

    wait_for(done, timeout=timeout, interval=0.3, message="the worker's scores and alerts on their topics", explain=worker.log_tail)


async def produce_file(namespace: Namespace, path: Path) -> int:
    """Every event of a history file to its input topic, keyed by customer (the Java partitioner)."""
    from aiokafka import AIOKafkaProducer

    from scoring.contract import EVENT_TYPES

    names = {kind: name for name, kind in namespace.settings.topics.inputs().items()}
    producer = AIOKafkaProducer(bootstrap_servers=namespace.settings.kafka_bootstrap, acks="all", enable_idempotence=True, linger_ms=10)
    await producer.start()
    count = 0
    try:
        for line in path.read_bytes().splitlines():
            value = msgspec.json.decode(line)
            topic = names[EVENT_TYPES[value["type"]][0]]
            await producer.send(topic, line, key=value["customer_id"].encode())
            count += 1
        await producer.flush()
    finally:
        await producer.stop()
    return count



# Delivery: a verifying webhook receiver, alerts, and the `deliver` process.
SECRET = "whsec_" + base64.b64encode(b"integration-secret-24byt").decode()
#: The receivers listen on http://127.0.0.1: both must be allowed explicitly.
LOCAL = {"allow_insecure_http": True, "allow_private_network": True}


class _QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class _ThreadedServer:
    """An HTTP server on 127.0.0.1:``port`` in a daemon thread, until ``stop``."""

    def _serve(self, port: int, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Receiver(_ThreadedServer):
    """A webhook receiver in a thread: verifies each request's signature with ``secret`` (the
    endpoints' SECRET by default), answers 200 after ``delay``, or 401 to a bad signature."""

    def __init__(self, port: int, delay: float = 0.0, secret: str | None = None) -> None:
        self.verified: list[str] = []  # webhook-id of each verified request, in arrival order
        self.refused = 0
        receiver = self
        expected = Webhook(secret or SECRET)

        class Handler(_QuietHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["content-length"]))
                try:
                    expected.verify(body, {key.lower(): value for key, value in self.headers.items()})
                except WebhookVerificationError:  # a real receiver refuses it
                    receiver.refused += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                receiver.verified.append(self.headers["webhook-id"])
                time.sleep(delay)
                self.send_response(200)
                self.end_headers()

        self._serve(port, Handler)


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




class SlackReceiver(_ThreadedServer):
    """A Slack incoming-webhook stand-in in a thread: keeps each JSON body, answers 200 "ok"."""

    def __init__(self, port: int) -> None:
        self.bodies: list[dict] = []
        receiver = self

        class Handler(_QuietHandler):
            def do_POST(self) -> None:  # noqa: N802
                receiver.bodies.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

        self._serve(port, Handler)
