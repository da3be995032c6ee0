"""Where results go besides the health topic: Redis (best effort) and the dead-letter topics."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import redis.asyncio as redis_asyncio
from redis.exceptions import RedisError

from scoring.structs import HealthMessage
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

#: Customers (or alerts) per script call, so Redis is never blocked for long.
FLUSH_CHUNK = 2000

_encoder = msgspec.json.Encoder()

#: The hash fields of ``HGETALL <prefix>:customer:<id>`` (README), in row order after the id.
SCORE_FIELDS = ("score", "band", "churn_risk", "as_of", "computed_at", "model_version", "components", "changes", "confidence")

# Writes the rows of one flush: the customer hash, the sorted set by score, the recent
# alerts list. Keys are built from ARGV, so this needs a single Redis (not a cluster).
WRITE_SCRIPT = """
local prefix = ARGV[1]
local fields = {'score', 'band', 'churn_risk', 'as_of', 'computed_at', 'model_version', 'components', 'changes', 'confidence'}
local keep = tonumber(ARGV[4]) - 1
for _, alert in ipairs(cjson.decode(ARGV[3])) do
  local key = prefix .. ':alerts:' .. alert[1]
  redis.call('LPUSH', key, alert[2])
  redis.call('LTRIM', key, 0, keep)
end
local scores = prefix .. ':scores'
for _, row in ipairs(cjson.decode(ARGV[2])) do
  local mapping = {}
  for index, name in ipairs(fields) do
    mapping[2 * index - 1] = name
    mapping[2 * index] = row[index + 1]
  end
  redis.call('HSET', prefix .. ':customer:' .. row[1], unpack(mapping))
  redis.call('ZADD', scores, row[2], row[1])
end
return 0
"""


def _score_row(customer_id: str, message: HealthMessage) -> list[str]:
    """The customer's hash values as Redis stores them (strings, numbers as Python prints them)."""
    return [
        customer_id,
        repr(message.score),
        message.band,
        repr(message.churn_risk),
        message.as_of,
        message.computed_at,
        message.model_version,
        _encoder.encode(message.components).decode(),
        _encoder.encode(message.changes).decode(),
        repr(message.confidence),
    ]


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
        self._pending: dict[str, HealthMessage] = {}
        self._pending_alerts: list[dict[str, Any]] = []
        self._healthy = True
        self._script = self._client.register_script(WRITE_SCRIPT)

    @property
    def client(self) -> redis_asyncio.Redis:
        return self._client

    def offer(self, message: HealthMessage) -> None:
        self._pending[message.customer_id] = message

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
            for start in range(0, max(len(alerts), 1), FLUSH_CHUNK):
                chunk = alerts[start : start + FLUSH_CHUNK]
                if chunk:
                    await self._write(b"[]", _encoder.encode([[a["customer_id"], _encoder.encode(a).decode()] for a in chunk]))
            customers = list(batch.items())
            for start in range(0, len(customers), FLUSH_CHUNK):
                rows = [_score_row(customer_id, message) for customer_id, message in customers[start : start + FLUSH_CHUNK]]
                await self._write(_encoder.encode(rows), b"[]")
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

    async def _write(self, scores: bytes, alerts: bytes) -> None:
        """One round trip: Redis unpacks the rows itself (redis-py packs each argument in Python,
        which cost more per customer than scoring it)."""
        await self._script(args=[self._prefix, scores, alerts, RECENT_ALERTS])

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
