"""Alerts and the sweep through the real broker and Redis: silence, cooldown, crash, lookups."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.conftest import (
    Namespace,
    WorkerProcess,
    assigned_outside_the_group,
    committed_and_end_offsets,
    get_json,
    healthscore,
    kcat_consume,
    kcat_produce,
    metric_sum,
    metric_value,
    wait_for,
    wait_until_published,
)
from tests.integration.conftest import event_at as event

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000
NOW_MS = int(time.time() * 1000)



def alerts_on_topic(namespace: Namespace) -> list[dict]:
    return [json.loads(line.partition("\t")[2]) for line in kcat_consume(namespace.topic("alerts"))]


def scores_of(namespace: Namespace, customer: str) -> list[dict]:
    return [json.loads(value) for key, _, value in (line.partition("\t") for line in kcat_consume(namespace.topic("health"))) if key == customer]



def test_a_silent_customer_gets_a_lower_score_and_an_alert_from_the_sweep(namespace: Namespace, worker_without_budget: WorkerProcess) -> None:
    # The sweep opens band_downgrade and silence at once; the budget (one alert in 30 days) would keep one.
    worker = worker_without_budget
    # A subscriber who used the product every day for two weeks, then stopped 10 days ago.
    start = NOW_MS - 24 * DAY_MS
    kcat_produce(namespace.topic("payments"), [("quiet", event("quiet-m", "subscription.updated", "quiet", start, {"mrr": 99.0}))])
    kcat_produce(
        namespace.topic("usage"),
        [("quiet", event(f"quiet-s{day}", "usage.session", "quiet", start + day * DAY_MS, {"user_id": "u1", "duration_seconds": 900})) for day in range(14)],
    )
    url = worker.metrics_url
    wait_for(lambda: metric_value(url, "healthscore_events_total", topic=namespace.topic("usage"), outcome="applied") == 14, message="events applied")
    wait_until_published(namespace, worker)
    last_event_score = scores_of(namespace, "quiet")[-1]  # the latest score published on an event
    assert last_event_score["trigger_event_id"].startswith("quiet-")
    assert not [a for a in alerts_on_topic(namespace) if a["rule"] == "silence"]

    healthscore(namespace, "sweep")  # no new event: only time has passed

    swept = wait_for(lambda: [s for s in scores_of(namespace, "quiet") if s["trigger_event_id"] is None], message="a score from the sweep")[-1]
    assert swept["score"] < last_event_score["score"]
    assert swept["components"]["usage"]["score"] < last_event_score["components"]["usage"]["score"]
    assert swept["changes"]["usage"] < 0
    silence = wait_for(lambda: [a for a in alerts_on_topic(namespace) if a["rule"] == "silence"], message="the silence alert")
    assert len(silence) == 1
    alert = silence[0]
    assert alert["customer_id"] == "quiet" and alert["severity"] == "warning"
    assert set(alert) >= {"alert_id", "rule", "severity", "score", "previous_score", "band", "churn_risk", "reasons", "occurred_at", "raised_at", "model_version"}
    assert alert["reasons"] and alert["reasons"][0]["component"] == "usage"
    wait_for(lambda: metric_value(url, "healthscore_sweep_customers_total") >= 1, message="the sweep counted")
    assert metric_value(url, "healthscore_alerts_raised_total", rule="silence", severity="warning") == 1

    # A second sweep at the same time changes nothing and raises nothing new. It may visit no
    # customer at all (the due index): wait for every partition's sweep to end.
    sweeps_before = metric_value(url, "healthscore_sweep_duration_seconds_count")
    healthscore(namespace, "sweep")
    partitions = namespace.settings.partitions
    wait_for(lambda: metric_value(url, "healthscore_sweep_duration_seconds_count") >= sweeps_before + partitions, message="the second sweep applied")
    wait_until_published(namespace, worker)  # everything it published is on the topics
    assert len([a for a in alerts_on_topic(namespace) if a["rule"] == "silence"]) == 1


def test_cooldown_suppresses_a_repeat_and_counts_it(namespace: Namespace, worker: WorkerProcess) -> None:
    payments = namespace.topic("payments")
    base = NOW_MS - 3 * 3_600_000
    kcat_produce(
        payments,
        [
            ("fickle", event("f-1", "subscription.updated", "fickle", base, {"mrr": 50.0})),
            ("fickle", event("f-2", "subscription.cancelled", "fickle", base + 60_000, {"reason": "price"})),
            ("fickle", event("f-3", "subscription.updated", "fickle", base + 120_000, {"mrr": 50.0})),
            ("fickle", event("f-4", "subscription.cancelled", "fickle", base + 180_000, {"reason": "price"})),
        ],
    )
    url = worker.metrics_url
    wait_for(
        lambda: metric_value(url, "healthscore_alerts_suppressed_total", rule="cancellation", severity="critical") == 1,
        message="the second cancellation to be suppressed",
    )
    cancellations = [a for a in alerts_on_topic(namespace) if a["rule"] == "cancellation"]
    assert len(cancellations) == 1 and cancellations[0]["severity"] == "critical"
    assert metric_value(url, "healthscore_alerts_raised_total", rule="cancellation", severity="critical") == 1


@pytest.fixture
def worker_with_payment_alerts(namespace: Namespace, tmp_path: Path) -> Iterator[WorkerProcess]:
    """A worker with the payment_trouble rule on (off by default, docs/alerts.md)."""
    namespace.env["HEALTHSCORE_ALERTS__PAYMENT_TROUBLE"] = "true"
    process = WorkerProcess(namespace, tmp_path / "worker.log")
    process.start()
    yield process
    process.stop()


def test_lookups_for_people_and_tools(namespace: Namespace, worker_with_payment_alerts: WorkerProcess) -> None:
    usage, payments = namespace.topic("usage"), namespace.topic("payments")
    kcat_produce(usage, [(c, event(f"{c}-s", "usage.session", c, NOW_MS - 3_600_000, {"user_id": "u", "duration_seconds": 60})) for c in ("fine", "shaky")])
    kcat_produce(
        payments,
        [("shaky", event(f"shaky-f{i}", "payment.failed", "shaky", NOW_MS - 1800_000 + i, {"invoice_id": "i1", "amount": 10.0})) for i in range(3)],
    )
    base = f"http://127.0.0.1:{namespace.settings.web_port}"
    status, body = wait_for(lambda: (lambda r: r if r[0] == 200 and r[1]["count"] == 2 else None)(get_json(f"{base}/customers/at-risk?limit=10")), message="two customers in Redis")
    assert [c["customer_id"] for c in body["customers"]] == ["shaky", "fine"]
    # One day of events each: both held below healthy (49.99); the tie goes to the higher churn risk.
    shaky, fine = body["customers"]
    assert shaky["score"] <= fine["score"] and shaky["churn_risk"] > fine["churn_risk"]

    def shaky_with_alert():
        status, found = get_json(f"{base}/customers/shaky/health")
        return found if status == 200 and found["recent_alerts"] else None

    health = wait_for(shaky_with_alert, message="shaky's health with its alert")
    assert health["band"] in {"healthy", "at_risk", "critical"} and "payments" in health["components"]
    assert health["recent_alerts"][0]["rule"] == "payment_trouble"
    status, missing = get_json(f"{base}/customers/nobody/health")
    assert status == 404 and "unknown customer" in missing["error"]
    status, bad = get_json(f"{base}/customers/at-risk?limit=abc")
    assert status == 400 and "limit" in bad["error"]


@pytest.mark.parametrize(
    ("changelog_writes", "lose_changelog"),
    [("per_batch", False), ("per_commit", False), ("per_commit", True)],
    ids=["state-restored", "state-written-at-commit", "state-lost"],
)
def test_an_alert_survives_a_sigkill_right_after_publishing_exactly_once(
    namespace: Namespace, tmp_path: Path, changelog_writes: str, lose_changelog: bool
) -> None:
    """SIGKILL right after the alert is out, before offsets are committed: the restarted
    worker reprocesses the events. With the changelog written per batch, its state restored
    from the changelog knows the events. Written at each commit (the default), the state
    restored is from before the events, as when the changelog is lost (the worst case: the
    alert got out, the state did not): it raises the alerts again and must find them on the
    topic and not send them twice."""
    namespace.env["HEALTHSCORE_COMMIT_INTERVAL_SECONDS"] = "120"
    namespace.env["HEALTHSCORE_CHANGELOG_WRITES"] = changelog_writes
    namespace.env["HEALTHSCORE_SESSION_TIMEOUT_SECONDS"] = "6"
    worker = WorkerProcess(namespace, tmp_path / "worker.log")
    worker.start()
    payments = namespace.topic("payments")
    try:
        kcat_produce(
            payments,
            [
                ("doomed", event("d-1", "subscription.updated", "doomed", NOW_MS - 60_000, {"mrr": 80.0})),
                ("doomed", event("d-2", "subscription.cancelled", "doomed", NOW_MS - 30_000, {})),
            ],
        )
        before = wait_for(
            lambda: [a for a in alerts_on_topic(namespace) if a["rule"] == "cancellation"], timeout=60, interval=0.05, message="the cancellation alert"
        )
        wait_until_published(namespace, worker)  # every alert of that event is on the topic
        worker.kill()  # SIGKILL: no flush, no commit, no goodbye
        assert worker.process.returncode == -9
        published_before = alerts_on_topic(namespace)
        # The worst case is a crash before any commit. The killed worker may still have
        # committed (Faust commits when partitions are revoked, and a slow machine can miss
        # heartbeats and rebalance), so the group is put back at the start of the topic.
        rewind_committed_offsets(namespace.settings.app_id, payments, namespace.settings.partitions)
        if lose_changelog:
            delete_topic(f"{namespace.settings.app_id}-customer-state-changelog")

        worker.start()
        url = worker.metrics_url
        wait_for(
            lambda: metric_value(url, "healthscore_events_total", topic=payments, outcome="applied")
            + metric_value(url, "healthscore_events_total", topic=payments, outcome="duplicate") == 2,
            timeout=60,
            message="the restarted worker to reprocess both events",
            explain=lambda: "\n".join(
                [
                    events_metrics(url),
                    "--- the group's committed offsets / the topic's end offsets ---",
                    group_offsets(namespace.settings.app_id, payments, namespace.settings.partitions),
                    "--- worker log ---",
                    worker.log_tail(100),
                    "--- where the worker's threads and tasks wait ---",
                    worker.what_it_waits_on(),
                ]
            ),
        )
        # Every alert the restarted worker sent is on the topic (it commits only every 120 s here).
        wait_for(lambda: len(alerts_on_topic(namespace)) == len(published_before) + metric_sum(url, "healthscore_alerts_raised_total"),
                 timeout=30, message="the restarted worker's alerts on the topic", explain=worker.log_tail)
        after = alerts_on_topic(namespace)
        ids = [a["alert_id"] for a in after]
        assert len(ids) == len(set(ids)), f"an alert was published twice: {after}"
        assert sorted(ids) == sorted(a["alert_id"] for a in published_before)
        assert before[0]["alert_id"] in ids
        skipped = metric_value(url, "healthscore_alerts_already_published_total", rule="cancellation")
        state_restored = changelog_writes == "per_batch" and not lose_changelog
        assert skipped == (0 if state_restored else 1)
    finally:
        worker.stop()


def events_metrics(url: str) -> str:
    """The worker's input counters, to show in a failure what it did consume."""
    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError as error:
        return f"/metrics unreachable: {error}"
    return "\n".join(line for line in text.splitlines() if line.startswith("healthscore_events_total") and not line.endswith(" 0.0"))


def rewind_committed_offsets(group: str, topic: str, partitions: int, timeout: float = 60) -> None:
    """Commits offset 0 on every partition of ``topic`` for ``group``. The broker takes a
    commit from outside the group only once the group is empty, that is once the killed
    member's session has expired, so this retries until then."""
    from aiokafka.errors import KafkaError
    from aiokafka.structs import OffsetAndMetadata

    async def rewind() -> None:
        async with assigned_outside_the_group(group, topic, partitions) as (consumer, partitions_of_topic):
            deadline = time.monotonic() + timeout
            while True:
                try:
                    await consumer.commit({tp: OffsetAndMetadata(0, "") for tp in partitions_of_topic})
                    return
                except KafkaError as error:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"could not rewind {group} on {topic} within {timeout} s: {error!r}") from error
                    await asyncio.sleep(0.5)

    asyncio.run(rewind())


def group_offsets(group: str, topic: str, partitions: int) -> str:
    """Per partition, the group's committed offset and the topic's end offset, for a failure message."""
    try:
        committed, ends = committed_and_end_offsets(group, topic, partitions)
    except Exception as error:  # only a diagnostic: never hide the real failure behind it
        return f"could not read: {error!r}"
    return ", ".join(f"[{partition}] {offset}/{end}" for partition, (offset, end) in enumerate(zip(committed, ends)))


def delete_topic(name: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    async def delete() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:9092")
        await admin.start()
        try:
            await admin.delete_topics([name])
        finally:
            await admin.close()

    asyncio.run(delete())

    async def listed() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:9092")
        await admin.start()
        try:
            return name in await admin.list_topics()
        finally:
            await admin.close()

    wait_for(lambda: not asyncio.run(listed()), timeout=30, interval=0.2, message=f"{name} deleted")
