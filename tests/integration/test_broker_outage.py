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
from tests.integration.conftest import WorkerProcess, free_port, make_namespace

OUTAGE_SECONDS = 15


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[tuple[ServicePaths, int]]:
    paths = ServicePaths(tmp_path / "services")
    port, controller = free_port(), free_port()
    start_kafka(paths, port=port, controller_port=controller, echo=lambda _: None)
    yield paths, port
    stop_broker(paths)


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


def test_a_broker_outage_is_logged_once_and_summarised_not_per_attempt(services: None, tmp_path: Path, private_broker: tuple[ServicePaths, int]) -> None:
    """Without the summary, a 25-second outage wrote 4,235 WARNING/ERROR lines: a few kinds of
    aiokafka error, each several times a second. Here: each kind once, then once per
    log_repeat_interval_seconds (5) with the count held back."""
    paths, port = private_broker
    shared = make_namespace(tmp_path)  # names, Redis prefix and web port of its own; topics on the private broker
    env = {**shared.env, "HEALTHSCORE_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}", "HEALTHSCORE_LOG_REPEAT_INTERVAL_SECONDS": "5"}
    namespace = dataclasses.replace(shared, env=env, settings=shared.settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{port}"}))
    asyncio.run(ensure_topics(namespace.settings, echo=lambda _: None))
    worker = WorkerProcess(namespace, tmp_path / "worker.log")
    worker.start()
    try:
        before = worker.log_path.stat().st_size
        stop_broker(paths, signal.SIGKILL)
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
