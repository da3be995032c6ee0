"""A broker outage is logged once, with a periodic summary, not once per connection attempt.

The test starts a broker of its own (its own port and data directory: the shared one serves
the other tests), runs a worker against it, and kills the broker with SIGKILL for 15 s."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import time
from pathlib import Path
from typing import Iterator

import pytest

from stream.kafka.topics import ensure_topics
from stream.services.local import ServicePaths, start_kafka
from tests.integration.conftest import Namespace, WorkerProcess, free_port, make_namespace

OUTAGE_SECONDS = 15


@dataclasses.dataclass(frozen=True)
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
        namespace = dataclasses.replace(shared, env=env, settings=shared.settings.model_copy(update={"kafka_bootstrap": self.bootstrap}))
        asyncio.run(ensure_topics(namespace.settings, echo=lambda _: None))
        return namespace


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    broker = PrivateBroker(ServicePaths(tmp_path / "services"), free_port(), free_port())
    broker.start()
    yield broker
    stop_broker(broker.paths)


def stop_broker(paths: ServicePaths, sig: int = signal.SIGTERM) -> None:
    pidfile = paths.kafka / "kafka.pid"
    if not pidfile.exists():
        return
    pid = int(pidfile.read_text())
    try:
        os.kill(pid, sig)
        for _ in range(300):
            os.kill(pid, 0)
            time.sleep(0.1)
    except ProcessLookupError:
        pass
    pidfile.unlink(missing_ok=True)


def test_a_broker_outage_is_logged_once_and_summarised_not_per_attempt(services: None, tmp_path: Path, private_broker: PrivateBroker) -> None:
    """Without the summary, a 25-second outage wrote 4,235 WARNING/ERROR lines: a few kinds of
    aiokafka error, each several times a second. Here: each kind once, then once per
    log_repeat_interval_seconds (5) with the count held back."""
    namespace = private_broker.namespace(tmp_path)
    namespace.env["HEALTHSCORE_LOG_REPEAT_INTERVAL_SECONDS"] = "5"
    worker = WorkerProcess(namespace, tmp_path / "worker.log")
    worker.start()
    try:
        before = worker.log_path.stat().st_size
        private_broker.kill()
        time.sleep(OUTAGE_SECONDS)
        during = worker.log_path.read_bytes()[before:].decode(errors="replace")
    finally:
        worker.kill()
    lines = [line for line in during.splitlines() if re.search(r"\b(WARNING|ERROR)\b", line)]
    kinds = {re.sub(r"\d+", "N", line.split("] ", 3)[-1].split(" (and ")[0]) for line in lines}
    summaries = [line for line in lines if re.search(r"\(and \d+ more like it in the last \d+ s\)", line)]
    print(f"{len(lines)} WARNING/ERROR lines in a {OUTAGE_SECONDS}-second outage, {len(kinds)} kinds")
    assert summaries, "\n".join(lines)
    # Each kind said once, then at most once per 5 s of the outage.
    assert len(lines) <= len(kinds) * (1 + OUTAGE_SECONDS // 5 + 1), "\n".join(lines)
