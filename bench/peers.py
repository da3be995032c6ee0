"""The two comparison consumers of bench/throughput.py, each run as its own process.

    python bench/peers.py naive-faust  --bootstrap B --topics T1,T2,... --events N --partitions P
    python bench/peers.py quixstreams  --bootstrap B --topics T1,T2,... --events N

Both decode each JSON value and keep a per-customer count in their framework's
state (a changelog-backed Faust table; a Quix Streams RocksDB state), and print
one JSON line with the time from the first to the last of N events.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid


def naive_faust(bootstrap: str, topics: list[str], events: int, partitions: int) -> None:
    import faust

    app = faust.App(
        f"naive-{topics[0].split('-')[0]}-{uuid.uuid4().hex[:6]}",  # the run's tag: bench cleanup finds it
        broker=f"kafka://{bootstrap}",
        store="memory://",
        topic_partitions=partitions,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        datadir=f"/tmp/naive-faust-{uuid.uuid4().hex[:6]}",
    )
    source = app.topic(*topics, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    counts = app.Table("counts", default=int, partitions=partitions, key_type=bytes, value_type=int)
    seen = {"n": 0, "first": 0.0}

    @app.agent(source)
    async def count(stream):
        async for key, value in stream.items():
            json.loads(value)
            counts[key] += 1
            seen["n"] += 1
            if seen["n"] == 1:
                seen["first"] = time.perf_counter()
            if seen["n"] == events:
                # Faust's worker redirects print() to its log: write to the real stdout.
                os.write(1, (json.dumps({"events": events, "seconds": time.perf_counter() - seen["first"]}) + "\n").encode())
                # Not app.stop(): stopping raced the group's rebalance and never returned.
                os._exit(0)

    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn"]
    app.main()


def quixstreams(bootstrap: str, topics: list[str], events: int) -> None:
    from quixstreams import Application

    app = Application(
        broker_address=bootstrap,
        consumer_group=f"quix-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        state_dir=f"/tmp/quix-state-{uuid.uuid4().hex[:6]}",
        loglevel="WARNING",
    )
    seen = {"n": 0, "first": 0.0}

    def count(value: dict, state) -> None:
        state.set("count", state.get("count", 0) + 1)
        seen["n"] += 1
        if seen["n"] == 1:
            seen["first"] = time.perf_counter()
        if seen["n"] == events:
            print(json.dumps({"events": events, "seconds": time.perf_counter() - seen["first"]}), flush=True)
            app.stop()

    for name in topics:
        sdf = app.dataframe(app.topic(name, value_deserializer="json", key_deserializer="bytes"))
        sdf.update(count, stateful=True)
    app.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("peer", choices=["naive-faust", "quixstreams"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topics", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    topics = args.topics.split(",")
    if args.peer == "naive-faust":
        naive_faust(args.bootstrap, topics, args.events, args.partitions)
    else:
        quixstreams(args.bootstrap, topics, args.events)


if __name__ == "__main__":
    main()
