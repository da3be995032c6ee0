"""The latest score per customer in the real Redis: what the worker's cache writes."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import msgspec
import pytest
import redis

from scoring.output import encode_json
from scoring.structs import ComponentMessage, HealthMessage
from stream import metrics
from stream.settings import load_settings
from stream.sinks.redis_cache import (
    FLUSH_CHUNK,
    SCORE_FIELDS,
    LatestScoreCache,
    alerts_key,
    customer_key,
    scores_key,
)
from tests.integration.conftest import (
    Namespace,
    WorkerProcess,
    event,
    kcat_consume,
    kcat_produce,
    metric_value,
    wait_for,
)

pytestmark = pytest.mark.integration


def message(customer_id: str, score: float, computed_at: str = "2026-11-23T10:00:00.000Z") -> HealthMessage:
    return HealthMessage(
        customer_id=customer_id,
        score=score,
        band="healthy" if score >= 70 else "at_risk",
        churn_risk=round(1 - score / 100, 4),
        components={
            "usage": ComponentMessage(score=score, weight=0.4, contribution=round(score * 0.4, 2)),
            "payments": ComponentMessage(score=100.0, weight=0.6, contribution=60.0),
        },
        confidence=0.75,
        previous_score=None,
        changes={"usage": -1.25, "payments": 0.0},
        as_of="2026-11-23T09:59:59.000Z",
        computed_at=computed_at,
        model_version="test-model",
        trigger_event_id="e-1",
    )


def expected_hash(sent: HealthMessage) -> dict[str, str]:
    """The documented hash (README): numbers as Python prints them, the explanation as JSON."""
    values = {
        "score": repr(sent.score),
        "band": sent.band,
        "churn_risk": repr(sent.churn_risk),
        "as_of": sent.as_of,
        "computed_at": sent.computed_at,
        "model_version": sent.model_version,
        "components": msgspec.json.encode(sent.components).decode(),
        "changes": msgspec.json.encode(sent.changes).decode(),
        "confidence": repr(sent.confidence),
        # An absent value is an empty string in the hash.
        "cancelled": "1" if sent.cancelled else "0",
        "cancelled_at": sent.cancelled_at or "",
        "cancellation_reason": sent.cancellation_reason or "",
        "mrr": repr(sent.mrr),
        "usage_growth": "" if sent.usage_growth is None else repr(sent.usage_growth),
    }
    assert set(values) == set(SCORE_FIELDS)
    return values


def test_every_pending_score_and_alert_lands_newest_first(services: None) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    settings = load_settings()
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    customers = [f"c-{index:05d}" for index in range(FLUSH_CHUNK * 2 + 17)]  # more than one script call

    async def run() -> None:
        cache = LatestScoreCache(settings.redis_url, prefix)
        try:
            for index, customer in enumerate(customers):
                cache.offer(customer, encode_json(message(customer, 50.0, "2026-11-23T09:00:00.000Z")))
                cache.offer(customer, encode_json(message(customer, float(index % 100) + 0.25)))  # the newest wins
            for number in range(3):
                cache.offer_alert("c-00001", encode_json({"alert_id": f"a{number}", "customer_id": "c-00001"}))
            await cache.flush()
            assert cache.pending == 0
        finally:
            await cache.close()

    asyncio.run(run())
    for index in (0, 1, FLUSH_CHUNK, len(customers) - 1):
        customer = customers[index]
        assert client.hgetall(customer_key(prefix, customer)) == expected_hash(message(customer, float(index % 100) + 0.25))
    assert client.zcard(scores_key(prefix)) == len(customers)
    assert client.zrange(scores_key(prefix), 0, 0, withscores=True)[0][1] == 0.25
    recent = [msgspec.json.decode(alert)["alert_id"] for alert in client.lrange(alerts_key(prefix, "c-00001"), 0, -1)]
    assert recent == ["a2", "a1", "a0"]


def test_scores_wait_while_redis_is_away_and_newer_ones_replace_them(services: None) -> None:
    failures = metrics.REDIS_WRITE_FAILURES._value.get()

    async def run() -> None:
        cache = LatestScoreCache("redis://127.0.0.1:1/0", "away")  # nothing listens on port 1
        try:
            cache.offer("c-1", encode_json(message("c-1", 10.0)))
            cache.offer_alert("c-1", b'{"alert_id":"a"}')
            await cache.flush()
            assert cache.pending == 2
            cache.offer("c-1", encode_json(message("c-1", 20.0)))
            await cache.flush()
            assert cache.pending == 2
            assert msgspec.json.decode(cache._pending["c-1"])["score"] == 20.0
        finally:
            await cache.close()

    asyncio.run(run())
    assert metrics.REDIS_WRITE_FAILURES._value.get() == failures + 2


def offer_one_and_flush(url: str, prefix: str, sent: HealthMessage) -> int:
    """One cache, one score offered and flushed; what is still pending after the flush."""

    async def run() -> int:
        cache = LatestScoreCache(url, prefix)
        try:
            cache.offer(sent.customer_id, encode_json(sent))
            await cache.flush()
            return cache.pending
        finally:
            await cache.close()

    return asyncio.run(run())


def test_scores_are_written_after_redis_forgot_the_script(services: None) -> None:
    """After a Redis restart or SCRIPT FLUSH the cache loads its script again and writes."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    settings = load_settings()
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    client.script_flush()
    assert offer_one_and_flush(settings.redis_url, prefix, message("c-1", 42.5)) == 0
    assert client.hgetall(customer_key(prefix, "c-1")) == expected_hash(message("c-1", 42.5))


def test_a_write_redis_refuses_stays_pending_and_is_counted(services: None) -> None:
    """An error inside the script (here a key of another type) fails the chunk like a lost connection."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    settings = load_settings()
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    client.set(customer_key(prefix, "c-1"), "not a hash")
    failures = metrics.REDIS_WRITE_FAILURES._value.get()
    assert offer_one_and_flush(settings.redis_url, prefix, message("c-1", 42.5)) == 1
    assert metrics.REDIS_WRITE_FAILURES._value.get() == failures + 1
    assert client.get(customer_key(prefix, "c-1")) == "not a hash"


def test_while_the_worker_catches_up_scores_wait_for_the_backlog_interval_or_a_full_cache(services: None) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    settings = load_settings()
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)

    async def run() -> None:
        cache = LatestScoreCache(settings.redis_url, prefix, backlog_interval_seconds=60, backlog_pending_limit=3)
        try:
            now = time.monotonic()
            assert cache.flush_due(now)  # live: every timer tick
            cache.catching_up(True)
            assert not cache.flush_due(now)
            assert cache.flush_due(now + 1.5)  # no batch for a second: the backlog is over
            cache.catching_up(True)
            now = time.monotonic()
            for customer in ("c-1", "c-2"):
                cache.offer(customer, encode_json(message(customer, 40.0)))
            assert not cache.flush_due(now)
            cache.offer("c-3", encode_json(message("c-3", 41.0)))
            assert cache.flush_due(now)  # as many waiting as the limit: memory comes first
            await cache.flush()
            assert cache.pending == 0
            cache.offer("c-4", encode_json(message("c-4", 42.0)))
            cache.catching_up(True)
            assert not cache.flush_due(time.monotonic())  # flushed just now
            cache.catching_up(False)
            assert cache.flush_due(time.monotonic())  # caught up: the next tick writes it
            await cache.flush()
        finally:
            await cache.close()
        quick = LatestScoreCache(settings.redis_url, prefix, backlog_interval_seconds=0.2)
        try:
            quick.catching_up(True)
            now = time.monotonic()
            assert not quick.flush_due(now)
            # 0.3 s later (a tick's time, passed in): still catching up, but the backlog
            # interval has passed since the last flush.
            assert quick.flush_due(now + 0.3)
        finally:
            await quick.close()

    asyncio.run(run())
    assert client.zcard(scores_key(prefix)) == 4
    assert client.hgetall(customer_key(prefix, "c-3")) == expected_hash(message("c-3", 41.0))


def test_catching_up_a_flush_writes_what_waited_at_its_start_and_what_comes_meanwhile_waits(services: None) -> None:
    """So a backlog's scores coalesce per customer over the backlog interval instead of each
    flush running on with what the stream scores during its round trips; live, a stopping
    worker, or as many waiting as the limit: it runs on until nothing waits."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    settings = load_settings()
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    early = [f"c-{index}" for index in range(FLUSH_CHUNK + 10)]  # two round trips

    async def run() -> None:
        cache = LatestScoreCache(settings.redis_url, prefix, backlog_interval_seconds=60, backlog_pending_limit=50)
        arriving: list[list[str]] = []  # customers the stream scores during each next round trip
        write = cache._write

        async def write_while_the_stream_scores(*args: object) -> object:
            for customer in arriving.pop(0) if arriving else ():
                cache.offer(customer, encode_json(message(customer, 30.0)))
            return await write(*args)

        cache._write = write_while_the_stream_scores  # type: ignore[method-assign]
        try:
            cache.catching_up(True)
            for customer in early:
                cache.offer(customer, encode_json(message(customer, 40.0)))
            arriving[:] = [["late-1"], ["late-1", "late-2"]]
            await cache.flush()
            assert cache.pending == 2  # scored during the round trips: the next flush's
            assert client.zcard(scores_key(prefix)) == len(early)
            assert not client.exists(customer_key(prefix, "late-1"))

            arriving[:] = [[f"many-{index}" for index in range(50)]]  # the limit reached meanwhile
            await cache.flush()
            assert cache.pending == 0  # memory first: it ran on
            assert client.zcard(scores_key(prefix)) == len(early) + 52

            cache.offer("stop-1", encode_json(message("stop-1", 40.0)))
            arriving[:] = [["stop-2"]]
            await cache.flush(drain=True)  # a stopping worker writes everything
            assert cache.pending == 0

            cache.catching_up(False)
            cache.offer("live-1", encode_json(message("live-1", 40.0)))
            arriving[:] = [["live-2"]]
            await cache.flush()  # live: until nothing waits
            assert cache.pending == 0
        finally:
            await cache.close()

    asyncio.run(run())
    assert client.zcard(scores_key(prefix)) == len(early) + 56
    assert client.hgetall(customer_key(prefix, "live-2")) == expected_hash(message("live-2", 30.0))


def test_a_worker_told_to_stop_writes_its_pending_scores_to_redis_first(namespace: Namespace, tmp_path: Path) -> None:
    namespace.env["HEALTHSCORE_REDIS_FLUSH_INTERVAL_SECONDS"] = "60"  # no timer flush during the test
    worker = WorkerProcess(namespace, tmp_path / "worker.log")
    worker.start()
    customers = ("alpha", "beta")
    try:
        kcat_produce(
            namespace.topic("usage"),
            [(c, event(f"{c}-1", "usage.session", c, 1, {"user_id": "u", "duration_seconds": 60})) for c in customers],
        )
        wait_for(
            lambda: {line.partition("\t")[0] for line in kcat_consume(namespace.topic("health"))} >= set(customers),
            message="scores on Kafka", explain=worker.log_tail,
        )
        client = redis.Redis.from_url(namespace.settings.redis_url, decode_responses=True)
        prefix = namespace.settings.redis_key_prefix
        assert client.zcard(scores_key(prefix)) == 0  # still pending in the worker
    finally:
        worker.stop()
    assert worker.process.returncode == 0, worker.log_tail()
    assert client.zcard(scores_key(prefix)) == 2
    assert client.hget(customer_key(prefix, "alpha"), "model_version")


def test_redis_that_lost_the_scores_is_refilled_with_every_customer(namespace: Namespace, worker: WorkerProcess) -> None:
    """Redis comes back empty (here: every key of the namespace deleted, as a restart without
    persistence or a FLUSHALL leaves it): the worker notices its marker is gone and writes the
    latest score of every customer it owns again, those without a new event included."""

    customers = [f"r{index:03d}" for index in range(120)]
    usage = namespace.topic("usage")
    kcat_produce(usage, [(c, event(f"{c}-s", "usage.session", c, 2, {"user_id": "u", "duration_seconds": 60})) for c in customers])
    client = redis.Redis.from_url(namespace.settings.redis_url, decode_responses=True)
    prefix = namespace.settings.redis_key_prefix
    wait_for(lambda: client.zcard(scores_key(prefix)) == len(customers), timeout=60, message="every customer in Redis")
    before = {c: client.hgetall(customer_key(prefix, c)) for c in customers}
    url = f"http://127.0.0.1:{namespace.settings.web_port}/metrics"
    refills = metric_value(url, "healthscore_redis_refills_total")
    lost = client.keys(f"{prefix}:*")
    assert any(":worker:" in key for key in lost)  # the worker's marker
    client.delete(*lost)
    wait_for(lambda: client.zcard(scores_key(prefix)) == len(customers), timeout=30, message="every customer back in Redis")
    assert metric_value(url, "healthscore_redis_refills_total") == refills + 1
    assert metric_value(url, "healthscore_redis_refilled_customers_total") >= len(customers)
    for customer in customers:
        after = client.hgetall(customer_key(prefix, customer))
        assert {k: after[k] for k in ("score", "band", "as_of", "model_version")} == {k: before[customer][k] for k in ("score", "band", "as_of", "model_version")}


def test_an_erasure_during_a_flush_is_never_undone_by_it(services: None) -> None:
    """A flush in flight may hold the erased customer's score: the delete goes after it (so
    its write cannot land after the delete), and a failed flush does not put the score back."""
    settings = load_settings()
    prefix = f"t{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)

    async def flush_and_erase(url: str) -> tuple[LatestScoreCache, BaseException | None]:
        cache = LatestScoreCache(url, prefix)
        cache.offer("gone", encode_json(message("gone", 30.0)))
        cache.offer("kept", encode_json(message("kept", 60.0)))
        flushing = asyncio.create_task(cache.flush())
        await asyncio.sleep(0)  # the flush took both scores and waits on Redis
        assert cache._flushing and cache.pending == 0
        erasing = asyncio.create_task(cache.erase("gone"))
        results = await asyncio.gather(flushing, erasing, return_exceptions=True)
        await cache.close()
        return cache, results[1] if isinstance(results[1], BaseException) else None

    cache, error = asyncio.run(flush_and_erase(settings.redis_url))
    assert error is None
    assert client.exists(customer_key(prefix, "gone")) == 0 and client.zscore(scores_key(prefix), "gone") is None
    assert client.exists(customer_key(prefix, "kept")) == 1

    cache, error = asyncio.run(flush_and_erase("redis://127.0.0.1:1/0"))  # Redis away: the flush fails
    assert error is not None  # the erasure itself waits and retries (stream/processing/erasure.py)
    assert set(cache._pending) == {"kept"}  # "gone" was not put back


def test_customer_kpis_land_beside_the_score_and_only_in_hashes_that_exist(services: None) -> None:
    """The fleet export's KPI rows: written into a known customer's hash, never creating the
    hash of a customer Redis does not know (an erased customer's was deleted)."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    settings = load_settings()
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)

    async def run() -> dict:
        cache = LatestScoreCache(settings.redis_url, prefix)
        try:
            cache.offer("known", encode_json(message("known", 61.5)))
            await cache.flush()
            unwritten = await cache.write_kpis([("known", b'{"nps": 30.0}'), ("erased", b'{"nps": 0.0}')])
            stored = client.hgetall(customer_key(prefix, "known"))
            await cache.erase("known")
            unwritten += await cache.write_kpis([("known", b'{"nps": 40.0}')])  # after the erasure: nothing comes back
            return {**stored, "unwritten": unwritten}
        finally:
            await cache.close()

    stored = asyncio.run(run())
    assert stored["kpis"] == '{"nps": 30.0}' and stored["score"] == "61.5"
    assert stored["unwritten"] == ["erased", "known"]  # the fleet export offers them again, a few times
    assert not client.exists(customer_key(prefix, "erased"))
    assert not client.exists(customer_key(prefix, "known"))
