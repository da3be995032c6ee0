"""End to end through the real broker and Redis, with kcat as the outside client."""

from __future__ import annotations

import json
import struct
import subprocess
import urllib.error
import urllib.request
import zlib

import pytest
import redis

from stream.services.local import default_paths
from tests.integration.conftest import (
    Namespace,
    WorkerProcess,
    event,
    kcat_consume,
    kcat_produce,
    metric_value,
    wait_for,
)

pytestmark = pytest.mark.integration

def test_events_from_kcat_become_scores_dead_letters_and_metrics(namespace: Namespace, worker: WorkerProcess) -> None:
    purchases, usage, payments = namespace.topic("purchases"), namespace.topic("usage"), namespace.topic("payments")
    customers = ["acme", "globex", "initech"]
    kcat_produce(
        usage,
        [(c, event(f"{c}-s{i}", "usage.session", c, 48 - i, {"user_id": f"{c}-u{i % 2}", "duration_seconds": 600})) for c in customers for i in range(3)],
    )
    kcat_produce(
        purchases,
        [
            ("acme", event("acme-p1", "purchase.completed", "acme", 10, {"order_id": "o1", "amount": 120.0, "currency": "EUR"})),
            # The same event delivered twice: applied once.
            ("acme", event("acme-p1", "purchase.completed", "acme", 10, {"order_id": "o1", "amount": 120.0, "currency": "EUR"})),
            ("globex", b"{this is not json"),
        ],
    )
    kcat_produce(
        payments,
        [("initech", event("initech-f1", "payment.failed", "initech", 1, {"invoice_id": "i1", "amount": 99.0, "reason": "card_declined"}))],
    )

    url = worker.metrics_url

    def all_processed() -> bool:
        applied = sum(metric_value(url, "healthscore_events_total", topic=t, outcome="applied") for t in (purchases, usage, payments))
        return applied == 11 and metric_value(url, "healthscore_events_total", topic=purchases, outcome="duplicate") == 1

    wait_for(all_processed, timeout=60, message="every event to be processed")
    latest: dict[str, dict] = {}
    for line in kcat_consume(namespace.topic("health")):
        key, _, value = line.partition("\t")
        latest[key] = json.loads(value)
    assert set(latest) == set(customers)
    for customer, message in latest.items():
        assert message["customer_id"] == customer
        assert 0 <= message["score"] <= 100
        assert message["band"] in {"healthy", "at_risk", "critical"}
        assert 0 <= message["churn_risk"] <= 1
        assert message["model_version"]
        for component in message["components"].values():
            assert set(component) == {"score", "weight", "contribution"}
    assert "payments" in latest["initech"]["components"]
    assert latest["initech"]["components"]["payments"]["score"] < 100

    dead = wait_for(lambda: kcat_consume(f"{purchases}.dlq", "%k\t%s\t%h\n"), timeout=30, message="the dead letter")
    assert len(dead) == 1
    key, value, headers = dead[0].split("\t")
    assert key == "globex" and value == "{this is not json"
    assert "dlq.error=not_json" in headers and f"dlq.topic={purchases}" in headers and "dlq.offset=" in headers
    assert "dlq.reason=value is not JSON" in headers

    # acme's purchase: two deliveries, one applied, one duplicate; no second score for it.
    acme_triggers = [json.loads(line.partition("\t")[2])["trigger_event_id"] for line in kcat_consume(namespace.topic("health")) if line.startswith("acme\t")]
    assert acme_triggers.count("acme-p1") == 1  # its first purchase adds a component: one score, once
    assert metric_value(url, "healthscore_events_total", topic=purchases, outcome="applied") == 1
    assert metric_value(url, "healthscore_events_total", topic=usage, outcome="applied") == 9
    assert metric_value(url, "healthscore_events_total", topic=purchases, outcome="dead_lettered") == 1
    assert metric_value(url, "healthscore_dead_letters_total", topic=purchases, reason="not_json") == 1
    assert metric_value(url, "healthscore_scores_published_total") == len(kcat_consume(namespace.topic("health")))
    assert metric_value(url, "healthscore_processing_lag_seconds_count") >= 3

    client = redis.Redis.from_url(namespace.settings.redis_url, decode_responses=True)
    prefix = namespace.settings.redis_key_prefix

    def redis_matches() -> bool:
        return all(
            float(client.hget(f"{prefix}:customer:{c}", "score") or -1) == latest[c]["score"] for c in customers
        )

    wait_for(redis_matches, timeout=20, message="Redis to hold the latest scores")
    riskiest = client.zrange(f"{prefix}:scores", 0, 0)
    assert riskiest == [min(customers, key=lambda c: latest[c]["score"])]


def kcat_raw(topic: str, payload: bytes, *options: str) -> None:
    """Produces the lines of ``payload`` as they are (key and value split at a tab)."""
    subprocess.run(["kcat", "-P", "-b", "127.0.0.1:9092", "-t", topic, "-K", "\t", *options], input=payload, check=True, timeout=30)


@pytest.mark.parametrize("worker", ["kernel", "python"], indirect=True)
def test_tombstones_bytes_that_are_not_utf8_and_empty_keys_in_both_paths(namespace: Namespace, worker: WorkerProcess) -> None:
    """A tombstone and a value that is not UTF-8 are dead-lettered with their own reason, not as
    processing errors with a traceback; an empty key is read as no key: the event is rekeyed."""
    usage = namespace.topic("usage")
    session = event("e-empty-key", "usage.session", "hooli", 1, {"user_id": "u", "duration_seconds": 60})
    kcat_raw(usage, b"acme\t\n", "-Z")  # -Z: an empty value goes out as null (a tombstone)
    kcat_raw(usage, b"acme\t" + event("e-bad", "usage.session", "acme", 1, {"user_id": "u", "duration_seconds": 60}).replace(b'"u"', b'"\xff"') + b"\n")
    kcat_raw(usage, b"\t" + session + b"\n")  # an empty key
    url = f"http://127.0.0.1:{namespace.settings.web_port}/metrics"
    wait_for(
        lambda: metric_value(url, "healthscore_events_total", topic=usage, outcome="applied") == 1
        and metric_value(url, "healthscore_events_total", topic=usage, outcome="dead_lettered") == 2,
        timeout=60,
        message="the rekeyed event applied and two dead letters",
    )
    assert metric_value(url, "healthscore_events_total", topic=usage, outcome="rekeyed") == 1
    assert metric_value(url, "healthscore_dead_letters_total", topic=usage, reason="tombstone") == 1
    assert metric_value(url, "healthscore_dead_letters_total", topic=usage, reason="invalid_utf8") == 1
    assert metric_value(url, "healthscore_dead_letters_total", topic=usage, reason="processing_error") == 0
    headers = sorted(line for line in kcat_consume(f"{usage}.dlq", "%h\n"))
    assert [h for h in headers if "dlq.error=tombstone" in h] and [h for h in headers if "dlq.error=invalid_utf8" in h]
    assert "Traceback" not in worker.log_path.read_text()
    scored = [line for line in kcat_consume(namespace.topic("health")) if line.startswith("hooli\t")]
    assert scored


def test_redis_down_does_not_stop_the_kafka_output(services: None, tmp_path) -> None:
    from tests.integration.conftest import free_port, make_namespace

    namespace = make_namespace(tmp_path)
    namespace.env["HEALTHSCORE_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    worker = WorkerProcess(namespace, tmp_path / "worker.log")
    worker.start()
    try:
        kcat_produce(
            namespace.topic("usage"),
            [(c, event(f"{c}-1", "usage.session", c, 1, {"user_id": "u", "duration_seconds": 60})) for c in ("alpha", "beta")],
        )
        scored = wait_for(lambda: {line.partition("\t")[0] for line in kcat_consume(namespace.topic("health"))} >= {"alpha", "beta"}, message="scores on Kafka")
        assert scored
        wait_for(lambda: metric_value(worker.metrics_url, "healthscore_redis_write_failures_total") >= 1, message="Redis failures counted")
        port = namespace.settings.web_port
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/customers/at-risk", timeout=5)
            raise AssertionError("expected 503")
        except urllib.error.HTTPError as error:
            assert error.code == 503 and "Redis is unavailable" in json.loads(error.read())["error"]
        assert worker.process.poll() is None
    finally:
        worker.stop()


#: Kafka's codec numbers in a record batch's attributes (the low three bits).
CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


def codecs_on_disk(topic: str) -> set[str]:
    """The codec of every record batch the broker stored for the topic, read from its log segments
    (offset 21 of a batch: base offset, length, leader epoch, magic, CRC, then the attributes)."""
    partitions = sorted((default_paths().kafka / "data").glob(f"{topic}-[0-9]*"))
    assert partitions, f"no partition directory of {topic} under the project's broker data"
    found: set[str] = set()
    for directory in partitions:
        for segment in directory.glob("*.log"):
            data = segment.read_bytes()
            position = 0
            while position + 23 <= len(data):
                (length,) = struct.unpack_from(">i", data, position + 8)
                (attributes,) = struct.unpack_from(">h", data, position + 21)
                found.add(CODECS[attributes & 0x7])
                position += 12 + length
    return found


def test_compressed_inputs_are_read_and_the_outputs_leave_with_the_configured_codec(namespace: Namespace, tmp_path) -> None:
    """Producers often compress (lz4, snappy and zstd are common defaults): the worker reads every
    codec Kafka has, and its own batches use producer_compression."""
    namespace.env["HEALTHSCORE_PRODUCER_COMPRESSION"] = "zstd"
    worker = WorkerProcess(namespace, tmp_path / "worker.log")
    worker.start()
    # One input topic per codec, each with an event of its kind for a customer of its own.
    sent = {
        "gzip": ("usage", "usage.session", {"user_id": "u1", "duration_seconds": 60}),
        "snappy": ("purchases", "purchase.completed", {"order_id": "o1", "amount": 10.0, "currency": "EUR"}),
        "lz4": ("payments", "payment.failed", {"invoice_id": "i1", "amount": 9.0, "reason": "card_declined"}),
        "zstd": ("tickets", "ticket.opened", {"ticket_id": "t1", "priority": "high"}),
    }
    try:
        for codec, (kind, event_type, data) in sent.items():
            customer = f"{codec}-customer"
            kcat_produce(namespace.topic(kind), [(customer, event(f"{codec}-1", event_type, customer, 2, data))], compression=codec)

        def scored() -> set[str]:
            return {line.partition("\t")[0] for line in kcat_consume(namespace.topic("health"))}

        wait_for(lambda: scored() == {f"{codec}-customer" for codec in sent}, timeout=60, message="a score for each compressed input", explain=worker.log_tail)
    finally:
        worker.stop()
    for codec, (kind, _, _) in sent.items():
        assert codecs_on_disk(namespace.topic(kind)) == {codec}  # as the test means them to be
    assert codecs_on_disk(namespace.topic("health")) == {"zstd"}
    assert codecs_on_disk(f"{namespace.settings.app_id}-customer-state-changelog") == {"zstd"}


@pytest.mark.parametrize("mode", ["forward", "process_in_place"])
def test_records_a_producer_put_on_the_wrong_partition_are_detected(namespace: Namespace, tmp_path, mode: str) -> None:
    """kcat with librdkafka's CRC32 partitioner (partitioner=consistent) puts some keys on
    partitions the Java partitioner (murmur2) would not: those records are counted, and
    forwarded to the right partition (the default) or applied where they are."""
    from aiokafka.partitioner import murmur2

    namespace.env["HEALTHSCORE_MISROUTED_EVENTS"] = mode
    worker = WorkerProcess(namespace, tmp_path / "worker.log")
    worker.start()
    try:
        partitions = namespace.settings.partitions
        customers = [f"m{index:03d}" for index in range(40)]
        wrong = [c for c in customers if zlib.crc32(c.encode()) % partitions != (murmur2(c.encode()) & 0x7FFFFFFF) % partitions]
        assert len(wrong) >= 10
        usage = namespace.topic("usage")
        lines = b"".join(c.encode() + b"\t" + event(f"{c}-s", "usage.session", c, 1, {"user_id": "u", "duration_seconds": 60}) + b"\n" for c in customers)
        kcat_raw(usage, lines, "-X", "partitioner=consistent")
        url = worker.metrics_url
        wait_for(
            lambda: metric_value(url, "healthscore_events_total", topic=usage, outcome="applied") == len(customers),
            timeout=60,
            message="every event applied once",
        )
        action = "forwarded" if mode == "forward" else "processed_in_place"
        assert metric_value(url, "healthscore_misrouted_events_total", topic=usage, action=action) == len(wrong)
        assert metric_value(url, "healthscore_events_total", topic=usage, outcome="misrouted") == (len(wrong) if mode == "forward" else 0)
        assert "partitioner=murmur2_random" in worker.log_path.read_text()
        scored = {line.partition("\t")[0] for line in kcat_consume(namespace.topic("health"))}
        assert scored >= set(customers)
    finally:
        worker.stop()
