"""Erasure, end to end on a real broker and Redis: `healthscore erase` removes a customer's
state (a changelog tombstone), Redis keys and latest score (a customer-health tombstone),
records it on the audit topic without the id, and nothing brings the customer back: not a
SIGKILL and restart, not a rebalance to a second worker, not a sweep. New events for the
id start a new record."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import redis

from scoring.privacy import subject_hash
from stream.kafka.topics import changelog_topic
from tests.integration.conftest import (
    Namespace,
    WorkerProcess,
    event,
    event_at,
    free_port,
    healthscore,
    kcat_consume,
    kcat_produce,
    metric_value,
    wait_for,
)

HASH_KEY = "a-test-hash-key-0123456789abcdef"


def health_of(namespace: Namespace, customer: str, port: str | None = None) -> tuple[int, dict]:
    port = port or namespace.env["HEALTHSCORE_WEB_PORT"]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/customers/{customer}/health", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {}


def latest_value_sizes(topic: str) -> dict[str, int]:
    """Each key's latest record on ``topic``: its value's size, -1 for a tombstone."""
    latest: dict[str, int] = {}
    for line in kcat_consume(topic, "%k\t%S\n"):
        key, _, size = line.partition("\t")
        latest[key] = int(size)
    return latest


def redis_traces(namespace: Namespace, customer: str) -> list[str]:
    client = redis.Redis.from_url(namespace.settings.redis_url, decode_responses=True)
    prefix = namespace.settings.redis_key_prefix
    found = [key for key in (f"{prefix}:customer:{customer}", f"{prefix}:alerts:{customer}") if client.exists(key)]
    if client.zscore(f"{prefix}:scores", customer) is not None:
        found.append(f"{prefix}:scores member")
    return found


def sweeps_ended(worker: WorkerProcess) -> float:
    """Partition sweeps ended (a sweep may visit no customer: the due index)."""
    return metric_value(worker.metrics_url, "healthscore_sweep_duration_seconds_count")


def sweep_and_wait(namespace: Namespace, worker: WorkerProcess) -> None:
    before = sweeps_ended(worker)
    healthscore(namespace, "sweep")
    wait_for(lambda: sweeps_ended(worker) >= before + namespace.settings.partitions, timeout=60, message="a sweep")


def test_an_erased_customer_is_gone_everywhere_and_stays_gone(namespace: Namespace, tmp_path) -> None:
    namespace.env["HEALTHSCORE_PRIVACY__HASH_KEY"] = HASH_KEY
    namespace.env["HEALTHSCORE_SESSION_TIMEOUT_SECONDS"] = "6"
    worker = WorkerProcess(namespace, tmp_path / "worker.log")
    worker.start()
    second: WorkerProcess | None = None
    try:
        kcat_produce(namespace.topic("payments"), [
            ("erin", event("e-sub", "subscription.updated", "erin", 2, {"mrr": 90.0})),
            ("erin", event("e-cancel", "subscription.cancelled", "erin", 1, {"reason": "price"})),
        ])
        kcat_produce(namespace.topic("usage"), [(c, event(f"{c}-u", "usage.session", c, 1.5, {"user_id": "u1", "duration_seconds": 60})) for c in ("erin", "olga")])
        wait_for(lambda: health_of(namespace, "erin")[1].get("recent_alerts") and health_of(namespace, "olga")[0] == 200,
                 timeout=60, message="erin scored with her alert", explain=worker.log_tail)

        requested = healthscore(namespace, "erase", "erin", "--reason", "ticket 42")
        assert "Erasure requested for 1 customer(s)" in requested.stdout
        status = wait_for(lambda: _status(namespace), timeout=60, message="the erasure done", explain=worker.log_tail)
        assert "state, changelog, redis, customer-health" in status
        assert "churn-alerts.delivery-failed: 20" in status and "may return: no" in status  # what goes by retention, and when

        assert health_of(namespace, "erin")[0] == 404
        assert redis_traces(namespace, "erin") == []
        assert health_of(namespace, "olga")[0] == 200  # only erin
        # The changelog's tombstone goes with the next offset commit (commit_interval_seconds).
        wait_for(lambda: latest_value_sizes(changelog_topic(namespace.settings)).get("erin") == -1, timeout=30, message="the changelog tombstone")
        assert latest_value_sizes(namespace.topic("health"))["erin"] == -1
        audit = kcat_consume(namespace.topic("erasures"), "%k\t%s\n")
        assert len(audit) == 1 and "erin" not in audit[0]
        subject, _, record = audit[0].partition("\t")
        assert subject == subject_hash(HASH_KEY.encode(), "erin") and json.loads(record)["reason"] == "ticket 42"
        assert metric_value(worker.metrics_url, "healthscore_erasures_total") == 1
        assert "erin" not in worker.log_path.read_text().split("Erased a customer")[-1].splitlines()[0]

        sweep_and_wait(namespace, worker)
        worker.kill()  # SIGKILL: the state comes back from the changelog only
        worker.start()
        sweep_and_wait(namespace, worker)
        assert health_of(namespace, "erin")[0] == 404 and redis_traces(namespace, "erin") == []
        assert health_of(namespace, "olga")[0] == 200

        # A second worker of the group: the partitions split between the two, and each reads its share back.
        second_env = {**namespace.env, "HEALTHSCORE_WEB_PORT": str(free_port()), "HEALTHSCORE_DATA_DIR": str(tmp_path / "second")}
        second = WorkerProcess(dataclasses.replace(namespace, env=second_env), tmp_path / "second.log")
        second.start()
        for process in (second, worker):  # both have their share of the partitions and have read it back
            wait_for(lambda: ready(process), timeout=60, message="partitions assigned and read back", explain=process.log_tail)
        healthscore(namespace, "sweep")
        assert redis_traces(namespace, "erin") == []
        assert latest_value_sizes(changelog_topic(namespace.settings))["erin"] == -1

        # New events for the id are refused (outcome "erased"): it stays erased.
        kcat_produce(namespace.topic("usage"), [("erin", event("e-new", "usage.session", "erin", 0.1, {"user_id": "u9", "duration_seconds": 30}))])
        usage = namespace.topic("usage")
        wait_for(lambda: sum(metric_value(p.metrics_url, "healthscore_events_total", topic=usage, outcome="erased") for p in (worker, second)) == 1,
                 timeout=60, message="erin's new event refused", explain=worker.log_tail)
        assert health_of(namespace, "erin")[0] == 404 and redis_traces(namespace, "erin") == []
        second.stop()
        second = None

        # Another consumer group reads every input from the start: erin is not rebuilt.
        third_env = {**namespace.env, "HEALTHSCORE_APP_ID": f"{namespace.env['HEALTHSCORE_APP_ID']}-again",
                     "HEALTHSCORE_WEB_PORT": str(free_port()), "HEALTHSCORE_DATA_DIR": str(tmp_path / "third")}
        third = WorkerProcess(dataclasses.replace(namespace, env=third_env), tmp_path / "third.log")
        third.start()
        try:
            payments = namespace.topic("payments")
            wait_for(lambda: metric_value(third.metrics_url, "healthscore_events_total", topic=usage, outcome="erased") == 2
                     and metric_value(third.metrics_url, "healthscore_events_total", topic=payments, outcome="erased") == 2
                     and metric_value(third.metrics_url, "healthscore_events_total", topic=usage, outcome="applied") == 1,
                     timeout=90, message="the inputs read again, erin's four events refused", explain=third.log_tail)
            assert health_of(namespace, "erin", third_env["HEALTHSCORE_WEB_PORT"])[0] == 404
            assert health_of(namespace, "olga", third_env["HEALTHSCORE_WEB_PORT"])[0] == 200
        finally:
            third.stop()

        # Allowed back: events from then on start a new record, without the erased history.
        healthscore(namespace, "erase", "--allow-return", "erin")
        wait_for(lambda: "may return: from" in (_status(namespace) or ""), timeout=60, message="the return recorded", explain=worker.log_tail)
        now_ms = int(time.time() * 1000)  # not the module's NOW_MS: the return was allowed just now
        kcat_produce(namespace.topic("usage"), [
            ("erin", event_at("e-old", "usage.session", "erin", now_ms - 600_000, {"user_id": "u9", "duration_seconds": 30})),  # before: refused
            ("erin", event_at("e-back", "usage.session", "erin", now_ms + 30_000, {"user_id": "u9", "duration_seconds": 30})),
        ])
        code, fresh = wait_for(lambda: (lambda answer: answer if answer[0] == 200 else None)(health_of(namespace, "erin", namespace.env["HEALTHSCORE_WEB_PORT"])),
                               timeout=60, message="erin's new record", explain=worker.log_tail)
        assert fresh["recent_alerts"] == []
        assert metric_value(worker.metrics_url, "healthscore_events_total", topic=usage, outcome="erased") >= 1
    finally:
        if second is not None:
            second.stop()
        worker.stop()


def ready(process: WorkerProcess) -> bool:
    """Partitions assigned and their state read back: /healthz says the agent is running."""
    try:
        with urllib.request.urlopen(process.metrics_url.replace("/metrics", "/healthz"), timeout=5) as response:
            return json.loads(response.read()).get("processing") == "running"
    except (urllib.error.URLError, OSError):
        return False


def _status(namespace: Namespace) -> str | None:
    import subprocess

    try:
        return healthscore(namespace, "erase", "--status", "erin").stdout
    except subprocess.CalledProcessError:
        return None


def test_unknown_event_types_are_dead_lettered_or_counted_and_skipped(services: None, tmp_path) -> None:
    """A producer adds a type: by default it is dead-lettered (reason unknown_type); with
    count_and_skip it is only counted, and the dead-letter topic stays empty. Either way the
    customer's known events are applied, and our outputs carry the contract version."""
    from tests.integration.conftest import make_namespace

    for mode in ("dead_letter", "count_and_skip"):
        (tmp_path / mode).mkdir()
        namespace = make_namespace(tmp_path / mode)
        namespace.env["HEALTHSCORE_UNKNOWN_EVENT_TYPES"] = mode
        worker = WorkerProcess(namespace, tmp_path / f"{mode}.log")
        worker.start()
        try:
            usage = namespace.topic("usage")
            kcat_produce(usage, [
                ("nova", event("n-new", "usage.hologram_call", "nova", 1, {"minutes": 3})),
                ("nova", event("n-1", "usage.session", "nova", 0.5, {"user_id": "u", "duration_seconds": 60})),
            ])
            wait_for(lambda: health_of(namespace, "nova")[0] == 200, timeout=60, message="nova scored", explain=worker.log_tail)
            url = worker.metrics_url
            wait_for(lambda: metric_value(url, "healthscore_events_total", topic=usage, outcome="unknown_type")
                     + metric_value(url, "healthscore_dead_letters_total", topic=usage, reason="unknown_type") >= 1, message="the unknown type handled")
            dead = kcat_consume(f"{usage}.dlq", "%k\n")
            if mode == "dead_letter":
                assert dead == ["nova"] and metric_value(url, "healthscore_events_total", topic=usage, outcome="unknown_type") == 0
            else:
                assert dead == [] and metric_value(url, "healthscore_events_total", topic=usage, outcome="unknown_type") == 1
            headers = kcat_consume(namespace.topic("health"), "%h\n")
            assert headers and all("healthscore-contract=1" in line for line in headers)
        finally:
            worker.stop()


def test_customers_silent_for_state_ttl_days_are_evicted_in_event_time(namespace: Namespace, tmp_path) -> None:
    namespace.env["HEALTHSCORE_STATE_TTL_DAYS"] = "30"
    worker = WorkerProcess(namespace, tmp_path / "worker.log")
    worker.start()
    try:
        kcat_produce(namespace.topic("usage"), [
            ("old", event("old-1", "usage.session", "old", 80 * 24, {"user_id": "u", "duration_seconds": 60})),
            ("mid", event("mid-1", "usage.session", "mid", 40 * 24, {"user_id": "u", "duration_seconds": 60})),
            ("young", event("young-1", "usage.session", "young", 24, {"user_id": "u", "duration_seconds": 60})),
        ])
        wait_for(lambda: health_of(namespace, "young")[0] == 200, timeout=60, message="young scored", explain=worker.log_tail)
        # In event time: a sweep 45 days ago finds "old" silent for 35 days, "mid" and "young" not yet.
        healthscore(namespace, "sweep", "--at", str(int((time.time() - 45 * 86400) * 1000)))
        wait_for(lambda: metric_value(worker.metrics_url, "healthscore_customers_evicted_total") == 1, timeout=60, message="old evicted")
        wait_for(lambda: redis_traces(namespace, "old") == [], timeout=30, message="old's Redis keys deleted")
        assert health_of(namespace, "old")[0] == 404 and health_of(namespace, "mid")[0] == 200
        wait_for(lambda: latest_value_sizes(changelog_topic(namespace.settings)).get("old") == -1, timeout=30, message="old's tombstone")
        healthscore(namespace, "sweep")  # now: "mid" has been silent for 40 days
        wait_for(lambda: metric_value(worker.metrics_url, "healthscore_customers_evicted_total") == 2, timeout=60, message="mid evicted")
        wait_for(lambda: redis_traces(namespace, "mid") == [], timeout=30, message="mid's Redis keys deleted")
        assert health_of(namespace, "young")[0] == 200

        # A year ahead: refused by the command, and a tick sent around it by the workers.
        refused = subprocess.run([sys.executable, "-m", "stream.cli", "sweep", "--at", str(int((time.time() + 365 * 86400) * 1000))],
                                 env={**os.environ, **namespace.env}, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and "max_future_skew_seconds" in refused.stderr
        tick = json.dumps({"at_ms": int((time.time() + 365 * 86400) * 1000), "started_at": time.time()}).encode()
        kcat_produce(namespace.topic("sweep"), [(None, tick)])
        control = namespace.topic("sweep")
        wait_for(lambda: metric_value(worker.metrics_url, "healthscore_dead_letters_total", topic=control, reason="future_timestamp") >= 1,
                 timeout=60, message="the future tick refused", explain=worker.log_tail)
        assert metric_value(worker.metrics_url, "healthscore_customers_evicted_total") == 2
        sweep_and_wait(namespace, worker)  # a later sweep ran
        assert metric_value(worker.metrics_url, "healthscore_customers_evicted_total") == 2
        assert health_of(namespace, "young")[0] == 200 and redis_traces(namespace, "young") != []
    finally:
        worker.stop()


def test_the_deny_list_reader_reads_what_was_added_and_leaves_no_fetch_waiting_between_reads(namespace: Namespace) -> None:
    """`deliver` reads the deny-list again before every alert. A follower left fetching at the
    topic's end kept a fetch waiting on the broker (fetch_max_wait_ms), and the next read's
    end-offsets request queued behind it on the connection: 0.5 s per alert. Between reads
    every partition is paused; reads still find every record added since the last."""
    import asyncio

    from stream.kafka.reading import TopicFollower

    topic = namespace.topic("delivery_failed")
    seen: list[bytes] = []

    async def scenario() -> tuple[int, int, int, set, set]:
        follower = TopicFollower(namespace.settings.kafka, topic, lambda record: seen.append(record.value))
        try:
            empty = await follower.catch_up()
            kcat_produce(topic, [(f"k{number}", f"first-{number}".encode()) for number in range(12)])
            first = await follower.catch_up()
            paused_after_first = set(follower._consumer.paused())
            kcat_produce(topic, [(f"k{number}", f"second-{number}".encode()) for number in range(5)])
            second = await follower.catch_up()
            return empty, first, second, paused_after_first, set(follower._consumer.paused())
        finally:
            await follower.stop()

    empty, first, second, paused_after_first, paused_after_second = asyncio.run(scenario())
    assert (empty, first, second) == (0, 12, 5)
    assert sorted(seen) == sorted([f"first-{n}".encode() for n in range(12)] + [f"second-{n}".encode() for n in range(5)])
    every_partition = {(topic, partition) for partition in range(namespace.settings.partitions)}
    assert {(tp.topic, tp.partition) for tp in paused_after_first} == every_partition
    assert {(tp.topic, tp.partition) for tp in paused_after_second} == every_partition
