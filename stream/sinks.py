"""Where results go besides the health topic: Redis (best effort) and the dead-letter topics."""

from __future__ import annotations

import itertools
import logging

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

#: Customers (or alerts) per script call: about 10 ms of Redis time, so it is never blocked for long.
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


class _StoredScore(msgspec.Struct):
    """What Redis keeps of a ``customer-health`` message: the explanation stays as it was encoded."""

    score: float
    band: str
    churn_risk: float
    components: msgspec.Raw
    confidence: float
    changes: msgspec.Raw
    as_of: str
    computed_at: str
    model_version: str


_stored_score = msgspec.json.Decoder(_StoredScore)


def _score_row(customer_id: str, encoded: bytes) -> list[str]:
    """The customer's hash values as Redis stores them (strings, numbers as Python prints them)."""
    message = _stored_score.decode(encoded)
    return [
        customer_id,
        repr(message.score),
        message.band,
        repr(message.churn_risk),
        message.as_of,
        message.computed_at,
        message.model_version,
        bytes(message.components).decode(),
        bytes(message.changes).decode(),
        repr(message.confidence),
    ]


def _take(pending: dict[str, bytes], count: int) -> dict[str, bytes]:
    """Removes and returns the ``count`` oldest entries (all of them when there are fewer)."""
    if len(pending) <= count:
        taken = dict(pending)
        pending.clear()
        return taken
    taken = dict(itertools.islice(pending.items(), count))
    for customer_id in taken:
        del pending[customer_id]
    return taken


class LatestScoreCache:
    """Keeps the latest score per customer in Redis, off the hot path.

    The stream hands over each published message as the bytes it sent to Kafka; only
    the newest per customer is kept. A timer writes them in chunks, one script call
    each, until none is left. If Redis is down, pending scores stay (one per
    customer, so memory is bounded by the customers seen) and are retried; the
    Kafka output never waits for Redis.
    """

    def __init__(self, url: str, prefix: str) -> None:
        self._client = redis_asyncio.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._prefix = prefix
        self._pending: dict[str, bytes] = {}
        self._pending_alerts: list[tuple[str, bytes]] = []
        self._healthy = True
        self._flushing = False
        self._script = self._client.register_script(WRITE_SCRIPT)

    @property
    def client(self) -> redis_asyncio.Redis:
        return self._client

    def offer(self, customer_id: str, encoded_message: bytes) -> None:
        """The customer's newest ``customer-health`` message, as published."""
        self._pending[customer_id] = encoded_message

    def offer_alert(self, customer_id: str, encoded_alert: bytes) -> None:
        if len(self._pending_alerts) < 100_000:  # bounded while Redis is away; Kafka has them all
            self._pending_alerts.append((customer_id, encoded_alert))

    @property
    def pending(self) -> int:
        return len(self._pending) + len(self._pending_alerts)

    async def flush(self) -> None:
        """Writes everything pending, a chunk per round trip; a flush already running does it."""
        if self._flushing:
            return
        self._flushing = True
        try:
            while self._pending_alerts or self._pending:
                if not await self._flush_chunk():
                    return
        finally:
            self._flushing = False

    async def _flush_chunk(self) -> bool:
        """Alerts first, then scores; on failure puts them back (newer offers win) and says False."""
        alerts = self._pending_alerts[:FLUSH_CHUNK]
        del self._pending_alerts[:FLUSH_CHUNK]
        scores = _take(self._pending, FLUSH_CHUNK) if not alerts else {}
        try:
            if alerts:
                await self._write(b"[]", _encoder.encode([[customer_id, encoded.decode()] for customer_id, encoded in alerts]))
            else:
                await self._write(_encoder.encode([_score_row(customer_id, encoded) for customer_id, encoded in scores.items()]), b"[]")
        except (RedisError, OSError) as error:
            metrics.REDIS_WRITE_FAILURES.inc()
            for customer_id, encoded in scores.items():
                self._pending.setdefault(customer_id, encoded)
            self._pending_alerts[:0] = alerts
            if self._healthy:
                log.warning("Redis write failed, will retry (%s pending): %s", self.pending, error)
            self._healthy = False
            return False
        if not self._healthy:
            log.info("Redis writes recovered")
        self._healthy = True
        return True

    async def _write(self, scores: bytes, alerts: bytes) -> None:
        """One round trip: Redis unpacks the rows itself (redis-py packs each argument in Python,
        which cost more per customer than scoring it)."""
        await self._script(args=[self._prefix, scores, alerts, RECENT_ALERTS])

    async def close(self) -> None:
        await self._client.aclose()


def dead_letter_headers(topic: str, partition: int, offset: int, timestamp_ms: int | None, reason: str, detail: str) -> list[tuple[str, bytes]]:
    """Headers naming where the message came from (its Kafka timestamp in epoch ms) and why it was refused."""
    return [
        ("dlq.topic", topic.encode()),
        ("dlq.partition", str(partition).encode()),
        ("dlq.offset", str(offset).encode()),
        ("dlq.timestamp", str(timestamp_ms or 0).encode()),
        ("dlq.error", reason.encode()),
        ("dlq.reason", detail[:1000].encode()),
    ]
