"""No single event can crash the worker or corrupt a record (issue: hardening), on a real
broker: events past the contract's bounds are dead-lettered with their reason by both the
Python model and the Rust kernel, the record keeps exactly the valid events, and the same
partition goes on being scored."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from scoring.state import decode_state
from stream.kafka.topics import changelog_topic
from tests.integration.conftest import (
    PROJECT_ROOT,
    Namespace,
    Receiver,
    WorkerProcess,
    alert,
    deliver_env,
    event,
    free_port,
    healthscore,
    kcat_consume,
    kcat_produce,
    metric_value,
    start_deliver,
    wait_for,
)

HASH_KEY = "a-test-hash-key-0123456789abcdef"

pytestmark = pytest.mark.integration


def latest_records(topic: str) -> dict[bytes, bytes | None]:
    """Each key's latest value on ``topic`` (None for a tombstone), read to the topic's end."""
    return asyncio.run(_read_to_end(topic))


async def _read_to_end(topic: str) -> dict[bytes, bytes | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9092", enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(await _partitions(consumer, topic))]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        latest: dict[bytes, bytes | None] = {}
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    latest[record.key] = record.value
        return latest
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    return consumer._client.cluster.partitions_for_topic(topic) or set()


def dead_letter_reasons(topic: str) -> list[str]:
    return [header.split("=", 1)[1] for line in kcat_consume(f"{topic}.dlq", "%h\n") for header in line.split(",") if header.startswith("dlq.error=")]


@pytest.mark.parametrize("worker", ["python", "kernel"], indirect=True)
def test_events_past_the_bounds_are_dead_lettered_and_the_partition_goes_on(namespace: Namespace, worker: WorkerProcess) -> None:
    purchases, payments = namespace.topic("purchases"), namespace.topic("payments")
    kcat_produce(purchases, [
        ("big", event("b-1", "purchase.completed", "big", 3, {"order_id": "o1", "amount": 12.5, "currency": "EUR"})),
        ("big", event("b-2", "purchase.completed", "big", 2, {"order_id": "o2", "amount": 2e17, "currency": "EUR"})),
    ])
    kcat_produce(payments, [
        ("big", event("b-3", "invoice.issued", "big", 2, {"invoice_id": "i1", "amount": 5, "due_at": 10**30})),
        ("big", event("b-4", "subscription.cancelled", "big", 2, {"reason": "r" * 900_000})),
    ])
    # Later events of the same customer, on the same partitions.
    kcat_produce(purchases, [("big", event("b-5", "purchase.completed", "big", 1, {"order_id": "o3", "amount": 7.5, "currency": "EUR"}))])
    kcat_produce(payments, [("big", event("b-6", "subscription.updated", "big", 1, {"mrr": 99}))])

    url = worker.metrics_url
    wait_for(lambda: metric_value(url, "healthscore_events_total", topic=purchases, outcome="applied") == 2
             and metric_value(url, "healthscore_events_total", topic=payments, outcome="applied") == 1,
             timeout=60, message="the valid events applied", explain=worker.log_tail)
    assert sorted(dead_letter_reasons(purchases)) == ["out_of_range"]
    assert sorted(dead_letter_reasons(payments)) == ["out_of_range", "too_long"]
    assert metric_value(url, "healthscore_dead_letters_total", topic=payments, reason="too_long") == 1

    record = wait_for(lambda: latest_records(changelog_topic(namespace.settings)).get(b"big"), timeout=30, message="big's record on the changelog")
    state = decode_state(record)
    assert sum(state.counts.revenue_cents) == 2000 and state.events_applied == 3
    assert state.unpaid_invoices == [] and state.cancelled_ms == 0 and state.mrr == 99.0
    assert worker.process.poll() is None and b"Crashed" not in worker.log_path.read_bytes()


def test_alerts_of_an_erased_customer_are_neither_delivered_nor_redriven(namespace: Namespace, tmp_path: Path) -> None:
    """Alerts raised before an erasure, still waiting on churn-alerts or parked on the
    delivery_failed topic, never reach an endpoint after it; the others still do."""
    namespace.env["HEALTHSCORE_PRIVACY__HASH_KEY"] = HASH_KEY
    worker = WorkerProcess(namespace, tmp_path / "worker.log")
    worker.start()
    try:
        healthscore(namespace, "erase", "cust-001")
        wait_for(lambda: erased_status(namespace, "cust-001"), timeout=60, message="the erasure applied", explain=worker.log_tail)
    finally:
        worker.stop()
    kcat_produce(namespace.topic("alerts"), [alert(0), alert(1), alert(2)])
    parked = b"".join(alert(number)[1] + b"\n" for number in (1, 3))
    subprocess.run(["kcat", "-P", "-b", "127.0.0.1:9092", "-t", namespace.topic("delivery_failed"), "-H", "delivery.endpoint=down"],
                   input=parked, check=True, timeout=30)

    crm_port, down_port = free_port(), free_port()
    crm = Receiver(crm_port)
    env = deliver_env(namespace, crm_port, down_port)
    metrics_url = f"http://127.0.0.1:{env['HEALTHSCORE_DELIVERY__METRICS_PORT']}/metrics"
    log = tmp_path / "deliver.log"
    process = start_deliver(env, log)
    try:
        wait_for(lambda: scraped(lambda: metric_value(metrics_url, "healthscore_deliveries_total", endpoint="crm", outcome="delivered") == 2
                                 and metric_value(metrics_url, "healthscore_delivery_dropped_erased_total") == 1),
                 timeout=60, message="two alerts delivered, one dropped", explain=lambda: log.read_text())
    finally:
        process.terminate()
        process.wait(timeout=30)
        crm.stop()
    assert sorted(crm.verified) == ["alert-000", "alert-002"]

    down = Receiver(down_port)
    try:
        result = subprocess.run([sys.executable, "-m", "stream.cli", "deliver", "--redrive", "down"], cwd=PROJECT_ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        # Parked for "down": alert-001 and alert-003 by hand, alert-000 and alert-002 by the run above.
        assert "down: 3 parked alert(s) delivered" in result.stdout
        assert sorted(down.verified) == ["alert-000", "alert-002", "alert-003"]
    finally:
        down.stop()


def scraped(predicate) -> bool:
    """``predicate`` of a process's metrics, False while its metrics port is not up yet."""
    try:
        return predicate()
    except OSError:
        return False


def erased_status(namespace: Namespace, customer: str) -> str | None:
    try:
        return healthscore(namespace, "erase", "--status", customer).stdout
    except subprocess.CalledProcessError:
        return None
