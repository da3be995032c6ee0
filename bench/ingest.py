"""How fast one `healthscore ingest` process takes events into the real broker (run on demand).

    .venv/bin/python bench/ingest.py --seconds 20

Starts Kafka if need be, fresh topics, and one `healthscore ingest` process (one core:
it is one asyncio process). A load generator in this process (aiohttp, on the other core)
sends, as fast as the answers come with --concurrency requests in flight: (1) Segment
batches of 100 tracks to /v1/batch, then (2) single events to /v1/events. Reported per
phase: requests/s, events/s, latency percentiles, and the ingest process's CPU seconds
(so events/s per core of the service). Then (3) single events at half the rate of (2),
paced, for the p99 latency at that load. Every request is answered 2xx only after Kafka
acknowledged its events (acks=all). The JSON goes to bench/results/ingest-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from throughput import prepare_namespace, write_result  # noqa: E402

WRITE_KEY = "bench-write-key-0123456789abcdef"
TOKEN = "bench-ingest-token-0123456789abcdefghijkl"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def segment_batch(size: int, customers: int) -> bytes:
    now = time.time()
    calls = [
        {"type": "track", "event": "Report Exported", "userId": f"u{n % 50}", "context": {"groupId": f"acct-{n % customers}"},
         "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + "Z", "messageId": uuid.uuid4().hex}
        for n in range(size)
    ]
    return json.dumps({"batch": calls}).encode()


def single_event(customers: int) -> bytes:
    n = uuid.uuid4().int
    return json.dumps({"event_id": uuid.uuid4().hex, "type": "usage.session", "customer_id": f"acct-{n % customers}",
                       "occurred_at": int(time.time() * 1000), "data": {"user_id": "u1", "duration_seconds": 30}}).encode()


async def phase(session: aiohttp.ClientSession, url: str, make_body, headers: dict[str, str], seconds: float,
                concurrency: int, events_per_request: int, rate: float | None = None) -> dict:
    """Sends for ``seconds``: ``concurrency`` senders as fast as answers come, or paced at ``rate`` requests/s."""
    latencies: list[float] = []
    failures = 0
    deadline = time.monotonic() + seconds
    start = time.monotonic()

    async def sender(index: int) -> None:
        nonlocal failures
        sent = 0
        while time.monotonic() < deadline:
            if rate is not None:  # each sender's share of the pace
                due = start + (sent * concurrency + index) / rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            body = make_body()
            began = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as answer:
                await answer.read()
                if answer.status != 200:
                    failures += 1
            latencies.append(time.perf_counter() - began)
            sent += 1

    await asyncio.gather(*(sender(index) for index in range(concurrency)))
    elapsed = time.monotonic() - start
    ordered = sorted(latencies)
    return {
        "requests": len(latencies), "failures": failures, "seconds": round(elapsed, 2),
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "events_per_second": round(len(latencies) * events_per_request / elapsed, 1),
        "latency_ms": {"p50": round(statistics.median(ordered) * 1000, 2), "p99": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 2),
                       "max": round(ordered[-1] * 1000, 2)},
    }


async def run(base: str, pid: int, seconds: float, concurrency: int, customers: int) -> dict:
    segment_headers = {"Authorization": "Basic " + __import__("base64").b64encode(f"{WRITE_KEY}:".encode()).decode(), "Content-Type": "application/json"}
    events_headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    results = {}
    async with aiohttp.ClientSession() as session:
        for name, url, make, headers, per in (
            ("segment_batches_of_100", f"{base}/v1/batch", lambda: segment_batch(100, customers), segment_headers, 100),
            ("single_events", f"{base}/v1/events", lambda: single_event(customers), events_headers, 1),
        ):
            cpu = cpu_seconds(pid)
            results[name] = await phase(session, url, make, headers, seconds, concurrency, per)
            used = cpu_seconds(pid) - cpu
            results[name]["ingest_cpu_seconds"] = round(used, 2)
            results[name]["events_per_cpu_second"] = round(results[name]["requests"] * per / used, 1) if used else None
            results[name]["requests_per_cpu_second"] = round(results[name]["requests"] / used, 1) if used else None
        half = results["single_events"]["requests_per_second"] / 2
        results["single_events_at_half_rate"] = await phase(session, f"{base}/v1/events", lambda: single_event(customers), events_headers,
                                                            seconds, concurrency, 1, rate=half)
        results["single_events_at_half_rate"]["target_requests_per_second"] = round(half, 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    port = 16091
    tag, env, settings = prepare_namespace("ing", args.partitions, 16090)
    env = {**env, "HEALTHSCORE_INGEST__PORT": str(port), "HEALTHSCORE_INGEST__API_TOKENS": json.dumps([TOKEN]),
           "HEALTHSCORE_INGEST__SEGMENT_WRITE_KEYS": json.dumps([WRITE_KEY]), "HEALTHSCORE_INGEST__MAX_BODY_BYTES": str(4 * 1024 * 1024)}
    log = open(ROOT / ".data" / "bench-ingest.log", "wb")
    ingest = subprocess.Popen([sys.executable, "-m", "stream.cli", "ingest"], cwd=ROOT, env={**os.environ, **env},
                              stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        for _ in range(120):
            if b"Ingesting on" in (ROOT / ".data" / "bench-ingest.log").read_bytes():
                break
            if ingest.poll() is not None:
                raise SystemExit((ROOT / ".data" / "bench-ingest.log").read_text())
            time.sleep(0.5)
        results = asyncio.run(run(f"http://127.0.0.1:{port}", ingest.pid, args.seconds, args.concurrency, args.customers))
    finally:
        ingest.terminate()
        ingest.wait(timeout=30)
    print(json.dumps(results, indent=2))
    write_result("ingest", {"partitions": args.partitions, "concurrency": args.concurrency, "seconds_per_phase": args.seconds, **results})


if __name__ == "__main__":
    main()
