"""How long Redis takes to hold every customer again after it lost them (run on demand).

    .venv/bin/python bench/redis_refill.py --customers 100000

Loads two events per customer (bench/sweep.py's) into fresh topics, runs ``healthscore
worker`` until every customer is in Redis, then deletes every key of the worker's prefix
(as a Redis restarted without persistence leaves it) and measures until every customer is
back in the sorted set, with the worker's events/s meanwhile unchanged (no events arrive).
The JSON goes to the screen and to bench/results/redis-refill-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from stream.kafka.topics import delete_topics_containing  # noqa: E402
from stream.sinks.redis_cache import scores_key  # noqa: E402
from sweep import load  # noqa: E402
from throughput import events_counted, prepare_namespace, read_metrics, write_result  # noqa: E402


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2) -> float:
    started = time.time()
    while time.time() - started < timeout:
        if predicate():
            return time.time() - started
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    port = 16081
    tag, env, settings = prepare_namespace("rr", args.partitions, port)
    asyncio.run(load(settings, args.customers))
    client = redis.Redis.from_url(settings.redis_url)
    prefix = settings.redis_key_prefix
    log = open(ROOT / ".data" / "bench-redis-refill-worker.log", "wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "worker", "--loglevel", "warning"],
        cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    try:
        def applied() -> bool:
            try:
                return events_counted(read_metrics(port)) >= 2 * args.customers
            except OSError:
                return False

        wait_until(applied, 600, "every event applied", interval=1)
        wait_until(lambda: client.zcard(scores_key(prefix)) == args.customers, 600, "every customer in Redis")
        keys = list(client.scan_iter(f"{prefix}:*", count=10_000))
        for start in range(0, len(keys), 10_000):
            client.delete(*keys[start : start + 10_000])
        deleted_at = time.time()
        seconds = wait_until(lambda: client.zcard(scores_key(prefix)) == args.customers, 600, "every customer back in Redis")
        metrics = read_metrics(port)
        result = {
            "customers": args.customers,
            "partitions": args.partitions,
            "keys_deleted": len(keys),
            "seconds_until_every_customer_is_back": round(time.time() - deleted_at, 1),
            "seconds_measured": round(seconds, 1),
            "refills": metrics.get("healthscore_redis_refills_total"),
            "customers_refilled": metrics.get("healthscore_redis_refilled_customers_total"),
        }
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        asyncio.run(delete_topics_containing(settings.kafka, tag))
    print(json.dumps(result, indent=2))
    write_result("redis-refill", result)


if __name__ == "__main__":
    main()
