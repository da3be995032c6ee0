"""Memory per customer and restart time of one worker (run on demand, not in the test suite).

    .venv/bin/python bench/scale.py                       # 10,000 and 100,000 customers
    .venv/bin/python bench/scale.py --customers 100000
    .venv/bin/python bench/scale.py --state-store rocksdb --kill --customers 10000 --customers 1000000

``--redis-maxmemory MB`` runs the worker against a Redis of its own (port 6391, data under
.data/bench-redis) capped at that size with ``allkeys-lru``, as docs/deploy.md advises for a
Redis that cannot hold every customer: without it, 10 million customers' cached scores and
KPI hashes outgrow this machine's memory before the worker does.

``--state-store`` chooses where the worker keeps its records (``state_store``); the report then
gives the disk the store and the changelog take. ``--kill`` restarts after SIGKILL instead of
a clean stop. Each size's events per second (to apply its backlog) are in the report, so the
largest size's rate reads against the smallest's of the same run (``largest_to_smallest_rate``).
With a few events per customer the smallest size's backlog is over in seconds, mostly the
worker's start-up; ``--reference-events N`` gives the smallest size N events instead (the
generator's same mix over its customers), so its rate is the worker's steady one:

    .venv/bin/python bench/scale.py --state-store rocksdb --customers 10000 --customers 10000000 \
        --events-per-customer 2 --reference-events 200000 --redis-maxmemory 4096

For each size: fresh topics, the generator's mix (``--events-per-customer`` events per
customer over 30 days), one ``healthscore worker`` until every event is applied, then
its resident memory (RSS). An idle worker's RSS (no customers) is measured first, so
the report shows both RSS / customers and (RSS - idle) / customers.

Restart: after the largest size, the worker is stopped (SIGTERM) and started again
with the same consumer group and changelog; the clock runs from starting the process
until it has processed a new event sent right after the start. That includes
restoring every customer's record from the changelog.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from stream.services.local import default_paths, port_answers, start_kafka, start_redis  # noqa: E402
from stream.kafka.topics import delete_topics_containing, ensure_topics  # noqa: E402
from stream.kafka.clients import connection_options  # noqa: E402
from pydantic import ValidationError  # noqa: E402
from stream.settings import KafkaSettings, RocksDbSettings  # noqa: E402
from throughput import (  # noqa: E402
    events_done,
    load_events,
    namespace_env,
    process_stats,
    read_metrics,
    settings_for,
    start_worker,
    stop_workers,
    write_result,
)


#: The namespaces this run created, for deleting their topics at the end.
TAGS: list[str] = []


def new_tag(prefix: str) -> str:
    TAGS.append(f"{prefix}{uuid.uuid4().hex[:6]}")
    return TAGS[-1]


#: The port of the capped Redis of ``--redis-maxmemory`` (not the local stack's 6379).
CAPPED_REDIS_PORT = 6391


def start_capped_redis(megabytes: int) -> Path:
    """A Redis of this run's own, empty, capped at ``megabytes`` and evicting the least recently used."""
    directory = ROOT / ".data" / "bench-redis"
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "redis-server", "--bind", "127.0.0.1", "--port", str(CAPPED_REDIS_PORT), "--save", "", "--appendonly", "no",
            "--maxmemory", f"{megabytes}mb", "--maxmemory-policy", "allkeys-lru", "--daemonize", "yes",
            "--dir", str(directory), "--pidfile", str(directory / "redis.pid"), "--logfile", str(directory / "redis.log"),
        ],
        check=True,
    )
    wait_until(lambda: port_answers("127.0.0.1", CAPPED_REDIS_PORT), 15, "the capped Redis")
    return directory / "redis.pid"


def stop_capped_redis(pidfile: Path) -> None:
    try:
        os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
    except (OSError, ValueError):
        pass


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}; see .data/bench-*.log")


def bytes_under(paths: list[Path]) -> int:
    return sum(file.stat().st_size for path in paths for file in path.rglob("*") if file.is_file())


def peak_rss(pid: int) -> int:
    """The process's highest resident memory so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def changelog_bytes(tag: str) -> int:
    """What the broker keeps of the namespace's state changelog, on its disk."""
    return bytes_under([path for path in (default_paths().kafka / "data").glob("*") if tag in path.name and "changelog" in path.name])


def idle_rss(partitions: int, port: int, extra: dict[str, str]) -> int:
    env = {**namespace_env(new_tag("i"), partitions, port), **extra}
    asyncio.run(ensure_topics(settings_for(env), echo=lambda _: None))
    process = start_worker(env, port, "scale-idle")
    try:
        wait_until(lambda: read_metrics(port) is not None, 120, "the idle worker")
        time.sleep(10)
        return process_stats(process.pid)[1]
    finally:
        stop_workers([process])


async def send_probe(settings) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**connection_options(settings.kafka), acks="all")
    await producer.start()
    try:
        customer = f"probe-{uuid.uuid4().hex[:8]}"
        value = {
            "event_id": f"{customer}-1", "type": "usage.session", "customer_id": customer,
            "occurred_at": int(time.time() * 1000), "data": {"user_id": "u", "duration_seconds": 60},
        }
        await producer.send_and_wait(settings.topics.usage, msgspec.json.encode(value), key=customer.encode())
    finally:
        await producer.stop()


def events_for(args: argparse.Namespace, sizes: list[int], customers: int) -> int:
    """The size's events: ``--events-per-customer`` each, or ``--reference-events`` for the smallest."""
    if args.reference_events is not None and customers == sizes[0] and len(sizes) > 1:
        return args.reference_events
    return customers * args.events_per_customer


def checked_block_cache(parser: argparse.ArgumentParser, block_cache_mb: int | None, state_store: str) -> RocksDbSettings | None:
    """``--block-cache-mb`` checked by the setting's own bounds, with the RocksDB store only;
    the [rocksdb] settings it gives (None: the flag was not given)."""
    if block_cache_mb is None:
        return None
    if state_store != "rocksdb":
        parser.error("--block-cache-mb goes with --state-store rocksdb")
    try:
        return RocksDbSettings(block_cache_mb=block_cache_mb)
    except ValidationError as error:
        parser.error(f"--block-cache-mb: {error.errors()[0]['msg']} (MB)")


def measure(customers: int, events: int, partitions: int, port: int, restart: bool, timeout: float, extra: dict[str, str], kill: bool) -> dict:
    tag = new_tag("m")
    env = {**namespace_env(tag, partitions, port), **extra}
    settings = settings_for(env)
    asyncio.run(ensure_topics(settings, echo=lambda _: None))
    print(f"Loading {events} events for {customers} customers...")
    asyncio.run(load_events(settings, events, customers))
    process = start_worker(env, port, f"scale-{customers}")
    try:
        started = time.perf_counter()
        print("Waiting for the worker to apply them...")
        wait_until(lambda: events_done(port) >= events, timeout, f"{events} events")
        seconds = time.perf_counter() - started
        time.sleep(2)
        metrics = read_metrics(port)
        rss = process_stats(process.pid)[1]
        peak = peak_rss(process.pid)
        if kill:
            time.sleep(4)  # past an offset commit: the kill loses nothing a restart should not read again
            process.kill()
            process.wait()
    finally:
        stop_workers([process])
    result = {
        "customers": customers,
        "events": events,
        "customers_with_state": int(metrics.get("healthscore_fleet_customers{state=\"total\"}", 0)) or None,
        "seconds_to_apply": seconds,
        "events_per_second": events / seconds,
        "rss_bytes": rss,
        "peak_rss_bytes": peak,
        "store_disk_bytes": bytes_under([Path(env["HEALTHSCORE_DATA_DIR"])]),
        "changelog_disk_bytes": changelog_bytes(tag),
    }
    if restart:
        print(f"Restarting the worker (same group and changelog) after {'SIGKILL' if kill else 'a clean stop'}...")
        begun = time.perf_counter()
        process = start_worker(env, port, f"scale-{customers}-restart")
        try:
            asyncio.run(send_probe(settings))
            wait_until(lambda: events_done(port) >= 1, timeout, "the restarted worker to process an event")
            result["restart_seconds"] = time.perf_counter() - begun
            result["changelog_records_restored"] = int(read_metrics(port).get("healthscore_changelog_records_restored_total", 0))
            result["rss_after_restart_bytes"] = process_stats(process.pid)[1]
            result["peak_rss_after_restart_bytes"] = peak_rss(process.pid)
        finally:
            stop_workers([process])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, action="append", help="customer count (repeatable; default 10000 and 100000)")
    parser.add_argument("--events-per-customer", type=int, default=5, help="events per customer (default 5)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=1800, help="give up waiting after this many seconds")
    parser.add_argument("--state-store", choices=["memory", "rocksdb"], default="memory", help="the worker's state_store (default memory)")
    parser.add_argument("--kill", action="store_true", help="restart after SIGKILL rather than a clean stop")
    parser.add_argument("--reference-events", type=int, metavar="N",
                        help="events for the smallest size instead of --events-per-customer each (1,000 to 100,000,000; with two sizes or more): its rate is the reference the largest reads against")
    parser.add_argument("--redis-maxmemory", type=int, metavar="MB", help="a Redis of the run's own, capped at MB with allkeys-lru")
    parser.add_argument("--block-cache-mb", type=int, metavar="MB",
                        help="the worker's [rocksdb] block_cache_mb (8 to 65536; default: the setting's, 256): with --state-store rocksdb")
    args = parser.parse_args()
    sizes = sorted(args.customers or [10_000, 100_000])
    if args.events_per_customer < 1 or any(size < 1 for size in sizes):
        parser.error("--customers and --events-per-customer must be at least 1")
    if args.reference_events is not None and (not 1_000 <= args.reference_events <= 100_000_000 or len(sizes) < 2):
        parser.error("--reference-events: from 1000 to 100000000 events, and two --customers sizes or more (it replaces the smallest's)")
    extra = {"HEALTHSCORE_STATE_STORE": args.state_store}
    if checked_block_cache(parser, args.block_cache_mb, args.state_store) is not None:
        extra["HEALTHSCORE_ROCKSDB__BLOCK_CACHE_MB"] = str(args.block_cache_mb)
    capped = None
    if args.redis_maxmemory is not None:
        if not 64 <= args.redis_maxmemory <= 1_048_576:
            parser.error("--redis-maxmemory is in MB: from 64 to 1048576 (1 TB)")
        capped = start_capped_redis(args.redis_maxmemory)
        extra["HEALTHSCORE_REDIS_URL"] = f"redis://127.0.0.1:{CAPPED_REDIS_PORT}/0"
    try:
        run(args, sizes, extra)
    finally:
        if capped is not None:
            stop_capped_redis(capped)


def run(args: argparse.Namespace, sizes: list[int], extra: dict[str, str]) -> None:
    start_redis(default_paths())
    start_kafka(default_paths())
    port = 16080
    print("Measuring an idle worker...")
    idle = idle_rss(args.partitions, port, extra)
    rows = [measure(n, events_for(args, sizes, n), args.partitions, port, n == sizes[-1], args.timeout, extra, args.kill) for n in sizes]
    print(f"\nidle worker RSS: {idle / 1e6:.0f} MB")
    print(f"store: {args.state_store}" + (f", block cache {args.block_cache_mb} MB" if args.block_cache_mb else ""))
    print(f"{'customers':>10} {'events':>9} {'apply s':>8} {'ev/s':>7} {'RSS MB':>7} {'peak MB':>8} {'B/customer':>11} {'(RSS-idle)/customer':>20} {'store MB':>9} {'changelog MB':>13}")
    for row in rows:
        row["rss_per_customer_bytes"] = row["rss_bytes"] / row["customers"]
        row["rss_above_idle_per_customer_bytes"] = (row["rss_bytes"] - idle) / row["customers"]
        print(
            f"{row['customers']:>10} {row['events']:>9} {row['seconds_to_apply']:>8.1f} {row['events_per_second']:>7.0f} {row['rss_bytes'] / 1e6:>7.0f}"
            f" {row['peak_rss_bytes'] / 1e6:>8.0f}"
            f" {row['rss_per_customer_bytes']:>11.0f} {row['rss_above_idle_per_customer_bytes']:>20.0f}"
            f" {row['store_disk_bytes'] / 1e6:>9.0f} {row['changelog_disk_bytes'] / 1e6:>13.0f}"
        )
        if "restart_seconds" in row:
            print(f"restart with {row['customers']} customers: processing again after {row['restart_seconds']:.1f} s ({row['changelog_records_restored']} changelog records read back)")
    ratio = rows[-1]["events_per_second"] / rows[0]["events_per_second"] if len(rows) > 1 else None
    if ratio is not None:
        print(f"{rows[-1]['customers']} customers applied their backlog at {ratio:.0%} of the rate with {rows[0]['customers']} ({rows[0]['events']} events)")
    write_result(
        "scale",
        {
            "state_store": args.state_store, "restart_after": "SIGKILL" if args.kill else "SIGTERM", "idle_rss_bytes": idle,
            "redis_maxmemory_mb": args.redis_maxmemory, "block_cache_mb": args.block_cache_mb, "reference_events": args.reference_events, "largest_to_smallest_rate": ratio, "rows": rows,
        },
    )
    deleted = asyncio.run(delete_topics_containing(KafkaSettings(), TAGS))
    print(f"deleted the run's {deleted} topics")


if __name__ == "__main__":
    main()
