"""How long one sweep of N customers takes (run on demand, not in the test suite).

    .venv/bin/python bench/sweep.py --customers 100000            # in the real worker
    .venv/bin/python bench/sweep.py --customers 100000 --model    # the model alone
    .venv/bin/python bench/sweep.py --customers 100000 --due      # the due index against a full scan

Worker mode: loads two events per customer (a subscription and a session, 30 days
ago) into fresh topics, runs ``healthscore worker`` until all are applied, then
requests a sweep at the current time and measures until every partition reports
its sweep done (``healthscore_sweep_duration_seconds``). Model mode: the same
customers' records swept by ``scoring.pipeline.sweep`` in one process, without Kafka.

Due mode (no Kafka): the generator's mix (10 events per customer over 60 days) applied to
N customers' records, held as bytes on 4 partitions as the worker holds them; the worker's
``Sweeper`` then sweeps them an hour after the last event with the due index (its first
sweep places every customer), an hour later with nothing changed, an hour later again after
1 % of the customers had an event; the last sweep is also made by visiting every customer
(``sweep_due_index = false``). Each visit decodes the record, sweeps it and encodes it again
if it changed, as the worker's working set does. The due search runs in the Rust kernel where
it is built, as in the worker (``--python-search``: in the Python model).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from scoring.alerts import AlertParameters  # noqa: E402
from scoring.contract import Event, SubscriptionUpdated, UsageSession  # noqa: E402
from scoring.health import ScoringParameters  # noqa: E402
from scoring.pipeline import step, sweep  # noqa: E402
from scoring.state import DAY_MS, decode_state, encode_state, new_state  # noqa: E402
from stream.processing.sweep import request_sweep  # noqa: E402
from stream.kafka.clients import connection_options  # noqa: E402
from stream.services.local import default_paths, start_kafka, start_redis  # noqa: E402
from stream.settings import load_settings  # noqa: E402
from stream.kafka.topics import ensure_topics  # noqa: E402
from throughput import events_counted, namespace_env, process_stats, read_metrics  # noqa: E402


def customer_events(index: int, at_ms: int) -> list[tuple[str, dict]]:
    customer = f"c{index:07d}"
    return [
        ("payments", {"event_id": f"{customer}-m", "type": "subscription.updated", "customer_id": customer, "occurred_at": at_ms, "data": {"mrr": 49.0}}),
        ("usage", {"event_id": f"{customer}-s", "type": "usage.session", "customer_id": customer, "occurred_at": at_ms + 60_000, "data": {"user_id": "u", "duration_seconds": 300}}),
    ]


def model_mode(customers: int) -> dict:
    scoring, rules = ScoringParameters(), AlertParameters()
    at = int(time.time() * 1000) - 30 * DAY_MS
    store = {}
    for index in range(customers):
        state = new_state(f"c{index:07d}")
        step(state, Event("m", "subscription.updated", state.customer_id, at, SubscriptionUpdated(49.0)), scoring, 32, rules=rules)
        step(state, Event("s", "usage.session", state.customer_id, at + 60_000, UsageSession("u", 300)), scoring, 32, rules=rules)
        store[state.customer_id] = encode_state(state)
    now = int(time.time() * 1000)
    started = time.perf_counter()
    published = alerts = 0
    for key, raw in store.items():
        state = decode_state(raw)
        result = sweep(state, now, scoring, rules)
        published += result.publish is not None
        alerts += len(result.alerts.raised)
        store[key] = encode_state(state)
    seconds = time.perf_counter() - started
    return {"mode": "model", "customers": customers, "seconds": seconds, "scores_changed": published, "alerts": alerts}


def due_mode(customers: int, python_search: bool = False) -> dict:
    from stream.commands.generate import EventSynthesizer
    from stream.processing.sweep import Sweeper
    from stream.state.keys import KeysByPartition
    from scoring import kernel
    import scoring.compiled as compiled_model
    from scoring.contract import decode_event

    scoring, rules = ScoringParameters(), AlertParameters()
    end = int(time.time() * 1000) // 3_600_000 * 3_600_000
    states: dict[bytes, object] = {}
    print(f"Applying {10 * customers} generated events to {customers} customers...")
    for item in EventSynthesizer(customers, 5).timeline(10 * customers, end - 60 * DAY_MS, end - 60_000):
        event = decode_event(item.customer_id.encode(), msgspec.json.encode(item.value), item.topic, end, 0)
        if isinstance(event, Event):
            state = states.get(event.customer_id.encode())
            if state is None:
                state = states[event.customer_id.encode()] = new_state(event.customer_id)
            step(state, event, scoring, 32, rules=rules)  # type: ignore[arg-type]
    store = {key: encode_state(state) for key, state in states.items()}  # type: ignore[arg-type]

    def run(sweeper: Sweeper, keys: KeysByPartition, at_ms: int) -> tuple[float, int]:
        started, visited = time.perf_counter(), 0
        for partition in sorted(keys):
            after: bytes | None = b""
            while after is not None:
                chunk, after = sweeper._chunk(partition, at_ms, after)
                for key in chunk:
                    visited += 1
                    state = decode_state(store[key])
                    if sweeper.swept(state, at_ms, key, [], partition) is not None:
                        store[key] = encode_state(state)
        return time.perf_counter() - started, visited

    native = kernel.build_where_possible(scoring, rules, not python_search)

    def sweeper_for(due_index: bool) -> tuple[Sweeper, KeysByPartition]:
        keys = KeysByPartition()
        for key in store:
            keys.setdefault(sum(key) % 4, set()).add(key)
        settings = load_settings(sweep_due_index=due_index, sweep_interval_seconds=3600)
        return Sweeper(settings, scoring, rules, keys, publisher=None, sweep_topic=None, clock=time.time, native=native), keys  # type: ignore[arg-type]

    indexed, keys = sweeper_for(True)
    first = run(indexed, keys, end + 3_600_000)
    quiet = run(indexed, keys, end + 2 * 3_600_000)
    changed = list(store)[:: 100]
    at = end + 2 * 3_600_000 + 60_000
    for index, key in enumerate(changed):
        state = decode_state(store[key])
        step(state, Event(f"bench-{index}", "usage.session", state.customer_id, at, UsageSession("u", 60)), scoring, 32, rules=rules)
        store[key] = encode_state(state)
        keys.written(sum(key) % 4, key, None)
    one_percent = run(indexed, keys, end + 3 * 3_600_000)
    full_sweeper, full_keys = sweeper_for(False)
    full = run(full_sweeper, full_keys, end + 3 * 3_600_000)
    result = {
        "mode": "due", "customers": len(store),
        "first_sweep_placing_everyone": {"seconds": first[0], "visited": first[1]},
        "an_hour_later_nothing_changed": {"seconds": quiet[0], "visited": quiet[1]},
        "an_hour_later_1_percent_changed": {"seconds": one_percent[0], "visited": one_percent[1], "changed": len(changed)},
        "full_scan_then": {"seconds": full[0], "visited": full[1]},
    }
    result["cost_of_the_1_percent_sweep_against_a_full_scan"] = one_percent[0] / full[0]
    # The sweep an hour later with nothing changed visits only the customers due by time
    # (about 1 % on this mix): the target's case, measured directly.
    result["share_due_in_the_quiet_sweep"] = quiet[1] / len(store)
    result["cost_of_the_quiet_sweep_against_a_full_scan"] = quiet[0] / full[0]
    # What a sweep visiting 1 % of the customers would cost: the visit's cost against a full scan's, times 1 %.
    result["cost_per_customer_visited_against_a_full_scan"] = (one_percent[0] / one_percent[1]) / (full[0] / full[1])
    result["due_search"] = "Rust kernel" if native is not None else "Python model"
    result["model"] = compiled_model.status
    return result


async def load(settings, customers: int) -> None:
    from aiokafka import AIOKafkaProducer

    names = {"payments": settings.topics.payments, "usage": settings.topics.usage}
    producer = AIOKafkaProducer(**connection_options(settings.kafka), linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    at = int(time.time() * 1000) - 30 * DAY_MS
    pending = []
    try:
        for index in range(customers):
            for topic, value in customer_events(index, at):
                pending.append(await producer.send(names[topic], msgspec.json.encode(value), key=value["customer_id"].encode()))
            if len(pending) > 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def worker_mode(customers: int, partitions: int) -> dict:
    start_redis(default_paths())
    start_kafka(default_paths())
    tag = f"s{uuid.uuid4().hex[:6]}"
    port = 16067
    env = namespace_env(tag, partitions, port)
    os.environ.update(env)
    settings = load_settings()
    asyncio.run(ensure_topics(settings, echo=lambda _: None))
    print(f"Loading {2 * customers} events for {customers} customers...")
    asyncio.run(load(settings, customers))
    log = open(ROOT / ".data" / "bench-sweep-worker.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "worker", "--loglevel", "warning"],
        cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    try:
        print("Waiting for the worker to apply them...")
        while True:
            time.sleep(1)
            try:
                metrics = read_metrics(port)
            except OSError:
                continue
            applied = events_counted(metrics)
            if applied >= 2 * customers:
                break
        rss_before = process_stats(process.pid)[1]
        print("Sweeping...")
        requested = time.perf_counter()
        asyncio.run(request_sweep(settings, int(time.time() * 1000), time.time()))
        while True:
            time.sleep(0.2)
            metrics = read_metrics(port)
            if metrics.get("healthscore_sweep_duration_seconds_count", 0) >= partitions:
                break
        seconds = time.perf_counter() - requested
        return {
            "mode": "worker",
            "customers": customers,
            "partitions": partitions,
            "seconds": seconds,
            "slowest_partition_seconds_sum": metrics.get("healthscore_sweep_duration_seconds_sum"),
            "customers_swept": metrics.get("healthscore_sweep_customers_total"),
            "scores_published": metrics.get("healthscore_scores_published_total"),
            "alerts_raised": sum(v for k, v in metrics.items() if k.startswith("healthscore_alerts_raised_total{")),
            "worker_rss_bytes": rss_before,
        }
    finally:
        process.terminate()
        process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--model", action="store_true", help="sweep the model alone, without Kafka")
    parser.add_argument("--due", action="store_true", help="the worker's sweep with the due index against a full scan, without Kafka")
    parser.add_argument("--python-search", action="store_true", help="with --due: the due search in the Python model, not the Rust kernel")
    args = parser.parse_args()
    if args.due:
        result = due_mode(args.customers, args.python_search)
    else:
        result = model_mode(args.customers) if args.model else worker_mode(args.customers, args.partitions)
    result["date"] = time.strftime("%Y-%m-%d", time.gmtime())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
