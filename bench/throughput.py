"""Throughput of the worker against its ceiling, floor and peer, same broker, same run.

Run on demand (not part of the test suite):

    .venv/bin/python bench/throughput.py --events 100000

It starts the project's Kafka and Redis if needed, loads N generated events into
fresh topics, then drains them with (1) a plain aiokafka consumer that only
decodes the JSON (the ceiling), (2) a naive Faust agent that decodes and updates
one table key per event (the floor), (3) Quix Streams keeping a per-customer
count in its state (the Python peer), and (4) ``healthscore worker``, until every
event is counted in its /metrics. It prints a table and writes it as JSON under
bench/results/. (2) and (3) live in bench/peers.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stream.generate import EventSynthesizer  # noqa: E402
from stream.services import default_paths, start_kafka, start_redis  # noqa: E402
from stream.settings import isolated_environment, load_settings  # noqa: E402
from stream.topics import ensure_topics  # noqa: E402

DAY_MS = 86_400_000


def namespace_env(tag: str, partitions: int, port: int) -> dict[str, str]:
    return isolated_environment(tag, partitions, port, ROOT / ".data" / f"bench-{tag}")


async def load_events(settings, events: int, customers: int) -> None:
    from aiokafka import AIOKafkaProducer

    names = {kind: name for name, kind in settings.topics.inputs().items()}
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=20, max_batch_size=256 * 1024, acks=1)
    await producer.start()
    encoder = msgspec.json.Encoder()
    now = int(time.time() * 1000)
    pending = []
    try:
        for generated in EventSynthesizer(customers, seed=11).timeline(events, now - 30 * DAY_MS, now - 60_000):
            pending.append(
                await producer.send(names[generated.topic], encoder.encode(generated.value), key=generated.customer_id.encode())
            )
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def plain_consumer(settings, events: int) -> dict:
    from aiokafka import AIOKafkaConsumer

    from aiokafka import TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    # Manual assignment: no group join, so the clock measures fetching and decoding only.
    consumer.assign([TopicPartition(topic, p) for topic in settings.topics.inputs() for p in range(settings.partitions)])
    decoder = msgspec.json.Decoder()
    seen = 0
    cpu_start = time.process_time()
    started = time.perf_counter()
    try:
        while seen < events:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batches.values():
                for record in records:
                    decoder.decode(record.value)
                    seen += 1
        elapsed = time.perf_counter() - started
    finally:
        await consumer.stop()
    import resource

    return {
        "name": "plain aiokafka, JSON decode only",
        "events": seen,
        "seconds": elapsed,
        "events_per_second": seen / elapsed,
        "cpu_seconds": time.process_time() - cpu_start,
        "rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def read_metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def process_stats(pid: int) -> tuple[float, int]:
    """CPU seconds and resident bytes of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


def run_worker(env: dict[str, str], port: int, events: int, timeout: float, profile: Path | None = None) -> dict:
    log_path = ROOT / ".data" / "bench-worker.log"
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "worker", "--loglevel", "warning"],
        cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    try:
        started = None
        spy = None
        deadline = time.monotonic() + timeout
        done = 0.0
        cpu_at_start = 0.0
        while time.monotonic() < deadline:
            time.sleep(0.2)
            if process.poll() is not None:
                raise SystemExit(f"worker exited early; see {log_path}")
            try:
                metrics = read_metrics(port)
            except OSError:
                continue
            done = sum(v for k, v in metrics.items() if k.startswith("healthscore_events_total{"))
            if started is None and done > 0:
                started = time.perf_counter() - 0.1
                cpu_at_start = process_stats(process.pid)[0]
                if profile is not None:
                    # py-spy samples the running worker until it exits; the file opens in speedscope.app.
                    spy = subprocess.Popen(
                        ["py-spy", "record", "--pid", str(process.pid), "--format", "speedscope", "--output", str(profile)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )
            if done >= events:
                break
        elapsed = time.perf_counter() - started
        cpu, rss = process_stats(process.pid)
        return {
            "name": "healthscore worker (full pipeline)",
            "events": int(done),
            "seconds": elapsed,
            "events_per_second": done / elapsed,
            "cpu_seconds": cpu - cpu_at_start,
            "rss_bytes": rss,
            "scores_published": metrics.get("healthscore_scores_published_total", 0),
            "batches": metrics.get("healthscore_batch_events_count", 0),
            "mean_batch_events": metrics.get("healthscore_batch_events_sum", 0) / max(1.0, metrics.get("healthscore_batch_events_count", 0)),
            "batch_seconds": metrics.get("healthscore_batch_duration_seconds_sum", 0),
        }
    finally:
        process.terminate()
        process.wait(timeout=30)
        if spy is not None:
            spy.wait(timeout=60)


def run_peer(peer: str, settings, events: int, timeout: float) -> dict:
    """Runs one comparison consumer (bench/peers.py) in its own process; CPU and peak RSS from its rusage."""
    import resource
    import select

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    process = subprocess.Popen(
        [
            sys.executable, str(ROOT / "bench" / "peers.py"), peer,
            "--bootstrap", settings.kafka_bootstrap,
            "--topics", ",".join(settings.topics.inputs()),
            "--events", str(events),
            "--partitions", str(settings.partitions),
        ],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=open(ROOT / ".data" / f"bench-{peer}.log", "wb"), stdin=subprocess.DEVNULL,
    )
    result = None
    deadline = time.monotonic() + timeout
    while result is None and time.monotonic() < deadline and process.poll() is None:
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        if ready:
            line = process.stdout.readline().decode().strip()
            if line.startswith("{"):
                result = json.loads(line)
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result is None:
        return {"name": peer, "error": f"did not finish {events} events; see .data/bench-{peer}.log"}
    names = {"naive-faust": "naive Faust agent, table update per event", "quixstreams": "Quix Streams, per-customer state"}
    return {
        "name": names[peer],
        "events": result["events"],
        "seconds": result["seconds"],
        "events_per_second": result["events"] / result["seconds"],
        "cpu_seconds": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "rss_bytes": after.ru_maxrss * 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="events to load and process (default 100000)")
    parser.add_argument("--customers", type=int, default=10_000, help="distinct customers (default 10000)")
    parser.add_argument("--partitions", type=int, default=4, help="partitions per topic (default 4)")
    parser.add_argument("--timeout", type=float, default=900, help="give up on a consumer after this many seconds")
    parser.add_argument("--skip-peers", action="store_true", help="only the plain consumer and the worker")
    parser.add_argument("--profile", type=Path, help="record the worker with py-spy (pip install py-spy) into this speedscope file")
    args = parser.parse_args()

    paths = default_paths()
    start_redis(paths)
    start_kafka(paths)
    tag = f"b{uuid.uuid4().hex[:6]}"
    port = 16066
    env = namespace_env(tag, args.partitions, port)
    os.environ.update(env)
    settings = load_settings()
    asyncio.run(ensure_topics(settings, echo=lambda _: None))
    print(f"Loading {args.events} events for {args.customers} customers into {args.partitions}-partition topics...")
    asyncio.run(load_events(settings, args.events, args.customers))
    print("Running the plain aiokafka consumer...")
    plain = asyncio.run(plain_consumer(settings, args.events))
    peers = []
    if not args.skip_peers:
        for peer in ("naive-faust", "quixstreams"):
            print(f"Running {peer}...")
            peers.append(run_peer(peer, settings, args.events, args.timeout))
    print("Running the worker...")
    worker = run_worker(env, port, args.events, args.timeout, args.profile)
    failed = [row for row in peers if "error" in row]
    for row in failed:
        print(f"{row['name']}: {row['error']}")
    rows = [plain, *[row for row in peers if "error" not in row], worker]
    ceiling = plain["events_per_second"]
    print(f"\n{'consumer':<44} {'events':>8} {'seconds':>8} {'events/s':>10} {'vs plain':>9} {'CPU s':>7} {'RSS MB':>7}")
    for row in rows:
        row["ratio_to_plain"] = row["events_per_second"] / ceiling
        rss = f"{row['rss_bytes'] / 1e6:.0f}" if "rss_bytes" in row else "-"
        print(f"{row['name']:<44} {row['events']:>8} {row['seconds']:>8.2f} {row['events_per_second']:>10.0f} {row['ratio_to_plain']:>8.3f}x {row['cpu_seconds']:>7.1f} {rss:>7}")
    print(
        f"worker: {worker['scores_published']:.0f} scores published; {worker['batches']:.0f} batches of"
        f" {worker['mean_batch_events']:.0f} records on average, {worker['batch_seconds']:.1f} s inside them"
    )
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "events": args.events,
        "customers": args.customers,
        "partitions": args.partitions,
        "rows": rows,
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"throughput-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
