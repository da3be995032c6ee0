"""The comparison consumers of bench/throughput.py, each run as its own process.

    python bench/peers.py naive-faust        --bootstrap B --topics T1,T2,... --events N --partitions P
    python bench/peers.py quixstreams        --bootstrap B --topics T1,T2,... --events N
    python bench/peers.py quixstreams-model  --bootstrap B --topics T1,T2,... --events N --output TOPIC

The first two decode each JSON value and keep a per-customer count in their framework's
state (a changelog-backed Faust table; a Quix Streams RocksDB state). The third is what a
user would build instead of this project: a Quix Streams application running this
project's own model (``scoring.contract.decode_event``, then ``scoring.pipeline.step`` with
the alert rules on the customer's record, kept as bytes in Quix's RocksDB state with its
changelog), producing each changed score and each alert to ``--output``. Each prints one
JSON line with the time from the first to the last of N events (and, for the model, the
scores and alerts it produced).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path


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


def quixstreams_model(bootstrap: str, topics: list[str], events: int, output: str) -> None:
    """This project's model in a Quix Streams application. What it does not do that the worker
    does: merge the four topics in event-time order (Quix reads each topic on its own), drop
    a redelivered event after a restart by its input offset (only by the event-id ring),
    dead-letter rejected input, cache scores in Redis, keep an alert ledger (a restart
    republishes alerts), sweep silent customers."""
    from quixstreams import Application
    from quixstreams.state.rocksdb import RocksDBOptions

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from scoring.contract import Event, decode_event
    from scoring.output import alert_message, encode_json, health_message
    from scoring.pipeline import step
    from scoring.state import decode_record, encode_record, new_state
    from stream.settings import load_settings

    settings = load_settings()
    parameters, rules = settings.model_parameters(), settings.alerts.parameters()
    model_version, kinds = parameters.model_version, settings.topics.inputs()
    app = Application(
        broker_address=bootstrap,
        consumer_group=f"quix-model-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        state_dir=f"/tmp/quix-state-{uuid.uuid4().hex[:6]}",
        # The record's own bytes as the value (the state key, a str, as UTF-8).
        rocksdb_options=RocksDBOptions(dumps=lambda value: value if isinstance(value, bytes) else value.encode(), loads=lambda value: value),
        loglevel="WARNING",
    )
    seen = {"n": 0, "first": 0.0, "scores": 0, "alerts": 0, "rejected": 0}

    def apply(kind, key: bytes, value: bytes, state) -> list[bytes]:
        now_ms = int(time.time() * 1000)
        seen["n"] += 1
        if seen["n"] == 1:
            seen["first"] = time.perf_counter()
        event = decode_event(key, value, kind, now_ms, settings.max_future_skew_seconds * 1000)
        out: list[bytes] = []
        if isinstance(event, Event):
            stored = state.get("record")
            record, unknown = decode_record(stored) if stored is not None else (new_state(event.customer_id), ())
            result = step(record, event, parameters, settings.dedup_capacity, None, rules)
            state.set("record", encode_record(record, unknown))
            if result.publish is not None:
                out.append(encode_json(health_message(event.customer_id, result.publish, now_ms, model_version, event.event_id)))
            out += [encode_json(alert_message(alert, now_ms, model_version)) for alert in result.alerts.raised]
            seen["scores"] += result.publish is not None
            seen["alerts"] += len(result.alerts.raised)
        else:
            seen["rejected"] += 1
        if seen["n"] == events:
            print(json.dumps({"events": events, "seconds": time.perf_counter() - seen["first"], **{k: seen[k] for k in ("scores", "alerts", "rejected")}}), flush=True)
            app.stop()
        return out

    target = app.topic(output, value_serializer="bytes", key_serializer="bytes")
    for name in topics:
        sdf = app.dataframe(app.topic(name, value_deserializer="bytes", key_deserializer="bytes"))
        sdf = sdf.apply(lambda value, key, timestamp, headers, state, kind=kinds[name]: apply(kind, key, value, state), stateful=True, metadata=True, expand=True)
        sdf.to_topic(target)
    app.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("peer", choices=["naive-faust", "quixstreams", "quixstreams-model"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topics", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--output", help="quixstreams-model: the topic its scores and alerts go to")
    args = parser.parse_args()
    topics = args.topics.split(",")
    if args.peer == "naive-faust":
        naive_faust(args.bootstrap, topics, args.events, args.partitions)
    elif args.peer == "quixstreams":
        quixstreams(args.bootstrap, topics, args.events)
    else:
        if not args.output:
            parser.error("quixstreams-model needs --output")
        quixstreams_model(args.bootstrap, topics, args.events, args.output)


if __name__ == "__main__":
    main()
