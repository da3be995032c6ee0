"""Real services for integration tests: the project's own Kafka (KRaft) and Redis.

The services are started once per session (idempotently: already running ones
are reused); a test that kills a broker starts one of its own (:class:`PrivateBroker`). Every test session uses its own topic names, consumer group and
Redis key prefix, so runs never see each other's data.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from stream.services.local import ServicePaths, default_paths, start_kafka, start_redis
from stream.settings import PROJECT_ROOT, KafkaSettings, Settings, isolated_environment, load_settings
from stream.kafka.topics import delete_topics_containing, ensure_topics

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
    if getattr(request, "param", None) == "python":
        namespace.env["HEALTHSCORE_NATIVE_KERNEL"] = "false"
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


def wait_for(predicate, timeout: float = 30, interval: float = 0.5, message: str = "condition", explain=None):
    """Poll until ``predicate`` is truthy. ``explain`` (a callable returning text, such as
    a worker's log tail) is added to the failure, so a flake in CI can be diagnosed."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    detail = f"\n{explain()}" if explain is not None else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {message}; last value: {last!r}{detail}")


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
