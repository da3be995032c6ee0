"""Where results go besides the health topic: Redis (best effort) and the dead-letter topics."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import redis.asyncio as redis_asyncio
from redis.exceptions import RedisError

from stream import metrics

log = logging.getLogger(__name__)


def customer_key(prefix: str, customer_id: str) -> str:
    return f"{prefix}:customer:{customer_id}"


def scores_key(prefix: str) -> str:
    """Sorted set of every customer by latest score: the riskiest are ZRANGE 0 49."""
    return f"{prefix}:scores"


def alerts_key(prefix: str, customer_id: str) -> str:
    """List of the customer's most recent alerts (JSON), newest first."""
    return f"{prefix}:alerts:{customer_id}"


RECENT_ALERTS = 20


class LatestScoreCache:
    """Keeps the latest score per customer in Redis, off the hot path.

    The stream only records the newest message per customer in memory; a timer
    flushes them in one pipeline. If Redis is down, pending scores stay (one per
    customer, so memory is bounded by the customers seen) and are retried; the
    Kafka output never waits for Redis.
    """

    def __init__(self, url: str, prefix: str) -> None:
        self._client = redis_asyncio.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._prefix = prefix
        self._pending: dict[str, dict[str, Any]] = {}
        self._pending_alerts: list[dict[str, Any]] = []
        self._healthy = True

    @property
    def client(self) -> redis_asyncio.Redis:
        return self._client

    def offer(self, message: dict[str, Any]) -> None:
        self._pending[message["customer_id"]] = message

    def offer_alert(self, message: dict[str, Any]) -> None:
        if len(self._pending_alerts) < 100_000:  # bounded while Redis is away; Kafka has them all
            self._pending_alerts.append(message)

    @property
    def pending(self) -> int:
        return len(self._pending) + len(self._pending_alerts)

    async def flush(self) -> None:
        if not self._pending and not self._pending_alerts:
            return
        batch, self._pending = self._pending, {}
        alerts, self._pending_alerts = self._pending_alerts, []
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for alert in alerts:
                    key = alerts_key(self._prefix, alert["customer_id"])
                    pipe.lpush(key, msgspec.json.encode(alert))
                    pipe.ltrim(key, 0, RECENT_ALERTS - 1)
                for customer_id, message in batch.items():
                    pipe.hset(
                        customer_key(self._prefix, customer_id),
                        mapping={
                            "score": message["score"],
                            "band": message["band"],
                            "churn_risk": message["churn_risk"],
                            "as_of": message["as_of"],
                            "computed_at": message["computed_at"],
                            "model_version": message["model_version"],
                            "components": msgspec.json.encode(message["components"]),
                            "changes": msgspec.json.encode(message["changes"]),
                            "confidence": message["confidence"],
                        },
                    )
                if batch:
                    pipe.zadd(scores_key(self._prefix), {cid: m["score"] for cid, m in batch.items()})
                await pipe.execute()
        except (RedisError, OSError) as error:
            metrics.REDIS_WRITE_FAILURES.inc()
            for customer_id, message in batch.items():
                self._pending.setdefault(customer_id, message)
            self._pending_alerts[:0] = alerts
            if self._healthy:
                log.warning("Redis write failed, will retry (%s pending): %s", len(self._pending), error)
            self._healthy = False
            return
        if not self._healthy:
            log.info("Redis writes recovered")
        self._healthy = True

    async def close(self) -> None:
        await self._client.aclose()


def dead_letter_headers(topic: str, partition: int, offset: int, timestamp: float | None, reason: str, detail: str) -> list[tuple[str, bytes]]:
    """Headers naming where the message came from and why it was refused."""
    return [
        ("dlq.topic", topic.encode()),
        ("dlq.partition", str(partition).encode()),
        ("dlq.offset", str(offset).encode()),
        ("dlq.timestamp", str(int((timestamp or 0) * 1000)).encode()),
        ("dlq.error", reason.encode()),
        ("dlq.reason", detail[:1000].encode()),
    ]
