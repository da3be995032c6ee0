"""Does `healthscore deliver` slow the worker? Worker throughput with and without a delivery
process running against a slow webhook (each request answered after ``--endpoint-delay``).

Run on demand (not part of the test suite):

    .venv/bin/python bench/deliver_interference.py --events 100000 --rounds 3

Each round loads the same generated events into fresh topics twice and drains them with one
worker: once alone, once with `healthscore deliver` delivering the alerts the worker raises
meanwhile to a receiver on 127.0.0.1 that sleeps before answering. The rounds alternate the
order. It prints each pair and the median ratio (with / without), and writes the result as
JSON under bench/results/. On a two-core machine the delivery process shares the cores
with the worker, the broker and Redis: the figure includes that.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from stream.kafka.topics import delete_topics_containing  # noqa: E402
from throughput import load_events, prepare_namespace, run_workers, write_result  # noqa: E402

SECRET = "whsec_" + base64.b64encode(b"bench-secret-of-24-bytes").decode()


def slow_receiver(delay: float) -> tuple[ThreadingHTTPServer, list[float]]:
    received: list[float] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["content-length"]))
            time.sleep(delay)
            received.append(time.time())
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, received


def one_run(events: int, customers: int, with_deliver: bool, delay: float, port: int) -> dict:
    tag, env, settings = prepare_namespace("dl", 8, port)
    asyncio.run(load_events(settings, events, customers))
    deliver = server = None
    received: list[float] = []
    try:
        if with_deliver:
            server, received = slow_receiver(delay)
            endpoint = {"name": "slow", "kind": "webhook", "url": f"http://127.0.0.1:{server.server_address[1]}/", "secret": SECRET, "allow_insecure_http": True, "allow_private_network": True}
            deliver_env = {**env, "HEALTHSCORE_DELIVERY__ENDPOINTS": json.dumps([endpoint]), "HEALTHSCORE_DELIVERY__GROUP_ID": f"deliver-{tag}",
                           "HEALTHSCORE_DELIVERY__METRICS_PORT": str(port + 1)}
            deliver = subprocess.Popen([sys.executable, "-m", "stream.cli", "deliver"], cwd=ROOT, env={**os.environ, **deliver_env},
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        result = run_workers(env, [port], events, timeout=600)
    finally:
        if deliver is not None:
            deliver.terminate()
            deliver.wait(timeout=30)
        if server is not None:
            server.shutdown()
        asyncio.run(delete_topics_containing(settings.kafka, [tag]))
    result["deliveries"] = len(received)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--endpoint-delay", type=float, default=0.5, help="Seconds the receiver waits before each answer.")
    args = parser.parse_args()
    pairs = []
    for round_number in range(args.rounds):
        order = [False, True] if round_number % 2 == 0 else [True, False]
        runs = {with_deliver: one_run(args.events, args.customers, with_deliver, args.endpoint_delay, 6190) for with_deliver in order}
        ratio = runs[True]["events_per_second"] / runs[False]["events_per_second"]
        pairs.append({"alone": runs[False], "with_deliver": runs[True], "ratio": ratio})
        print(f"round {round_number + 1}: alone {runs[False]['events_per_second']:.0f} ev/s, with deliver {runs[True]['events_per_second']:.0f} ev/s "
              f"({runs[True]['deliveries']} deliveries at {args.endpoint_delay} s each): ratio {ratio:.3f}")
    median = statistics.median(pair["ratio"] for pair in pairs)
    print(f"median ratio with / without deliver: {median:.3f}")
    write_result("deliver-interference", {"events": args.events, "endpoint_delay_seconds": args.endpoint_delay, "pairs": pairs, "median_ratio": median})


if __name__ == "__main__":
    main()
