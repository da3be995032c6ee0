"""Throughput of the worker against its ceiling, floor and peer, same broker, same run.

Run on demand (not part of the test suite):

    .venv/bin/python bench/throughput.py --events 100000

It starts the project's Kafka and Redis if needed, loads N generated events into
fresh topics, then drains them with (1) a plain aiokafka consumer that only
decodes the JSON (the ceiling), (2) a naive Faust agent that decodes and updates
one table key per event (the floor), (3) Quix Streams keeping a per-customer
count in its state, (3b) a Quix Streams application running this project's own model
(``scoring.pipeline.step`` with the record in Quix's RocksDB state, scores and alerts
produced to a topic: what a user would build instead), and (4) ``healthscore worker``,
until every event is counted in its /metrics. Before all that it measures the latency from event
time to the score on the health topic at a fixed rate (on a quiet broker), and after
it the scaling: two workers in one group against one worker, each on three times the
events loaded before they start, over the stretch where every worker is busy
(``--scaling-rounds N`` alternates the two N times and reports the median ratio;
``--one-worker-cpus 0`` gives the one-worker phase, broker and Redis included, one CPU). It
prints a table and writes it as JSON under bench/results/. (2), (3) and (3b) live in
bench/peers.py.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import msgspec
from aiokafka.partitioner import DefaultPartitioner

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model_cost import speed_probe  # noqa: E402  (bench/ is the script's directory)
from stream.commands.generate import EventSynthesizer, GeneratedEvent  # noqa: E402
from stream.kafka.clients import connection_options  # noqa: E402
from stream.services.local import default_paths, start_kafka, start_redis  # noqa: E402
from stream.settings import TopicNames, isolated_environment, load_settings  # noqa: E402
from stream.kafka.topics import delete_topics_containing, ensure_topics  # noqa: E402

DAY_MS = 86_400_000


def namespace_env(tag: str, partitions: int, port: int) -> dict[str, str]:
    return isolated_environment(tag, partitions, port, ROOT / ".data" / f"bench-{tag}")


def prepare_namespace(prefix: str, partitions: int, port: int, extra: dict[str, str] | None = None):
    """Kafka and Redis started if need be, a fresh namespace (topics, group, Redis prefix) in this
    process's environment, its topics created: (tag, environment, settings)."""
    paths = default_paths()
    start_redis(paths)
    start_kafka(paths)
    tag = f"{prefix}{uuid.uuid4().hex[:6]}"
    env = {**namespace_env(tag, partitions, port), **(extra or {})}
    os.environ.update(env)
    settings = load_settings()
    asyncio.run(ensure_topics(settings, echo=lambda _: None))
    return tag, env, settings


def write_result(kind: str, result: dict) -> Path:
    """bench/results/<kind>-<UTC time>.json, stamped with the date and the machine."""
    now = datetime.now(timezone.utc)
    stamped = {
        "date": now.isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        **result,
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{kind}-{now:%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(stamped, indent=2))
    print(f"written to {path}")
    return path


def settings_for(env: dict[str, str]):
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        return load_settings()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


async def load_events(settings, events: int, customers: int) -> None:
    from aiokafka import AIOKafkaProducer

    names = {kind: name for name, kind in settings.topics.inputs().items()}
    producer = AIOKafkaProducer(**connection_options(settings.kafka), linger_ms=20, max_batch_size=256 * 1024, acks=1)
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
        **connection_options(settings.kafka),
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


def events_counted(metrics: dict[str, float]) -> float:
    """Every input record a worker has finished with, whatever the outcome (its /metrics)."""
    return sum(v for k, v in metrics.items() if k.startswith("healthscore_events_total{"))


def events_done(port: int) -> float:
    return events_counted(read_metrics(port))


def process_stats(pid: int) -> tuple[float, int]:
    """CPU seconds and resident bytes of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


#: The CPUs this bench may use, as it started: what pinned processes get back afterwards.
ALL_CPUS = frozenset(os.sched_getaffinity(0))


def start_worker(env: dict[str, str], port: int, name: str, cpus: frozenset[int] | None = None) -> subprocess.Popen:
    """``healthscore worker``; with ``cpus``, it and every thread it starts run on those CPUs only."""
    log = open(ROOT / ".data" / f"bench-{name}.log", "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "worker", "--loglevel", "warning"],
        cwd=ROOT, env={**os.environ, **env, "HEALTHSCORE_WEB_PORT": str(port)},
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )


def cpu_list(text: str) -> frozenset[int]:
    """CPU numbers as ``taskset -c`` takes them: 0 or 0,1 (for --one-worker-cpus)."""
    try:
        cpus = frozenset(int(cpu) for cpu in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of CPU numbers, such as 0 or 0,1") from None
    if not cpus <= ALL_CPUS:
        raise argparse.ArgumentTypeError(f"{text!r}: this process may use CPUs {','.join(map(str, sorted(ALL_CPUS)))} only")
    return cpus


def pin(pids: Iterable[int | None], cpus: frozenset[int]) -> None:
    """Every thread of these running processes on ``cpus`` only (the threads they start later
    inherit it): the broker's and Redis's, for a phase that gives the whole stack fewer cores."""
    for pid in pids:
        if pid is None:
            continue
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                os.sched_setaffinity(int(task.name), cpus)
            except ProcessLookupError:  # the thread ended (not being allowed to is an error)
                continue


def stop_workers(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def py_spy() -> Path | None:
    """py-spy from this interpreter's environment (the bench extra), else from PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    found = beside if beside.exists() else shutil.which("py-spy")
    return Path(found) if found else None


def same_inputs(env: dict[str, str], settings, tag: str, partitions: int, port: int) -> dict[str, str]:
    """A namespace of its own (consumer group, changelog, outputs, Redis prefix, data) that reads
    the input topics of ``env``: another worker drains the same loaded events from the start."""
    fresh = namespace_env(tag, partitions, port)
    inputs = set(settings.topics.inputs())
    for field in TopicNames.name_fields():
        if getattr(settings.topics, field) in inputs:
            fresh[f"HEALTHSCORE_TOPICS__{field.upper()}"] = env[f"HEALTHSCORE_TOPICS__{field.upper()}"]
    asyncio.run(ensure_topics(settings_for(fresh), echo=lambda _: None))
    return fresh


def run_workers(env: dict[str, str], ports: list[int], events: int, timeout: float, profile: Path | None = None) -> dict:
    """Drains the loaded events with len(ports) workers in one group; the clock runs from the
    first event any of them processed until all are counted in their /metrics."""
    processes = [start_worker(env, port, f"worker-{index}") for index, port in enumerate(ports)]
    spy = None
    try:
        started = None
        deadline = time.monotonic() + timeout
        done = 0.0
        cpu_at_start = 0.0
        snapshots: list[dict[str, float]] = []
        pause = 0.2
        while time.monotonic() < deadline:
            time.sleep(pause)
            if any(process.poll() is not None for process in processes):
                raise SystemExit("a worker exited early; see .data/bench-worker-*.log")
            try:
                snapshots = [read_metrics(port) for port in ports]
            except OSError:
                continue
            done = sum(events_counted(metrics) for metrics in snapshots)
            if started is None and done > 0:
                started = time.perf_counter() - 0.1
                cpu_at_start = sum(process_stats(process.pid)[0] for process in processes)
                if profile is not None:
                    # py-spy samples the running worker until it exits; the file opens in speedscope.app.
                    spy = subprocess.Popen(
                        [str(py_spy()), "record", *(["--native"] if profile.suffix == ".txt" else []), "--pid", str(processes[0].pid), "--format", "raw" if profile.suffix == ".txt" else "speedscope", "--output", str(profile)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )
            if done >= events:
                break
            if started is not None and done > 0:
                # Each read of /metrics costs the worker about 5 ms: read rarely while far
                # from done, every 0.2 s near the end, so the end is still timed closely.
                rate = done / (time.perf_counter() - started)
                pause = min(2.0, max(0.2, (events - done) / rate / 4))
        if started is None:
            raise SystemExit(f"the worker(s) processed nothing in {timeout:.0f} s; see .data/bench-worker-*.log")
        elapsed = time.perf_counter() - started
        stats = [process_stats(process.pid) for process in processes]

        def total(name: str) -> float:
            return sum(metrics.get(name, 0) for metrics in snapshots)

        return {
            "name": "healthscore worker (full pipeline)" if len(ports) == 1 else f"{len(ports)} healthscore workers",
            "workers": len(ports),
            "events": int(done),
            "seconds": elapsed,
            "events_per_second": done / elapsed,
            "cpu_seconds": sum(cpu for cpu, _ in stats) - cpu_at_start,
            "rss_bytes": max(rss for _, rss in stats),
            "scores_published": total("healthscore_scores_published_total"),
            "batches": total("healthscore_batch_events_count"),
            "mean_batch_events": total("healthscore_batch_events_sum") / max(1.0, total("healthscore_batch_events_count")),
            "batch_seconds": total("healthscore_batch_duration_seconds_sum"),
        }
    finally:
        stop_workers(processes)
        if spy is not None:
            spy.wait(timeout=60)


def scaling_summary(rounds: list[tuple[dict, dict]]) -> dict:
    """The scaling result from rounds of (group, one worker) measured back to back.

    Each round's ratio compares two phases minutes apart, on a machine whose speed can
    halve within that time; the median ratio is reported, with the round it came from
    (the lower middle one for an even count) as ``group`` and ``one_worker``.
    """
    ratios = [group["events_per_second"] / one["events_per_second"] for group, one in rounds]
    middle = sorted(range(len(rounds)), key=ratios.__getitem__)[(len(rounds) - 1) // 2]
    group, one = rounds[middle]
    return {
        "group": group,
        "one_worker": one,
        "ratio": ratios[middle],
        "rounds": [{"group": g, "one_worker": o, "ratio": ratio} for (g, o), ratio in zip(rounds, ratios)],
    }


#: The broker's threads by what they do, from the start of their names (/proc/<pid>/task/*/comm).
BROKER_THREADS = (
    ("requests", ("data-plane-kaf",)),
    ("jit", ("C1 CompilerThre", "C2 CompilerThre")),
    ("gc", ("G1 ", "GC Thread", "VM Thread")),
    ("log_cleaner", ("kafka-log-clean",)),
)


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of a JVM's threads by BROKER_THREADS group (the rest as "other")."""
    ticks = os.sysconf("SC_CLK_TCK")
    groups = dict.fromkeys([name for name, _ in BROKER_THREADS] + ["other"], 0.0)
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        group = next((group for group, prefixes in BROKER_THREADS if name.startswith(prefixes)), "other")
        groups[group] += (int(fields[11]) + int(fields[12])) / ticks
    return groups


def machine_cpu(stat: Path = Path("/proc/stat")) -> dict[str, float]:
    """CPU seconds of the whole machine so far: busy, idle, iowait and steal (time the VM's
    host gave to someone else, which a process's own CPU time cannot show)."""
    fields = [int(field) for field in stat.read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    ticks = os.sysconf("SC_CLK_TCK")
    return {
        "busy": (user + nice + system + irq + softirq) / ticks,
        "idle": idle / ticks,
        "iowait": iowait / ticks,
        "steal": steal / ticks,
    }


def describe_phase(rate: dict) -> str:
    """One scaling phase: its rate, and where the CPU went over the stretch measured."""
    services = ""
    if rate.get("broker_cores") is not None:
        split = ", ".join(f"{name.replace('_', ' ')} {cores:.2f}" for name, cores in (rate.get("broker_threads_cores") or {}).items())
        services += f", broker {rate['broker_cores']:.2f} cores" + (f" ({split})" if split else "")
    if rate.get("redis_cores") is not None:
        services += f", redis {rate['redis_cores']:.2f} cores"
    machine = rate.get("machine_cores")
    if machine:
        services += (
            f"; machine: other processes {machine['other_processes']:.2f}, idle {machine['idle']:.2f},"
            f" iowait {machine['iowait']:.2f}, steal {machine['steal']:.2f} cores"
        )
    settling = ""
    start_up, run_out = rate.get("seconds_trimmed") or (0, 0)
    if start_up or run_out:
        settling = (
            f" without {start_up:.1f} s of start-up and {run_out:.1f} s of running out"
            f" ({rate['events_per_second_untrimmed']:.0f} with them)"
        )
    where = f" on CPU(s) {','.join(map(str, rate['cpus']))} with the broker and Redis" if rate.get("cpus") else ""
    return (
        f"{rate['workers']} worker(s){where} {rate['events_per_second']:.0f} events/s{settling}"
        f" ({rate['worker_cores']:.2f} cores, {rate['worker_cpu_microseconds_per_event']:.0f} us of CPU per event{services})"
    )


def service_pid(pidfile: Path) -> int | None:
    """A service's process if the project started it here (`healthscore services start`)."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}/stat").exists() else None


def busy_stretch(counts: list[list[float]]) -> list[int]:
    """Indices of the longest run of samples in which every worker's count grew at every sample."""
    stretch: list[int] = []
    longest: list[int] = []
    for index in range(1, len(counts)):
        if all(now > before for now, before in zip(counts[index], counts[index - 1])):
            stretch = stretch + [index] if stretch else [index - 1, index]
            longest = max(longest, stretch, key=len)
        else:
            stretch = []
    return longest


def settled(times: list[float], counts: list[list[float]], stretch: list[int], least: int = 5) -> list[int]:
    """The stretch from its first to its last interval in which every worker ran at least half
    its median rate.

    A group's first interval or two (the rebalance's end, fetch positions, first fetches) is
    start-up, not sustained throughput, and a worker that runs out of events within the last
    interval ran for part of it only. Either weighs about twice as much in a two-worker phase
    as in the one-worker phase, which lasts twice as long. If too little is left (fewer than
    ``least`` samples), the whole stretch.
    """
    workers = range(len(counts[stretch[0]]))
    rates = [
        [(counts[index][worker] - counts[index - 1][worker]) / (times[index] - times[index - 1]) for worker in workers]
        for index in stretch[1:]
    ]
    medians = [statistics.median(interval[worker] for interval in rates) for worker in workers]
    full = [position for position, interval in enumerate(rates) if all(interval[worker] >= medians[worker] / 2 for worker in workers)]
    if not full or full[-1] + 2 - full[0] < least:
        return stretch
    return stretch[full[0] : full[-1] + 2]


def steady_rate(env: dict[str, str], ports: list[int], events: int, timeout: float, cpus: frozenset[int] | None = None) -> dict:
    """Events/s of len(ports) workers in one group while every one of them is processing.

    The events are loaded before the workers start, so no feed shares the cores with
    them. Each worker's /metrics is read every 0.5 s; the rate is taken over the longest
    stretch in which every worker's count grew in every interval: after the group has
    settled (a worker that joins first works alone until the rebalance) and before the
    first worker runs out of events, without start-up and running out (``settled``; the rate
    with them is reported too). Over the same stretch it takes the workers' CPU time
    per event and the cores the broker and Redis used (when the project started them), to
    tell a worker that costs more per event in a group from one left less CPU; and the
    broker's by thread group (requests, JIT compiler, GC, log cleaner, other), to tell its
    work for the workers from the JVM's own; and the machine's cores that were idle, waiting
    for I/O, stolen by the VM's host or busy with other processes (the bench itself among
    them), to tell a round that had less CPU from one that used it worse. With ``cpus``, the
    workers, the broker and Redis run on those CPUs only for the phase.
    """
    paths = default_paths()
    services = {"broker": service_pid(paths.kafka / "kafka.pid"), "redis": service_pid(paths.redis / "redis.pid")}
    if cpus:
        pin(services.values(), cpus)
    processes = [start_worker(env, port, f"scaling-{len(ports)}-{index}", cpus) for index, port in enumerate(ports)]
    samples: list[tuple[float, list[float], float, dict[str, float], dict[str, float], dict[str, float]]] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if any(process.poll() is not None for process in processes):
                raise SystemExit("a worker exited early; see .data/bench-scaling-*.log")
            try:
                counts = [events_done(port) for port in ports]
            except OSError:
                continue
            worker_cpu = sum(process_stats(process.pid)[0] for process in processes)
            service_cpu = {name: process_stats(pid)[0] for name, pid in services.items() if pid is not None}
            broker_threads = thread_cpu(services["broker"]) if services["broker"] is not None else {}
            samples.append((time.perf_counter(), counts, worker_cpu, service_cpu, broker_threads, machine_cpu()))
            if sum(counts) >= events:
                break
    finally:
        stop_workers(processes)
        if cpus:
            pin(services.values(), ALL_CPUS)
    times = [sample[0] for sample in samples]
    counts_at = [sample[1] for sample in samples]
    whole = busy_stretch(counts_at)
    if len(whole) < 5:
        raise SystemExit(f"{len(ports)} worker(s) were never all busy for 2 s; load more events (--events)")
    longest = settled(times, counts_at, whole)
    first_time, first_counts, first_worker_cpu, first_service_cpu, first_threads, first_machine = samples[longest[0]]
    last_time, last_counts, last_worker_cpu, last_service_cpu, last_threads, last_machine = samples[longest[-1]]
    seconds = last_time - first_time
    measured = sum(last_counts) - sum(first_counts)
    service_cores = {
        name: (last_service_cpu[name] - first_service_cpu[name]) / seconds if name in first_service_cpu else None
        for name in services
    }
    machine_cores = {name: (last_machine[name] - first_machine[name]) / seconds for name in last_machine}
    worker_cores = (last_worker_cpu - first_worker_cpu) / seconds
    machine_cores["other_processes"] = machine_cores.pop("busy") - worker_cores - sum(
        cores for cores in service_cores.values() if cores is not None
    )
    whole_seconds = times[whole[-1]] - times[whole[0]]
    return {
        "workers": len(ports),
        "cpus": sorted(cpus) if cpus else None,
        "seconds_measured": seconds,
        "events_measured": measured,
        "events_per_second": measured / seconds,
        "seconds_trimmed": (times[longest[0]] - times[whole[0]], times[whole[-1]] - times[longest[-1]]),
        "events_per_second_untrimmed": (sum(counts_at[whole[-1]]) - sum(counts_at[whole[0]])) / whole_seconds,
        "interval_events_per_second": [
            round((sum(counts_at[index]) - sum(counts_at[index - 1])) / (times[index] - times[index - 1])) for index in whole[1:]
        ],
        "worker_cores": worker_cores,
        "worker_cpu_microseconds_per_event": (last_worker_cpu - first_worker_cpu) / measured * 1e6,
        "broker_cores": service_cores["broker"],
        "redis_cores": service_cores["redis"],
        "broker_threads_cores": {name: (last_threads[name] - first_threads[name]) / seconds for name in last_threads},
        "machine_cores": machine_cores,
    }


class _Trigger(msgspec.Struct):
    trigger_event_id: str | None = None


def split_around_time(value: dict, encoder: msgspec.json.Encoder) -> tuple[bytes, bytes]:
    """The event's JSON before and after its ``occurred_at`` value."""
    head = {name: value[name] for name in ("event_id", "type", "customer_id")}
    return encoder.encode(head)[:-1] + b',"occurred_at":', b',"data":' + encoder.encode(value["data"]) + b"}"


class _PlannedFeed:
    """Events encoded ahead of a latency run, each split around its ``occurred_at`` value, so
    that sending one costs a byte join and a batch append."""

    def __init__(self, events: Iterable[GeneratedEvent], topic_names: dict, partitions: int) -> None:
        encoder = msgspec.json.Encoder()
        partitioner = DefaultPartitioner()
        all_partitions = list(range(partitions))
        self.planned: list[tuple[str, int, bytes, str, bytes, bytes]] = []
        for generated in events:
            value = generated.value
            key = generated.customer_id.encode()
            before, after = split_around_time(value, encoder)
            topic = topic_names[generated.topic]
            self.planned.append((topic, partitioner(key, all_partitions, all_partitions), key, value["event_id"], before, after))

    async def send(self, producer: Any, first: int, end: int, sent_at: dict[str, int]) -> None:
        """Stamps events ``first`` to ``end`` (exclusive) with the time now and sends them."""
        now_ms = int(time.time() * 1000)
        stamp = b"%d" % now_ms
        batches: dict[tuple[str, int], Any] = {}
        for topic, partition, key, event_id, before, after in self.planned[first:end]:
            builder = batches.get((topic, partition))
            if builder is None:
                builder = batches[topic, partition] = producer.create_batch()
            sent_at[event_id] = now_ms
            value = before + stamp + after
            if builder.append(key=key, value=value, timestamp=None) is None:  # full: send it, start another
                await producer.send_batch(builder, topic, partition=partition)
                builder = batches[topic, partition] = producer.create_batch()
                builder.append(key=key, value=value, timestamp=None)
        for (topic, partition), builder in batches.items():
            await producer.send_batch(builder, topic, partition=partition)


async def measure_latency(settings, env: dict[str, str], port: int, rate: int, seconds: float, customers: int) -> dict:
    """Feeds one worker `rate` events/s stamped with the time they are sent, and measures, for
    each score it publishes, event time -> the broker's append time on the health topic."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    health = settings.topics.health
    admin = AIOKafkaAdminClient(**connection_options(settings.kafka))
    await admin.start()
    try:
        # The broker stamps each score as it is appended: "on the topic", not "handed to the producer".
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, health, {"message.timestamp.type": "LogAppendTime"})])
    finally:
        await admin.close()
    process = start_worker(env, port, "worker-latency")
    names = {kind: name for name, kind in settings.topics.inputs().items()}
    producer = AIOKafkaProducer(**connection_options(settings.kafka), acks=1)
    # Scores are timed by the broker (LogAppendTime), so the collector can fetch in large, cheap steps.
    consumer = AIOKafkaConsumer(
        **connection_options(settings.kafka), group_id=None, fetch_max_wait_ms=250, fetch_min_bytes=256 * 1024
    )
    await producer.start()
    await consumer.start()
    try:
        partitions = [TopicPartition(health, p) for p in range(settings.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        synthesizer = EventSynthesizer(customers, seed=23)
        encoder = msgspec.json.Encoder()
        sent_at: dict[str, int] = {}
        latencies: list[float] = []
        decoder = msgspec.json.Decoder(_Trigger)  # skips the rest of each score message

        async def collect(until: float) -> None:
            while time.monotonic() < until:
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    for record in records:
                        trigger = decoder.decode(record.value).trigger_event_id
                        if trigger in sent_at:
                            latencies.append(record.timestamp - sent_at.pop(trigger))

        # Warm up until the worker has its partitions and answers, then measure.
        ready_by = time.monotonic() + 120
        while time.monotonic() < ready_by:
            await asyncio.sleep(0.5)
            try:
                if events_done(port) > 0:
                    break
            except OSError:
                pass
            generated = synthesizer.next_event(int(time.time() * 1000), 0.5)
            await producer.send(names[generated.topic], encoder.encode(generated.value), key=generated.customer_id.encode())
        else:
            raise SystemExit("the worker did not start processing within 120 s; see .data/bench-worker-latency.log")
        await collect(time.monotonic() + 2)
        # Generated and encoded beforehand, only stamped when sent, and sent as one producer
        # batch per partition per tick: the feed shares the two cores with the worker and the
        # broker, and encoding and sending each event on the fly took a third of a core at
        # 5,000 events/s (2026-11-23), CPU the worker then lacked.
        planned = int(rate * seconds) + rate
        feed = _PlannedFeed(
            (synthesizer.next_event(int(time.time() * 1000), 0.5) for _ in range(planned)), names, settings.partitions
        )
        collector = asyncio.create_task(collect(time.monotonic() + seconds + 5))
        tick = 0.01
        sent = 0
        cpu_start = time.process_time()
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            # Whatever is due by now, so a slow turn of the loop is caught up, not lost.
            due = min(planned, int(rate * (time.monotonic() - start)))
            await feed.send(producer, sent, due, sent_at)
            sent = due
            await asyncio.sleep(tick)
        elapsed = time.monotonic() - start
        feed_cpu = time.process_time() - cpu_start  # the feed's and the collector's
        await collector
    finally:
        await producer.stop()
        await consumer.stop()
        stop_workers([process])
    if not latencies:
        raise SystemExit("no score of the measured events reached the health topic")
    latencies.sort()

    def percentile(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    return {
        "name": f"healthscore worker at {rate} events/s",
        "topic": health,
        "offered_events_per_second": sent / elapsed,
        "scores_measured": len(latencies),
        "feed_cpu_share": feed_cpu / elapsed,
        "latency_ms": {"p50": percentile(0.50), "p95": percentile(0.95), "p99": percentile(0.99), "max": latencies[-1]},
    }


def latency_run(env: dict[str, str], port: int, rate: int, seconds: float, customers: int) -> dict:
    return asyncio.run(measure_latency(settings_for(env), env, port, rate, seconds, customers))


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
            *(["--output", f"{settings.topics.health}.quix-model"] if peer == "quixstreams-model" else []),
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
    names = {
        "naive-faust": "naive Faust agent, table update per event",
        "quixstreams": "Quix Streams, per-customer state",
        "quixstreams-model": "Quix Streams running this model",
    }
    return {
        **{name: result[name] for name in ("scores", "alerts", "rejected") if name in result},
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
    parser.add_argument(
        "--peers", default="naive-faust,quixstreams,quixstreams-model",
        help="the peers to run, comma-separated (default: naive-faust,quixstreams,quixstreams-model)",
    )
    parser.add_argument(
        "--worker-stores", default="memory",
        help="the worker's state_store for its run, comma-separated: memory, rocksdb or both (default memory);"
        " each store's worker drains the same loaded events, as a consumer group and changelog of its own",
    )
    parser.add_argument("--workers", type=int, default=2, help="scaling: this many workers in one group against one (default 2; 1: skip)")
    parser.add_argument(
        "--scaling-rounds", type=int, default=1,
        help="scaling: measure the group and one worker this many times, alternately, and report the median"
        " of the rounds' ratios (default 1; this VM's speed drifts within minutes, so 3 or more to judge the target)",
    )
    parser.add_argument(
        "--one-worker-cpus", type=cpu_list, metavar="LIST",
        help="scaling: run the one-worker phase with the worker, the broker and Redis on these CPUs only (for"
        " example 0), so that 'one worker on one core' includes the services it needs; the group phase keeps every"
        " CPU. Default: not pinned (the one worker has a core, the broker and Redis the other)",
    )
    parser.add_argument("--latency-rate", type=int, default=5000, help="events/s offered in the latency run (default 5000; 0: skip)")
    parser.add_argument("--latency-seconds", type=float, default=30, help="length of the latency run (default 30)")
    parser.add_argument("--keep-topics", action="store_true", help="keep the run's topics (deleted at the end by default)")
    parser.add_argument("--profile", type=Path, help="record the worker with py-spy (pip install py-spy) into this file: speedscope, or collapsed stacks when it ends in .txt")
    args = parser.parse_args()
    if args.scaling_rounds < 1:
        parser.error("--scaling-rounds must be at least 1")
    if not set(args.peers.split(",")) <= {"naive-faust", "quixstreams", "quixstreams-model"}:
        parser.error("--peers takes naive-faust, quixstreams and quixstreams-model")
    stores = args.worker_stores.split(",")
    if not stores or not set(stores) <= {"memory", "rocksdb"}:
        parser.error("--worker-stores takes memory, rocksdb or memory,rocksdb")
    if args.profile is not None and py_spy() is None:
        parser.error("--profile needs py-spy: pip install -e '.[bench]'")
    if not args.skip_peers and {"quixstreams", "quixstreams-model"} & set(args.peers.split(",")) and importlib.util.find_spec("quixstreams") is None:
        parser.error("the Quix Streams peers need quixstreams: pip install -e '.[bench]' (or leave them out with --peers naive-faust, or --skip-peers)")

    print("Speed probe (the model alone, no I/O)...")
    probe_before = speed_probe()
    paths = default_paths()
    start_redis(paths)
    start_kafka(paths)
    tag = f"b{uuid.uuid4().hex[:6]}"
    port = 16066
    env = namespace_env(tag, args.partitions, port)
    os.environ.update(env)
    settings = load_settings()
    asyncio.run(ensure_topics(settings, echo=lambda _: None))
    latency = None
    if args.latency_rate:
        print(f"Measuring latency at {args.latency_rate} events/s for {args.latency_seconds:.0f} s...")
        # First, on a quiet broker (the later phases leave it compacting their
        # changelogs for a while), and on fresh topics: no backlog, so the worker runs at the offered rate from the start.
        latency_env = namespace_env(f"{tag}l", args.partitions, port + 10)
        latency_settings = settings_for(latency_env)
        asyncio.run(ensure_topics(latency_settings, echo=lambda _: None))
        # In a fresh interpreter: this process's heap after the other phases makes its own
        # pauses (the feed's clock, not the worker's) show up as latency.
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            latency = pool.apply(
                latency_run, (latency_env, port + 10, args.latency_rate, args.latency_seconds, args.customers)
            )
    print(f"Loading {args.events} events for {args.customers} customers into {args.partitions}-partition topics...")
    asyncio.run(load_events(settings, args.events, args.customers))
    print("Running the plain aiokafka consumer...")
    plain = asyncio.run(plain_consumer(settings, args.events))
    peers = []
    if not args.skip_peers:
        for peer in args.peers.split(","):
            print(f"Running {peer}...")
            peers.append(run_peer(peer, settings, args.events, args.timeout))
    workers = []
    for store in stores:
        print(f"Running the worker ({store} store)...")
        store_env = env if store == stores[0] else same_inputs(env, settings, f"{tag}{store[0]}", args.partitions, port)
        workers.append(run_workers({**store_env, "HEALTHSCORE_STATE_STORE": store}, [port], args.events, args.timeout, args.profile if store == stores[0] else None))
        workers[-1]["name"] += f" [{store}]"
        workers[-1]["state_store"] = store
    worker = workers[0]
    scaled = None
    if args.workers > 1:
        print(
            f"Scaling: {args.workers} workers, then one, each on {3 * args.events} events loaded before they start"
            f" ({args.scaling_rounds} round(s))..."
        )
        rounds = []
        for round_number in range(args.scaling_rounds):
            rates = []
            for count in (args.workers, 1):
                scaling_env = namespace_env(f"{tag}x{count}r{round_number}", args.partitions, port)
                scaling_settings = settings_for(scaling_env)
                asyncio.run(ensure_topics(scaling_settings, echo=lambda _: None))
                asyncio.run(load_events(scaling_settings, 3 * args.events, args.customers))
                cpus = args.one_worker_cpus if count == 1 else None
                rates.append(steady_rate(scaling_env, [port + 1 + index for index in range(count)], 3 * args.events, args.timeout, cpus))
            rounds.append((rates[0], rates[1]))
            print(f"  round {round_number + 1}: " + " against ".join(describe_phase(rate) for rate in rates))
        scaled = scaling_summary(rounds)
    print("Speed probe again...")
    probe = {"before": probe_before, "after": speed_probe()}
    failed = [row for row in peers if "error" in row]
    for row in failed:
        print(f"{row['name']}: {row['error']}")
    rows = [plain, *[row for row in peers if "error" not in row], *workers]
    ceiling = plain["events_per_second"]
    print(f"\n{'consumer':<44} {'events':>8} {'seconds':>8} {'events/s':>10} {'vs plain':>9} {'CPU s':>7} {'RSS MB':>7}")
    for row in rows:
        row["ratio_to_plain"] = row["events_per_second"] / ceiling
        rss = f"{row['rss_bytes'] / 1e6:.0f}" if "rss_bytes" in row else "-"
        print(f"{row['name']:<44} {row['events']:>8} {row['seconds']:>8.2f} {row['events_per_second']:>10.0f} {row['ratio_to_plain']:>8.3f}x {row['cpu_seconds']:>7.1f} {rss:>7}")
    if scaled:
        group, one = scaled["group"], scaled["one_worker"]
        round_ratios = ", ".join(f"{entry['ratio']:.2f}" for entry in scaled["rounds"])
        print(
            f"scaling, all busy: {group['workers']} workers {group['events_per_second']:.0f} events/s"
            f" (over {group['seconds_measured']:.1f} s), one worker"
            + (f" on CPU(s) {','.join(map(str, one['cpus']))} with the broker and Redis" if one.get("cpus") else "")
            + f" {one['events_per_second']:.0f} events/s"
            f" (over {one['seconds_measured']:.1f} s); ratio {scaled['ratio']:.2f}x"
            + (
                f"; the median of {len(scaled['rounds'])} rounds' ratios ({round_ratios})"
                if len(scaled["rounds"]) > 1 else ""
            )
        )
    if latency:
        lat = latency["latency_ms"]
        print(
            f"latency, event time -> score on {latency['topic']} at {latency['offered_events_per_second']:.0f} events/s:"
            f" p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms, p99 {lat['p99']:.0f} ms, max {lat['max']:.0f} ms"
            f" ({latency['scores_measured']} scores; the feed used {latency['feed_cpu_share']:.0%} of a core)"
        )
    for row in peers:
        if "scores" in row:
            print(
                f"{row['name']}: {row['scores']} scores and {row['alerts']} alerts produced (the worker merges the topics in event-time order;"
                f" this peer reads each on its own); "
                + ", ".join(f"worker [{w['state_store']}] {row['events_per_second'] and w['events_per_second'] / row['events_per_second']:.2f}x its rate" for w in workers)
            )
    print(
        f"worker: {worker['scores_published']:.0f} scores published; {worker['batches']:.0f} batches of"
        f" {worker['mean_batch_events']:.0f} records on average, {worker['batch_seconds']:.1f} s inside them"
    )
    print(
        f"speed probe: the model alone took {probe['before']:.1f} us/event before the run and {probe['after']:.1f} after"
        " (bench/model_cost.py; compare runs only at similar probe figures)"
    )
    write_result(
        "throughput",
        {
            "events": args.events,
            "customers": args.customers,
            "partitions": args.partitions,
            "rows": rows,
            "scaling": scaled,
            "latency": latency,
            "speed_probe_microseconds_per_event": probe,
        },
    )
    if not args.keep_topics:
        deleted = asyncio.run(delete_topics_containing(settings.kafka, [tag]))
        print(f"deleted the run's {deleted} topics (--keep-topics keeps them)")


if __name__ == "__main__":
    main()
