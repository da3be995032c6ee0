"""The on-demand benchmarks are not run by the suite, but each must at least start."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = sorted(path.name for path in BENCH.glob("*.py"))


def test_there_are_benchmarks() -> None:
    assert {"throughput.py", "scale.py", "model_cost.py", "compare.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_explains_the_script(script: str) -> None:
    shown = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "usage:" in shown.stdout


def throughput_bench() -> ModuleType:
    """bench/throughput.py as a module (bench/ is a directory of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("throughput_bench", BENCH / "throughput.py")
    assert spec is not None and spec.loader is not None
    sys.path.insert(0, str(BENCH))
    try:
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(str(BENCH))
    return bench


def test_the_latency_feed_sends_each_event_as_generated_with_the_time_it_is_sent() -> None:
    """bench/throughput.py encodes the feed beforehand and only splices in the send time."""
    import msgspec

    from scoring.contract import Event, decode_event
    from stream.commands.generate import EventSynthesizer

    bench = throughput_bench()
    encoder = msgspec.json.Encoder()
    sent_ms = 1_790_000_000_123
    synthesizer = EventSynthesizer(50, seed=5)
    for _ in range(200):
        generated = synthesizer.next_event(1_700_000_000_000, 0.5)
        before, after = bench.split_around_time(generated.value, encoder)
        value = before + b"%d" % sent_ms + after
        assert msgspec.json.decode(value) == {**generated.value, "occurred_at": sent_ms}
        event = decode_event(generated.customer_id.encode(), value, generated.topic, sent_ms, 0)
        assert isinstance(event, Event) and event.occurred_at_ms == sent_ms


@pytest.mark.parametrize(
    ("rates", "ratio", "chosen"),
    [
        # One round: its own ratio.
        ([(9000, 5000)], 1.8, 0),
        # Three rounds: the middle ratio (1.4), from the round it came from, not the mean (1.5).
        ([(9500, 5000), (6000, 5000), (7000, 5000)], 1.4, 2),
        # Two rounds: the lower of the two.
        ([(8000, 4000), (6000, 4000)], 1.5, 1),
    ],
)
def test_scaling_reports_the_median_round(rates: list[tuple[int, int]], ratio: float, chosen: int) -> None:
    rounds = [({"events_per_second": group}, {"events_per_second": one}) for group, one in rates]
    summary = throughput_bench().scaling_summary(rounds)
    assert summary["ratio"] == pytest.approx(ratio)
    assert summary["group"] is rounds[chosen][0] and summary["one_worker"] is rounds[chosen][1]
    assert [entry["ratio"] for entry in summary["rounds"]] == pytest.approx([group / one for group, one in rates])


def test_a_processes_cpu_is_split_by_thread_group_and_nothing_is_lost() -> None:
    import ctypes
    import os
    import threading

    bench = throughput_bench()
    stop = threading.Event()

    def spin() -> None:
        ctypes.CDLL(None).prctl(15, b"GC Thread#9", 0, 0, 0)  # PR_SET_NAME: named as a JVM's GC thread
        while not stop.is_set():
            sum(range(1000))

    # CPU of threads that already ended (other tests' servers, say) counts in the process's
    # total but in no live thread's: set it aside.
    ended = bench.process_stats(os.getpid())[0] - sum(bench.thread_cpu(os.getpid()).values())
    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        deadline = bench.time.monotonic() + 5
        while bench.thread_cpu(os.getpid())["gc"] < 0.05 and bench.time.monotonic() < deadline:
            bench.time.sleep(0.05)
        groups = bench.thread_cpu(os.getpid())
    finally:
        stop.set()
        spinner.join()
    assert list(groups) == ["requests", "jit", "gc", "log_cleaner", "other"]
    assert groups["gc"] >= 0.05 and groups["requests"] == groups["jit"] == groups["log_cleaner"] == 0
    assert sum(groups.values()) + ended == pytest.approx(bench.process_stats(os.getpid())[0], abs=0.1)


def test_the_machine_s_cpu_is_read_as_busy_idle_iowait_and_steal(tmp_path: Path) -> None:
    bench = throughput_bench()
    ticks = bench.os.sysconf("SC_CLK_TCK")
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice, in clock ticks
    stat.write_text(f"cpu  {ticks * 3} {ticks} {ticks * 2} {ticks * 50} {ticks * 4} 0 {ticks} {ticks * 7} {ticks * 3} 0\ncpu0 1 2 3\n")
    assert bench.machine_cpu(stat) == {"busy": 7.0, "idle": 50.0, "iowait": 4.0, "steal": 7.0}  # guest time is in user

    before = bench.machine_cpu()
    deadline = bench.time.process_time() + 0.3
    while bench.time.process_time() < deadline:
        sum(range(1000))
    assert bench.machine_cpu()["busy"] - before["busy"] >= 0.2


def test_a_scaling_phase_says_where_the_machine_s_cores_went() -> None:
    bench = throughput_bench()
    phase = {
        "workers": 2, "events_per_second": 80_000.0, "worker_cores": 1.5, "worker_cpu_microseconds_per_event": 18.0,
        "broker_cores": 0.25, "redis_cores": 0.1,
        "machine_cores": {"idle": 0.04, "iowait": 0.0, "steal": 0.08, "other_processes": 0.03},
    }
    assert bench.describe_phase(phase) == (
        "2 worker(s) 80000 events/s (1.50 cores, 18 us of CPU per event, broker 0.25 cores, redis 0.10 cores;"
        " machine: other processes 0.03, idle 0.04, iowait 0.00, steal 0.08 cores)"
    )


def test_the_scaling_rate_is_taken_while_every_worker_is_busy_past_its_start_up_and_before_it_runs_out() -> None:
    bench = throughput_bench()
    times = [0.5 * index for index in range(14)]
    # worker 1 joins late; both crawl for a second after the rebalance; worker 0 runs out first
    per_interval = [(0, 0), (9, 0), (9, 0), (6, 6), (6, 6), (60, 50), (64, 55), (58, 60), (62, 58), (61, 57), (20, 59), (0, 60), (0, 58)]
    counts = [[0.0, 0.0]]
    for first, second in per_interval:
        counts.append([counts[-1][0] + first, counts[-1][1] + second])
    whole = bench.busy_stretch(counts)
    assert whole == [3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert bench.settled(times, counts, whole) == [5, 6, 7, 8, 9, 10]  # worker 0 ran out within the last interval
    assert bench.settled(times, counts, whole, least=7) == whole  # too little left: the whole stretch
    steady = [[0.0, 0.0]] + [[10.0 * index, 10.0 * index] for index in range(1, 8)]
    assert bench.settled(times, steady, bench.busy_stretch(steady)) == list(range(8))


def test_a_running_process_and_its_threads_are_pinned_and_given_back_every_cpu() -> None:
    bench = throughput_bench()
    if len(bench.ALL_CPUS) < 2:
        pytest.fail("this test needs a machine with two CPUs or more (the project's is two)")
    child = subprocess.Popen([sys.executable, "-c", "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); time.sleep(30)"])
    try:
        deadline = bench.time.monotonic() + 10
        while len(list(Path(f"/proc/{child.pid}/task").iterdir())) < 2 and bench.time.monotonic() < deadline:
            bench.time.sleep(0.05)
        first = frozenset({min(bench.ALL_CPUS)})
        bench.pin([child.pid, None], first)
        threads = [int(task.name) for task in Path(f"/proc/{child.pid}/task").iterdir()]
        assert len(threads) == 2 and all(bench.os.sched_getaffinity(thread) == first for thread in threads)
        bench.pin([child.pid], bench.ALL_CPUS)
        assert all(bench.os.sched_getaffinity(thread) == bench.ALL_CPUS for thread in threads)
    finally:
        child.kill()
        child.wait()


def test_cpu_lists_are_read_as_taskset_writes_them_and_refused_clearly() -> None:
    import argparse

    bench = throughput_bench()
    if not {0, 1} <= bench.ALL_CPUS:
        pytest.fail("this test needs CPUs 0 and 1 (the project's machine has two)")
    assert bench.cpu_list("0") == frozenset({0})
    assert bench.cpu_list("1,0") == frozenset({0, 1})
    with pytest.raises(argparse.ArgumentTypeError, match="not a comma-separated list of CPU numbers"):
        bench.cpu_list("0-1")
    with pytest.raises(argparse.ArgumentTypeError, match="this process may use CPUs"):
        bench.cpu_list("4096")
