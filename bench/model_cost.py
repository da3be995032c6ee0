"""Cost of the model per event, and the size of a customer's state.

Run on demand (not part of the test suite):

    .venv/bin/python bench/model_cost.py

Replays the generator's realistic mix through what the worker does per event, with
the configured alert rules and dedup capacity: validate the event, decode the stored
state, apply the event, rescore and check the alert rules at event time
(``scoring.pipeline.step``), build and encode the score message when the score
changed, encode the state. Reports the mean microseconds per event of each part on one
core, their sum as the events/s one core could reach with no Kafka at all (the
ceiling for the worker), and the serialized state size per customer (median, p90, max).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scoring import compiled  # noqa: E402
from scoring.contract import decode_event  # noqa: E402
from scoring.output import encode_json, health_message  # noqa: E402
from scoring.pipeline import step  # noqa: E402
from scoring.state import DAY_MS, decode_state, encode_state, new_state  # noqa: E402
from stream.commands.generate import EventSynthesizer  # noqa: E402
from stream.memory import collect_garbage_rarely  # noqa: E402
from stream.settings import load_settings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--customers", type=int, default=2_000)
    parser.add_argument("--days", type=float, default=90.0, help="days of event time the events span")
    args = parser.parse_args()
    print(json.dumps(measure(args.events, args.customers, args.days), indent=2))


#: The probe the throughput and compare benches run to tell how fast the machine is at
#: that moment: the model alone, no I/O, so its figure moves only with the CPU (this
#: shared VM has run the same code at 47 and at 96 us per event on the same day).
SPEED_PROBE = {"events": 20_000, "customers": 2_000, "days": 30.0}


def speed_probe(repeats: int = 3) -> float:
    """Microseconds per event of the model alone (:data:`SPEED_PROBE`), the median of a few
    runs: the machine's speed moves by tens of percent from one second to the next."""
    return statistics.median(measure(**SPEED_PROBE)["total_microseconds_per_event"] for _ in range(repeats))


def measure(events: int, customers: int, days: float) -> dict:
    end = 1_790_000_000_000
    synthesizer = EventSynthesizer(customers, seed=3)
    encoder = msgspec.json.Encoder()
    raw = [
        (g.customer_id.encode(), encoder.encode(g.value), g.topic)
        for g in synthesizer.timeline(events, end - int(days * DAY_MS), end)
    ]
    collect_garbage_rarely()  # as the worker does once started
    settings = load_settings()
    parameters = settings.scoring.parameters()
    rules = settings.alerts.parameters()
    model_version = parameters.model_version  # a digest of the parameters: the worker computes it once
    store: dict[bytes, bytes] = {}

    clock = time.perf_counter
    event_seconds = state_seconds = model_seconds = message_seconds = 0.0
    published = alerts = 0
    for offset, (key, value, topic) in enumerate(raw):
        t0 = clock()
        event = decode_event(key, value, topic, end + 1, 300_000)
        t1 = clock()
        stored = store.get(key)
        state = decode_state(stored) if stored is not None else new_state(event.customer_id)
        t2 = clock()
        result = step(state, event, parameters, settings.dedup_capacity, (topic, 0, offset), rules)
        t3 = clock()
        if result.publish is not None:
            encode_json(health_message(event.customer_id, result.publish, end, model_version, event.event_id))
            published += 1
        t4 = clock()
        store[key] = encode_state(state)
        t5 = clock()
        alerts += len(result.alerts.raised)
        event_seconds += t1 - t0
        state_seconds += (t2 - t1) + (t5 - t4)
        model_seconds += t3 - t2
        message_seconds += t4 - t3
    total_seconds = event_seconds + state_seconds + model_seconds + message_seconds
    sizes = sorted(len(value) for value in store.values())
    return {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "events": events,
        "customers": customers,
        "days": days,
        "model": compiled.status,
        "apply_rescore_and_alert_rules_microseconds_per_event": model_seconds / events * 1e6,
        "state_decode_and_encode_microseconds_per_event": state_seconds / events * 1e6,
        "event_validation_microseconds_per_event": event_seconds / events * 1e6,
        "score_message_microseconds_per_event": message_seconds / events * 1e6,
        "total_microseconds_per_event": total_seconds / events * 1e6,
        "events_per_second_on_one_core_without_kafka": events / total_seconds,
        "scores_published_share": published / events,
        "alerts_raised": alerts,
        "state_bytes_median": statistics.median(sizes),
        "state_bytes_p90": sizes[int(len(sizes) * 0.9)],
        "state_bytes_max": sizes[-1],
        "events_per_customer_mean": events / len(store),
    }


if __name__ == "__main__":
    main()
