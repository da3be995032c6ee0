"""Repeated Kafka client errors: said once, then once per interval with a count (stream/worker/quiet_outages.py)."""

from __future__ import annotations

import logging

from stream.worker.quiet_outages import OutageLogFilter, quiet_kafka_client_outages


def record(message: str, *args: object, level: int = logging.ERROR, name: str = "aiokafka") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, args, None)


def test_each_kind_is_said_once_then_once_per_interval_with_what_was_held_back() -> None:
    now = [0.0]
    quiet = OutageLogFilter(interval=30.0, clock=lambda: now[0])
    passed = []
    for tenth in range(650):  # 65 s of an outage, two kinds of error ten times a second
        now[0] = tenth / 10
        for message in ("Unable connect to node with id %s: %s", "Unable to update metadata from %s"):
            entry = record(message, 1, "refused") if "%s: %s" in message else record(message, [1])
            if quiet.filter(entry):
                passed.append((now[0], entry.getMessage()))
    assert [at for at, _ in passed] == [0.0, 0.0, 30.0, 30.0, 60.0, 60.0]
    assert passed[0][1] == "Unable connect to node with id 1: refused"
    assert passed[2][1] == "Unable connect to node with id 1: refused (and 299 more like it in the last 30 s)"


def test_a_new_outage_is_said_at_once_and_info_passes_untouched() -> None:
    now = [0.0]
    quiet = OutageLogFilter(interval=30.0, clock=lambda: now[0])
    assert quiet.filter(record("Unable to update metadata from %s", [1]))
    now[0] = 5.0
    assert not quiet.filter(record("Unable to update metadata from %s", [1]))
    now[0] = 100.0  # quiet for longer than the interval: a new outage
    assert quiet.filter(record("Unable to update metadata from %s", [1]))
    assert all(quiet.filter(record("Fetching metadata", level=logging.INFO)) for _ in range(10))


def test_the_filter_sits_on_every_kafka_client_logger() -> None:
    quiet = quiet_kafka_client_outages(interval=30.0)
    try:
        for name in ("aiokafka", "aiokafka.conn", "aiokafka.consumer.fetcher", "aiokafka.consumer.group_coordinator", "aiokafka.producer.sender"):
            assert quiet in logging.getLogger(name).filters, name
    finally:
        for name in list(logging.root.manager.loggerDict):
            if name.startswith("aiokafka"):
                logging.getLogger(name).removeFilter(quiet)
