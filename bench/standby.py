"""How long a partition takes to move to another worker, with and without a standby copy
(run on demand, not in the test suite).

    .venv/bin/python bench/standby.py --customers 1000000
    .venv/bin/python bench/standby.py --customers 100000 --standby 1 --kill

For each ``--standby`` value (default: 1, then 0): a fresh namespace, two workers on the
RocksDB store (``state_store = "rocksdb"``, each its own data_dir, ``standby_replicas`` as
given), the generator's mix (``--events-per-customer`` events per customer over 30 days)
applied by both. Then worker A goes: SIGTERM by default (it leaves the group at once, as
in a rolling deploy or a scale-down), SIGKILL with ``--kill`` (the group notices after
``session_timeout_seconds``). One probe event is sent to each input partition, and the
clock runs from A's stop until worker B has processed every probe: B then owns A's
partitions and has their records. The report gives that time and how many changelog
records B read back for the move (its ``healthscore_changelog_records_restored_total``
after, minus before: with a standby copy, only what A wrote after B's last standby read).

Prints a table and writes bench/results/standby-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from stream.kafka.clients import connection_options  # noqa: E402
from stream.kafka.topics import delete_topics_containing, ensure_topics  # noqa: E402
from stream.services.local import default_paths, start_kafka, start_redis  # noqa: E402
from stream.settings import KafkaSettings  # noqa: E402
from scale import wait_until  # noqa: E402
from throughput import events_done, load_events, namespace_env, read_metrics, settings_for, start_worker, stop_workers, write_result  # noqa: E402

RESTORED = "healthscore_changelog_records_restored_total"


async def send_probes(settings, partitions: int) -> None:
    """One usage event to each partition of the usage topic, for a customer of its own."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**connection_options(settings.kafka), acks="all")
    await producer.start()
    try:
        for partition in range(partitions):
            customer = f"probe-{partition}-{uuid.uuid4().hex[:8]}"
            value = {
                "event_id": f"{customer}-1", "type": "usage.session", "customer_id": customer,
                "occurred_at": int(time.time() * 1000), "data": {"user_id": "u", "duration_seconds": 60},
            }
            await producer.send_and_wait(settings.topics.usage, msgspec.json.encode(value), key=customer.encode(), partition=partition)
    finally:
        await producer.stop()


def restored(port: int) -> int:
    return int(read_metrics(port).get(RESTORED, 0))


def measure(customers: int, per_customer: int, partitions: int, standby: int, kill: bool, timeout: float) -> dict:
    tag = f"f{uuid.uuid4().hex[:6]}"
    ports = (16180, 16181)
    base = {**namespace_env(tag, partitions, ports[0]), "HEALTHSCORE_STATE_STORE": "rocksdb", "HEALTHSCORE_STANDBY_REPLICAS": str(standby)}
    envs = [{**base, "HEALTHSCORE_DATA_DIR": f"{base['HEALTHSCORE_DATA_DIR']}-{name}"} for name in ("a", "b")]
    settings = settings_for(envs[0])
    asyncio.run(ensure_topics(settings, echo=lambda _: None))
    events = customers * per_customer
    print(f"standby_replicas = {standby}: loading {events} events for {customers} customers...")
    asyncio.run(load_events(settings, events, customers))
    a, b = (start_worker(env, port, f"standby-{tag}-{name}") for env, port, name in zip(envs, ports, "ab"))
    try:
        print("Waiting for both workers to apply them...")
        wait_until(lambda: events_done(ports[0]) + events_done(ports[1]) >= events, timeout, f"{events} events")
        time.sleep(15)  # the standby reads the last changelog records; offsets are committed
        before_done, before_restored = events_done(ports[1]), restored(ports[1])
        print(f"Stopping worker A ({'SIGKILL' if kill else 'SIGTERM'}); B takes its partitions...")
        begun = time.perf_counter()
        if kill:
            a.kill()
        else:
            a.terminate()
        asyncio.run(send_probes(settings, partitions))
        wait_until(lambda: events_done(ports[1]) >= before_done + partitions, timeout, "worker B to process a probe on every partition")
        seconds = time.perf_counter() - begun
        read_back = restored(ports[1]) - before_restored
    finally:
        stop_workers([a, b])
    asyncio.run(delete_topics_containing(KafkaSettings(), [tag]))
    return {"standby_replicas": standby, "customers": customers, "events": events, "stop": "SIGKILL" if kill else "SIGTERM",
            "seconds_until_b_processes_every_partition": seconds, "changelog_records_read_back_by_b": read_back}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--events-per-customer", type=int, default=2, help="events per customer (default 2)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--standby", type=int, action="append", help="standby_replicas to measure (repeatable; default 1 then 0)")
    parser.add_argument("--kill", action="store_true", help="stop worker A with SIGKILL rather than SIGTERM")
    parser.add_argument("--timeout", type=float, default=1800, help="give up waiting after this many seconds")
    args = parser.parse_args()
    start_redis(default_paths())
    start_kafka(default_paths())
    rows = [measure(args.customers, args.events_per_customer, args.partitions, standby, args.kill, args.timeout) for standby in args.standby or [1, 0]]
    print(f"\n{'standby':>8} {'customers':>10} {'stop':>8} {'seconds':>8} {'records read back':>18}")
    for row in rows:
        print(f"{row['standby_replicas']:>8} {row['customers']:>10} {row['stop']:>8} {row['seconds_until_b_processes_every_partition']:>8.1f} {row['changelog_records_read_back_by_b']:>18}")
    write_result("standby", {"partitions": args.partitions, "rows": rows})


if __name__ == "__main__":
    main()
