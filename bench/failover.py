"""How long a killed worker's customers go unscored (run on demand, not in the test suite).

    .venv/bin/python bench/failover.py                          # the configured session timeout
    .venv/bin/python bench/failover.py --session-timeout 60     # another one, for comparison

Two workers share 8 partitions while a feed sends one ticket event per customer every
200 ms (64 customers, event time = now; each changes the customer's score). Once both workers are applying events, one is killed
with SIGKILL. The figure is the time from the kill until every customer has a new score
on ``customer-health`` again: the group notices the dead member after
``session_timeout_seconds``, then the survivor rebalances, reads the moved partitions'
changelog back and takes their events from the committed offsets. Repeat with
``--rounds``. The JSON goes to the screen and to bench/results/failover-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from stream.kafka.topics import delete_topics_containing  # noqa: E402
from stream.kafka.clients import connection_options  # noqa: E402
from throughput import events_counted, prepare_namespace, read_metrics, write_result  # noqa: E402

CUSTOMERS = [f"f{index:03d}" for index in range(64)]


def start_worker(env: dict[str, str], port: int, tag: str, name: str) -> subprocess.Popen:
    worker_env = {**os.environ, **env, "HEALTHSCORE_WEB_PORT": str(port), "HEALTHSCORE_DATA_DIR": str(ROOT / ".data" / f"bench-{tag}-{name}")}
    log = open(ROOT / ".data" / f"bench-failover-{name}.log", "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "worker", "--loglevel", "warning"],
        cwd=ROOT, env=worker_env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )


async def feed(settings, stop: asyncio.Event) -> None:
    """One ticket event per customer every 200 ms, stamped now: opened, then resolved, in
    turn, so that every event changes the customer's score and a score is published."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**connection_options(settings.kafka), linger_ms=5)
    await producer.start()
    tick = 0
    try:
        while not stop.is_set():
            now_ms = int(time.time() * 1000)
            for customer in CUSTOMERS:
                ticket = f"{customer}-t{tick // 2}"
                kind, data = ("ticket.opened", {"ticket_id": ticket, "priority": "urgent"}) if tick % 2 == 0 else ("ticket.resolved", {"ticket_id": ticket})
                value = {"event_id": f"{customer}-{tick}", "type": kind, "customer_id": customer, "occurred_at": now_ms, "data": data}
                await producer.send(settings.topics.tickets, msgspec.json.encode(value), key=customer.encode())
            tick += 1
            await asyncio.sleep(0.2)
    finally:
        await producer.stop()


async def seconds_until_every_customer_is_scored(settings, since: float, timeout: float) -> float | None:
    """From ``since`` until each customer has a score computed after it on customer-health."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(settings.topics.health, **connection_options(settings.kafka), auto_offset_reset="latest")
    await consumer.start()
    waiting = set(CUSTOMERS)
    since_ms = int(since * 1000)
    try:
        while waiting and time.time() - since < timeout:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    message = msgspec.json.decode(record.value)
                    if _computed_at_ms(message) >= since_ms:
                        waiting.discard(message["customer_id"])
        return None if waiting else time.time() - since
    finally:
        await consumer.stop()


def _computed_at_ms(message: dict) -> int:
    from scoring.contract import parse_timestamp_ms

    parsed = parse_timestamp_ms(message.get("computed_at", ""), "computed_at")
    return parsed if isinstance(parsed, int) else 0


async def one_round(settings, env: dict[str, str], tag: str, round_index: int, timeout: float) -> float | None:
    ports = (16071 + 2 * round_index, 16072 + 2 * round_index)
    workers = [start_worker(env, port, tag, f"{round_index}-{name}") for port, name in zip(ports, "ab")]
    stop = asyncio.Event()
    feeding = asyncio.create_task(feed(settings, stop))
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # both workers applying events: the partitions are shared
            await asyncio.sleep(0.5)
            try:
                if all(events_counted(read_metrics(port)) > 0 for port in ports):
                    break
            except OSError:
                continue
        else:
            raise RuntimeError("the two workers did not both start applying events within 120 s")
        await asyncio.sleep(3)
        killed_at = time.time()
        workers[0].send_signal(signal.SIGKILL)
        return await seconds_until_every_customer_is_scored(settings, killed_at, timeout)
    finally:
        stop.set()
        await feeding
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
                worker.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--session-timeout", type=float, default=None, help="session_timeout_seconds for both workers (default: the configured one)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    extra = {"HEALTHSCORE_SESSION_TIMEOUT_SECONDS": str(args.session_timeout)} if args.session_timeout is not None else {}
    tag, env, settings = prepare_namespace("fo", 8, 16070, extra)
    timeout = settings.session_timeout_seconds + 120
    try:
        results = [asyncio.run(one_round(settings, env, tag, index, timeout)) for index in range(args.rounds)]
    finally:
        asyncio.run(delete_topics_containing(settings.kafka, tag))
    measured = [r for r in results if r is not None]
    result = {
        "session_timeout_seconds": settings.session_timeout_seconds,
        "seconds_until_every_customer_is_scored_again": [round(r, 1) for r in measured],
        "median_seconds": round(statistics.median(measured), 1) if measured else None,
        "rounds_that_never_recovered": len(results) - len(measured),
    }
    print(json.dumps(result, indent=2))
    write_result("failover", result)


if __name__ == "__main__":
    main()
