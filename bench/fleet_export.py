"""What the fleet export costs with many customers (run on demand, not in the test suite).

    .venv/bin/python bench/fleet_export.py --customers 1000000 --changed 0.01
    .venv/bin/python bench/fleet_export.py --customers 10000000 --templates 20000 --quiet-minutes 120 --quiet-after-days 2 --skip-midnight
    .venv/bin/python bench/fleet_export.py --customers 200000 --model python

Customers are recounted by the Rust kernel where it is built, as in the worker
(``--model python``: the Python model, which gives the same totals and KPI rows).

Builds ``--customers`` records in memory, or on the RocksDB store with ``--state-store
rocksdb`` (the generator's mix: ``--templates`` customers'
histories over 30 days, each record copied under new customer ids), spread over 12
partitions, then times, with the worker's own FleetExport (stream/worker/fleet.py) and no
broker or Redis (KPI rows are made, not written):

- ``first_count``: the first export, which counts every customer (as after a start or
  a rebalance; what every export cost before issue 38);
- ``idle``: an export a minute later with nothing changed;
- ``quiet_minutes`` (with ``--quiet-minutes N``): an export every minute for N minutes with
  nothing changed, its mean, median and maximum, and the cost per customer recounted. The
  copies of one history are due in the same minutes, so single minutes are lumpy: the mean
  over many minutes is the figure (more ``--templates``, less lumpy). The generator starts
  every customer at the history's beginning, so for a day and a half after its end each
  minute holds some customers' 30th day since their first event (a wave no real fleet has,
  its customers joined over years): ``--quiet-after-days 2`` measures after it (one export
  catches up first: ``catch_up``);
- ``changed``: an export after ``--changed`` of the customers got a new event;
- ``next_midnight``: an export just after the next UTC midnight, when every customer
  active in the last days is due (the day windows move) and nothing else changed;
- ``a_day_later_idle``: an export a minute after that.

``--alternate-threads`` (RocksDB) runs every other quiet minute on one thread and reports
those apart (``quiet_minutes_one_thread``): the walk's two threads against one, in the same
minutes. The export's totals are checked against a full recomputation at the end. The speed probe
of bench/model_cost.py (the model alone, no I/O) runs before and after, as in
bench/throughput.py: this shared VM has run the same code at a quarter of its usual speed
for hours, so compare runs only at similar probe figures. Prints JSON and writes
bench/results/fleet_export-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from scoring import kernel  # noqa: E402
from scoring.contract import Event, UsageSession  # noqa: E402
from scoring.fleet_sums import add_to, contribution, empty_sums  # noqa: E402
from scoring.health import ScoringParameters  # noqa: E402
from scoring.pipeline import step  # noqa: E402
from scoring.state import DAY_MS, decode_state, encode_state, new_state  # noqa: E402
from scoring.contract import decode_event  # noqa: E402
from stream.commands.generate import EventSynthesizer  # noqa: E402
from stream.memory import collect_garbage_rarely, release_free_memory, tune_allocator  # noqa: E402
from stream.kafka.producer import Outputs  # noqa: E402
from stream.settings import RocksDbSettings, Settings  # noqa: E402
from stream.state.table import KeysByPartition, customer_state_table  # noqa: E402
from stream.worker.app import faust_app  # noqa: E402
from stream.state.working_set import WorkingSet  # noqa: E402
from stream.worker import fleet  # noqa: E402
from stream.worker.fleet import FleetExport, FleetOptions  # noqa: E402
from model_cost import speed_probe  # noqa: E402
from scale import checked_block_cache  # noqa: E402
from throughput import write_result  # noqa: E402

PARTITIONS = 12
END_MS = 1_790_000_000_000 // DAY_MS * DAY_MS + 15 * 3_600_000  # 15:00 UTC


class Table:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)


def templates(count: int) -> list[bytes]:
    """The records of ``count`` customers after the generator's mix over 30 days (20 events each)."""
    parameters = ScoringParameters()
    states: dict[str, object] = {}
    for generated in EventSynthesizer(count, seed=5).timeline(count * 20, END_MS - 30 * DAY_MS, END_MS - 60_000):
        event = decode_event(generated.customer_id.encode(), msgspec.json.encode(generated.value), generated.topic, END_MS, 300_000)
        if isinstance(event, Event):
            state = states.setdefault(event.customer_id, new_state(event.customer_id))
            step(state, event, parameters, 32)  # type: ignore[arg-type]
    return [encode_state(state) for state in states.values()]  # type: ignore[arg-type]


def fill(table: Table, keys: KeysByPartition, customers: int, template_records: list[bytes]) -> None:
    """The records in memory, or on the RocksDB store (``keys.disk``: written as commits write
    them, with their place and change markers)."""
    pending: dict[int, list[tuple[bytes, bytes]]] = {partition: [] for partition in range(PARTITIONS)}
    for index in range(customers):
        state = decode_state(template_records[index % len(template_records)])
        state.customer_id = f"c{index:08d}"
        key = state.customer_id.encode()
        partition = index % PARTITIONS
        if keys.disk is None:
            table.data[key] = encode_state(state)
            keys.setdefault(partition, set()).add(key)
        else:
            pending[partition].append((key, encode_state(state)))
            if len(pending[partition]) >= 10_000:
                commit(keys, {partition: pending[partition]})
                pending[partition] = []
        if index % 200_000 == 199_999:
            print(f"  {index + 1:,} records", file=sys.stderr, flush=True)
    if keys.disk is not None:
        commit(keys, pending)


def commit(keys: KeysByPartition, written: dict[int, list[tuple[bytes, bytes]]]) -> None:
    """What the worker's offset commit does on the RocksDB store (stream/state/store.py ``persist``)."""
    for partition in written:
        keys.disk.partition(partition)  # opened, as an assigned partition is
    keys.disk.persist(written)


def disk_table(directory: str, rocksdb: RocksDbSettings | None = None) -> tuple[Any, KeysByPartition]:
    """The worker's table on the RocksDB store (``state_store = "rocksdb"``) under ``directory``
    (``rocksdb``: its [rocksdb] settings, else the defaults)."""
    configured = Settings(state_store="rocksdb", data_dir=Path(directory), **({} if rocksdb is None else {"rocksdb": rocksdb}))
    keys = KeysByPartition()
    table = customer_state_table(faust_app(configured), configured, keys)
    table.data  # noqa: B018 -- Faust makes the store on first use (it then tells ``keys`` it holds them)
    assert keys.disk is not None
    return table, keys


def every_record(table: Any, keys: KeysByPartition) -> Iterator[bytes]:
    if keys.disk is None:
        yield from table.data.values()
        return
    for partition in range(PARTITIONS):
        records = keys.disk.partition(partition)
        for key in keys.walk(partition, 10_000):
            yield records.get(key)


async def timed(export: FleetExport, at_ms: int) -> dict:
    started = time.perf_counter()
    await export.update(set(range(PARTITIONS)), at_ms)
    seconds = time.perf_counter() - started
    release_free_memory()  # as the worker's timer does every few seconds (stream/worker/timers.py)
    return {"seconds": round(seconds, 4), "recomputed": export.recomputed}


def touch(table: Table, keys: KeysByPartition, customers: int, share: float, at_ms: int) -> int:
    """A new session for every 1/share-th customer, through the worker's WorkingSet (and a
    commit on the RocksDB store)."""
    step_every = max(1, round(1 / share)) if share > 0 else 0
    touched = 0
    for index in range(0, customers, step_every or customers + 1):
        customer = f"c{index:08d}"
        working = WorkingSet(table, keys, Outputs(), "changelog")
        event = Event(event_id=f"bench-{index}", type="usage.session", customer_id=customer, occurred_at_ms=at_ms, data=UsageSession("u", 60))
        working.run(customer.encode(), index % PARTITIONS, customer, lambda state, event=event: step(state, event, ScoringParameters(), 32))
        working.write_back()
        touched += 1
    if keys.disk is not None:
        commit(keys, {partition: list(keys.disk.partition(partition).pending.items()) for partition in range(PARTITIONS)})
    return touched


async def quiet(export: FleetExport, first_ms: int, minutes: int, alternate_threads: bool = False) -> dict:
    """An export every minute for ``minutes`` minutes with nothing changed (no midnight in them):
    what time alone costs, a minute at a time. ``alternate_threads``: every other minute on one
    thread (the RocksDB walk's partitions one after the other), reported apart: the two ways
    compared in the same minutes, on a VM whose speed drifts within the hour."""
    groups: dict[str, tuple[list[float], list[int]]] = {}
    for minute in range(1, minutes + 1):
        one_thread = alternate_threads and minute % 2 == 0
        with _threads(1 if one_thread else None):
            figures = await timed(export, first_ms + minute * 60_000)
        seconds, recomputed = groups.setdefault("quiet_minutes_one_thread" if one_thread else "quiet_minutes", ([], []))
        seconds.append(figures["seconds"])
        recomputed.append(figures["recomputed"])
    return {name: summary(seconds, recomputed) for name, (seconds, recomputed) in groups.items()}


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """The export's thread count (stream/worker/fleet.py) for a while; None: as the machine gives."""
    original = fleet._export_threads
    if count is not None:
        fleet._export_threads = lambda: count
    try:
        yield
    finally:
        fleet._export_threads = original


def summary(seconds: list[float], recomputed: list[int]) -> dict:
    ordered = sorted(seconds)
    return {
        "minutes": len(seconds),
        "seconds_mean": round(sum(seconds) / len(seconds), 4),
        "seconds_median": ordered[len(seconds) // 2],
        "seconds_max": ordered[-1],
        "recomputed_mean": round(sum(recomputed) / len(seconds), 1),
        "recomputed_max": max(recomputed),
        "microseconds_per_recount": round(sum(seconds) / max(1, sum(recomputed)) * 1e6, 1),
    }


async def measure(
    customers: int, template_count: int, changed: float, quiet_minutes: int = 0, skip_midnight: bool = False, quiet_after_days: int = 0,
    model: str = "kernel", data_dir: str | None = None, alternate_threads: bool = False, rocksdb: RocksDbSettings | None = None,
) -> dict:
    collect_garbage_rarely()
    tune_allocator()  # as the worker does at its start (stream/cli.py): the export's threads share one more heap
    table, keys = (Table(), KeysByPartition()) if data_dir is None else disk_table(data_dir, rocksdb)
    print(f"building {customers:,} records from {template_count:,} histories", file=sys.stderr, flush=True)
    fill(table, keys, customers, templates(template_count))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows: list[int] = []

    async def count_rows(batch: list[tuple[str, bytes]]) -> list[str]:
        rows.append(len(batch))
        return []

    # As the worker: KPIs with the LTV (its churn risk needs the model).
    parameters = ScoringParameters()
    native = kernel.build(parameters) if model == "kernel" else None
    export = FleetExport(None, table, keys, [], "sweep", FleetOptions(write_kpis=count_rows, parameters=parameters), kernel=native)  # type: ignore[arg-type]
    figures: dict = {"customers": customers, "partitions": PARTITIONS, "templates": template_count, "model": model,
                     "state_store": "memory" if data_dir is None else "rocksdb",
                     "block_cache_mb": None if data_dir is None else (rocksdb or RocksDbSettings()).block_cache_mb}
    now = END_MS
    figures["first_count"] = await timed(export, now)
    figures["rss_growth_mib_first_count"] = round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024, 1)
    figures["idle"] = await timed(export, now + 60_000)
    if quiet_minutes:
        start = now + 60_000
        if quiet_after_days:  # past the generator's own wave (below): one export catches up first
            start = now + quiet_after_days * DAY_MS
            figures["catch_up"] = await timed(export, start)
        figures.update(await quiet(export, start, quiet_minutes, alternate_threads))
        now = start + quiet_minutes * 60_000
    figures["changed_customers"] = touch(table, keys, customers, changed, now + 90_000)
    figures["changed"] = await timed(export, now + 120_000)
    midnight = (now // DAY_MS + 1) * DAY_MS
    last = now + 120_000
    if not skip_midnight:
        figures["next_midnight"] = await timed(export, midnight + 30_000)
        figures["a_day_later_idle"] = await timed(export, midnight + 90_000)
        last = midnight + 90_000
    figures["kpi_rows_written"] = sum(rows)
    full = empty_sums()
    for stored in every_record(table, keys):
        add_to(full, contribution(decode_state(stored), last, 30, 14.0))
    exported = empty_sums()
    for part in export._partitions.values():
        add_to(exported, part.sums)
        if part.native is not None:  # what the kernel counted
            add_to(exported, part.native.as_dict())
    figures["equal_to_full_recomputation"] = {k: v for k, v in full.items() if v} == {k: v for k, v in exported.items() if v}
    figures["max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if keys.disk is not None:
        figures["store_disk_mib"] = round(sum(path.stat().st_size for path in Path(data_dir).rglob("*") if path.is_file()) / 2**20, 1)  # type: ignore[arg-type]
        await keys.disk.on_stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=200_000, help="records in the table (default 200,000)")
    parser.add_argument("--templates", type=int, default=2_000, help="distinct generated histories the records copy")
    parser.add_argument("--changed", type=float, default=0.01, help="share of customers with a new event before the third export")
    parser.add_argument("--quiet-minutes", type=int, default=0, help="also an export every minute for this many minutes with nothing changed (at most 480: they end before midnight)")
    parser.add_argument("--quiet-after-days", type=int, default=0, help="start the quiet minutes this many days after the history's end (2 leaves the generator's wave behind)")
    parser.add_argument("--skip-midnight", action="store_true", help="leave out the export after midnight (most customers are due: the longest part at 10M)")
    parser.add_argument("--model", choices=("kernel", "python"), default="kernel",
                        help="recount customers with the Rust kernel, as the worker does where it is built (default), or with the Python model")
    parser.add_argument("--state-store", choices=("memory", "rocksdb"), default="memory",
                        help="keep the records in memory (default) or on the RocksDB store, as a worker with state_store = \"rocksdb\" (its counted records and due entries on disk too)")
    parser.add_argument("--data-dir", type=Path, help="with --state-store rocksdb: the directory the store's temporary directory goes in (made if missing; default: the system's temporary directory); removed after")
    parser.add_argument("--alternate-threads", action="store_true",
                        help="with --state-store rocksdb and --quiet-minutes: every other quiet minute on one thread, reported apart (quiet_minutes_one_thread): "
                        "the export's two threads against one in the same minutes")
    parser.add_argument("--block-cache-mb", type=int, metavar="MB",
                        help="the store's [rocksdb] block_cache_mb (8 to 65536; default: the setting's, 256): with --state-store rocksdb")
    args = parser.parse_args()
    rocksdb = checked_block_cache(parser, args.block_cache_mb, args.state_store)
    if args.alternate_threads and (args.state_store != "rocksdb" or args.quiet_minutes < 2):
        parser.error("--alternate-threads compares the RocksDB walk's threads: give --state-store rocksdb and --quiet-minutes 2 or more")
    if args.data_dir is not None and args.state_store != "rocksdb":
        parser.error("--data-dir is for --state-store rocksdb")
    if args.model == "kernel" and not kernel.available():
        parser.error("--model kernel: the Rust kernel is not built here (scripts/setup.sh builds it where cargo is); use --model python")
    if args.quiet_after_days and not args.quiet_minutes:
        parser.error("--quiet-after-days says when the quiet minutes start: give --quiet-minutes too")
    if args.customers < 1 or args.templates < 1 or not 0 <= args.changed <= 1 or not 0 <= args.quiet_minutes <= 480 or not 0 <= args.quiet_after_days <= 60:
        parser.error("--customers and --templates must be at least 1, --changed between 0 and 1, --quiet-minutes between 0 and 480, --quiet-after-days between 0 and 60")
    if args.data_dir is not None:
        if args.data_dir.exists() and not args.data_dir.is_dir():
            parser.error(f"--data-dir {args.data_dir}: that is a file, not a directory")
        try:
            args.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            parser.error(f"--data-dir {args.data_dir}: cannot make it ({error.strerror})")
    probe_before = speed_probe()  # how fast this shared VM runs the model now: compare runs only at similar figures
    with tempfile.TemporaryDirectory(prefix="fleet-export-", dir=args.data_dir) as directory:
        data_dir = directory if args.state_store == "rocksdb" else None
        figures = asyncio.run(measure(args.customers, args.templates, args.changed, args.quiet_minutes, args.skip_midnight, args.quiet_after_days, args.model, data_dir, args.alternate_threads, rocksdb))
    figures["speed_probe_microseconds_per_event"] = {"before": probe_before, "after": speed_probe()}
    print(json.dumps(figures, indent=2))
    write_result("fleet_export", figures)


if __name__ == "__main__":
    main()
