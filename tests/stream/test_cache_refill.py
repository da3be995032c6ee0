"""The latest scores written to Redis again from the records (stream/worker/cache_refill.py), without a broker."""

from __future__ import annotations

from types import SimpleNamespace

import msgspec

from scoring.contract import Event, SubscriptionUpdated, UsageSession
from scoring.health import ScoringParameters
from scoring.pipeline import step
from scoring.state import DAY_MS, encode_state, new_state
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
