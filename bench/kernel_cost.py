"""What the Rust kernel (scoring/kernel.py, native/) saves per event, against the model it replaces.

Run on demand (not part of the test suite):

    .venv/bin/python bench/kernel_cost.py

Replays the generator's realistic mix, already validated, through what the kernel
covers, both ways, each with its own store of records:

- the model: decode the stored record (msgspec), ``scoring.pipeline.step`` with the
  configured alert rules (apply, rescore, check the rules, decide whether the score
  changed), build and encode the score and alert messages, encode the record;
- the kernel: one call that parses the event's JSON and does all of that (records and
  messages byte-identical to the model's: tests/unit/test_kernel.py).

The two run alternately ``--rounds`` times (this VM's speed drifts by tens of percent
within minutes) and the median of each is reported, with the ratio of the medians.
Event validation is not in the kernel (``bench/model_cost.py`` gives its cost), nor is
anything the worker does around the model (Kafka, Redis, metrics).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from scoring import compiled, kernel  # noqa: E402
from scoring.contract import Event, TopicKind, decode_event  # noqa: E402
from scoring.output import alert_message, encode_json, health_message  # noqa: E402
from scoring.pipeline import step  # noqa: E402
from scoring.state import DAY_MS, decode_state, encode_state, new_state  # noqa: E402
from stream.commands.generate import EventSynthesizer  # noqa: E402
from stream.memory import collect_garbage_rarely  # noqa: E402
from stream.settings import load_settings  # noqa: E402
from throughput import write_result  # noqa: E402

END_MS = 1_790_000_000_000


def events_of(count: int, customers: int, days: float) -> list[tuple[bytes, bytes, Event, TopicKind, int]]:
    synthesizer = EventSynthesizer(customers, seed=3)
    encoder = msgspec.json.Encoder()
    rows = []
    for offset, generated in enumerate(synthesizer.timeline(count, END_MS - int(days * DAY_MS), END_MS)):
        key = generated.customer_id.encode()
        value = encoder.encode(generated.value)
        event = decode_event(key, value, generated.topic, END_MS + 1, 300_000)
        if isinstance(event, Event):
            rows.append((key, value, event, TopicKind(generated.topic), offset))
    return rows


def model_seconds(rows: list, parameters: Any, rules: Any, dedup_capacity: int) -> float:
    store: dict[bytes, bytes] = {}
    version = parameters.model_version
    started = time.perf_counter()
    for key, _, event, topic, offset in rows:
        stored = store.get(key)
        state = decode_state(stored) if stored is not None else new_state(event.customer_id)
        result = step(state, event, parameters, dedup_capacity, (topic, 0, offset), rules)
        if result.publish is not None:
            encode_json(health_message(event.customer_id, result.publish, END_MS, version, event.event_id))
        for alert in result.alerts.raised:
            encode_json(alert_message(alert, END_MS, version))
        store[key] = encode_state(state)
    return time.perf_counter() - started


def kernel_seconds(rows: list, native: Any, dedup_capacity: int) -> float:
    store: dict[bytes, bytes] = {}
    run = native.step
    # What the caller would look up per event anyway (the stream index, an invoice's due time).
    prepared = [
        (key, value, event.customer_id, event.occurred_at_ms, kernel.due_ms(event.data, event.occurred_at_ms), (kernel.STREAM_INDEX[topic], 0, offset))
        for key, value, event, topic, offset in rows
    ]
    started = time.perf_counter()
    for key, value, customer_id, occurred_at_ms, due, source in prepared:
        store[key] = run(store.get(key), customer_id, value, occurred_at_ms, due, source, dedup_capacity, END_MS)[1]
    return time.perf_counter() - started


def measure(events: int, customers: int, days: float, rounds: int) -> dict:
    settings = load_settings()
    parameters = settings.scoring.parameters()
    rules = settings.alerts.parameters()
    native = kernel.build(parameters, rules)
    rows = events_of(events, customers, days)
    collect_garbage_rarely()  # as the worker does once started
    model_runs, kernel_runs = [], []
    for _ in range(rounds):
        model_runs.append(model_seconds(rows, parameters, rules, settings.dedup_capacity) / len(rows) * 1e6)
        kernel_runs.append(kernel_seconds(rows, native, settings.dedup_capacity) / len(rows) * 1e6)
    model, native_cost = statistics.median(model_runs), statistics.median(kernel_runs)
    return {
        "model": compiled.status,
        "events": len(rows),
        "customers": customers,
        "days": days,
        "rounds": rounds,
        "model_microseconds_per_event": model_runs,
        "kernel_microseconds_per_event": kernel_runs,
        "model_median": model,
        "kernel_median": native_cost,
        "kernel_speedup": model / native_cost,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=2_000, help="100 events per customer by default, as bench/model_cost.py")
    parser.add_argument("--days", type=float, default=90.0, help="days of event time the events span")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each; the medians are compared")
    args = parser.parse_args()
    if not kernel.available():
        parser.error("the Rust kernel is not built: run scripts/setup.sh (it needs cargo)")
    settings = load_settings()
    if not kernel.supports(settings.scoring.parameters()):
        parser.error("the configured model uses BG/NBD, which the kernel does not compute yet")
    result = measure(args.events, args.customers, args.days, args.rounds)
    print(
        f"model (decode, step with alert rules, messages, encode): {result['model_median']:.1f} us/event; "
        f"kernel: {result['kernel_median']:.1f} us/event; {result['kernel_speedup']:.1f}x "
        f"(medians of {args.rounds} alternating rounds, {result['events']} events, {args.customers} customers)"
    )
    print(f"written to {write_result('kernel', result)}")


if __name__ == "__main__":
    main()
