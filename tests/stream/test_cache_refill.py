"""The latest scores written to Redis again from the records (stream/worker/cache_refill.py), without a broker."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import msgspec
import pytest

from scoring.contract import Event, SubscriptionUpdated, UsageSession
from scoring.health import ScoringParameters
from scoring.pipeline import step
from scoring.state import DAY_MS, encode_state, new_state
from stream.sinks import redis_cache
from stream.worker import cache_refill
from stream.sinks.redis_cache import LatestScoreCache
from stream.state.keys import KeysByPartition
from stream.worker.cache_refill import CacheRefill

T0 = 1_790_000_000_000


class FakeCache:
    def __init__(self, pending: set[str]) -> None:
        self.offered: dict[str, dict] = {}
        self._pending = pending

    def is_pending(self, customer_id: str) -> bool:
        return customer_id in self._pending

    def offer(self, customer_id: str, encoded: bytes) -> None:
        self.offered[customer_id] = msgspec.json.decode(encoded)

    overflowed = False
    healthy = True

    def room_for(self, scores: int) -> bool:
        return True

    async def lost_since_last_check(self) -> bool:
        return False

    def take_overflowed(self) -> bool:
        overflowed, self.overflowed = self.overflowed, False
        return overflowed


def record(customer: str, events: int) -> tuple[bytes, float, str]:
    state = new_state(customer)
    parameters = ScoringParameters()
    published = None
    step(state, Event("m", "subscription.updated", customer, T0, SubscriptionUpdated(49.0)), parameters, 32)
    for index in range(events):
        result = step(state, Event(f"s{index}", "usage.session", customer, T0 + index * DAY_MS, UsageSession("u", 60)), parameters, 32)
        published = result.publish or published
    assert published is not None
    return encode_state(state), published.score, published.band


def test_each_customer_gets_its_latest_score_back_unless_a_newer_one_waits() -> None:
    table: dict[bytes, bytes] = {}
    expected = {}
    for customer, events in (("a", 3), ("b", 10), ("c", 1)):
        stored, score, band = record(customer, events)
        table[customer.encode()] = stored
        expected[customer] = (score, band)
    table[b"never-scored"] = encode_state(new_state("never-scored"))
    cache = FakeCache(pending={"c"})
    refill = CacheRefill(app=None, table=SimpleNamespace(data=table), keys_by_partition={}, sweep_topic="sweep", parameters=ScoringParameters(), cache=cache, clock=lambda: T0 / 1000 + 99 * 86_400)  # type: ignore[arg-type]
    assert refill.rewrite(0, [b"a", b"b", b"c", b"never-scored", b"erased"]) == 2
    assert {c: (m["score"], m["band"]) for c, m in cache.offered.items()} == {c: expected[c] for c in ("a", "b")}
    assert all(m["trigger_event_id"] is None and m["customer_id"] == c for c, m in cache.offered.items())


def test_scores_waiting_for_redis_are_bounded_and_written_again_from_the_records_once_it_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis away (or slower than the stream) with millions of customers: what waits is dropped
    beyond the bound, and the refill writes every owned customer again, once Redis answers."""
    monkeypatch.setattr(redis_cache, "MAX_PENDING_SCORES", 3)
    cache = LatestScoreCache("redis://127.0.0.1:1/0", "away")  # nothing listens: never written here
    for customer in ("a", "b", "c"):
        cache.offer(customer, b"{}")
    cache.offer("a", b"{}")  # a newer score of one waiting: replaces it
    assert cache.pending == 3 and not cache.overflowed
    cache.offer("d", b"{}")
    assert cache.pending == 1 and cache.is_pending("d") and not cache.is_pending("a")
    assert cache.take_overflowed() and not cache.take_overflowed()

    table = {customer.encode(): record(customer, 2)[0] for customer in ("a", "b", "c")}
    keys = KeysByPartition()
    keys[0] = set(table)
    fake = FakeCache(pending=set())
    fake.overflowed, fake.healthy = True, False
    app = SimpleNamespace(consumer=SimpleNamespace(assignment=lambda: [SimpleNamespace(topic="sweep", partition=0)]))
    refill = CacheRefill(app=app, table=SimpleNamespace(data=table), keys_by_partition=keys, sweep_topic="sweep", parameters=ScoringParameters(), cache=fake, clock=lambda: T0 / 1000 + 9 * 86_400)  # type: ignore[arg-type]
    asyncio.run(refill.step())
    assert fake.offered == {}  # queued, but Redis does not answer yet
    fake.healthy = True
    asyncio.run(refill.step())
    assert sorted(fake.offered) == ["a", "b", "c"]


def test_the_refill_waits_while_redis_is_behind_rather_than_make_the_scores_overflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each chunk goes only while at most half of MAX_PENDING_SCORES wait; the stream keeps
    the other half. Without it, a refill during a backlog overflowed the cache and restarted."""
    monkeypatch.setattr(redis_cache, "MAX_PENDING_SCORES", 20)
    monkeypatch.setattr(cache_refill, "REFILL_CHUNK", 4)
    cache = LatestScoreCache("redis://127.0.0.1:1/0", "away")  # nothing listens: nothing is written here
    customers = [f"c{index}" for index in range(12)]
    table = {customer.encode(): record(customer, 2)[0] for customer in customers}
    keys = KeysByPartition()
    keys[0] = set(table)
    app = SimpleNamespace(consumer=SimpleNamespace(assignment=lambda: [SimpleNamespace(topic="sweep", partition=0)]))
    refill = CacheRefill(app=app, table=SimpleNamespace(data=table), keys_by_partition=keys, sweep_topic="sweep", parameters=ScoringParameters(), cache=cache, clock=lambda: T0 / 1000 + 9 * 86_400)  # type: ignore[arg-type]
    for index in range(3):
        cache.offer(f"stream-{index}", b"{}")  # the stream's own scores, waiting
    refill.queue_owned()
    asyncio.run(refill.step())  # 3 + 4 <= 10: a chunk
    asyncio.run(refill.step())  # 7 + 4 > 10: waits
    assert cache.pending == 7 and not cache.overflowed
    rewritten = {customer for customer in cache._pending if not customer.startswith("stream-")}
    cache._pending.clear()  # Redis took them
    for _ in range(3):
        asyncio.run(refill.step())  # 0 + 4, then 4 + 4: the last two chunks
    assert cache.pending == 8 and not cache.overflowed
    rewritten |= set(cache._pending)
    assert rewritten == set(customers)
