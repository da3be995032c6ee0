"""The Redis cache of each customer's latest score and recent alerts (best effort: Kafka holds the truth)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
import uuid
from typing import Any

import msgspec
import redis.asyncio as redis_asyncio
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisError

from scoring.kpis import expansion_growth
from stream.sinks.alert_ledger import epoch_ms
from stream import metrics

log = logging.getLogger(__name__)


def customer_key(prefix: str, customer_id: str, hash_tag: bool = False) -> str:
    """The customer's hash; in a cluster its id is the hash tag, so its keys share a slot."""
    return f"{prefix}:customer:{{{customer_id}}}" if hash_tag else f"{prefix}:customer:{customer_id}"


def scores_key(prefix: str) -> str:
    """Sorted set of the live (not cancelled) customers by latest score: the riskiest are ZRANGE 0 49."""
    return f"{prefix}:scores"


def cancelled_key(prefix: str) -> str:
    """Sorted set of the cancelled customers by latest score (they keep an order among themselves)."""
    return f"{prefix}:cancelled"


def churned_key(prefix: str) -> str:
    """Sorted set of the cancelled customers by when they cancelled (epoch ms)."""
    return f"{prefix}:churned"


def expansion_key(prefix: str) -> str:
    """Sorted set of the customers ready for more by their usage growth (scoring.kpis.expansion_growth)."""
    return f"{prefix}:expansion"


def alerts_key(prefix: str, customer_id: str, hash_tag: bool = False) -> str:
    """List of the customer's most recent alerts (JSON), newest first."""
    return f"{prefix}:alerts:{{{customer_id}}}" if hash_tag else f"{prefix}:alerts:{customer_id}"


RECENT_ALERTS = 20

#: Customers (or alerts) per script call: about 10 ms of Redis time, so it is never blocked for long.
FLUSH_CHUNK = 2000

#: While catching up, a flush still happens once this many customers wait (about 15 MB of
#: messages), so a backlog over many customers is not held in memory for the longer interval.
BACKLOG_PENDING_LIMIT = 20_000

#: Lifetime of a worker's marker key, renewed at every check (a stopped worker's expires).
MARKER_SECONDS = 3600

#: A worker that has not started a full batch for this long is no longer catching up (its
#: backlog ended and no batch came since to say so).
BACKLOG_QUIET_SECONDS = 1.0


#: The hash fields of ``HGETALL <prefix>:customer:<id>`` (README), in row order after the id.
SCORE_FIELDS = (
    "score", "band", "churn_risk", "as_of", "computed_at", "model_version", "components", "changes", "confidence",
    "cancelled", "cancelled_at", "cancellation_reason", "mrr", "usage_growth",
)
#: After the hash fields of each customer: when it cancelled (epoch ms, or empty: live) and its
#: usage growth if it is an expansion candidate (else empty). They place it in the sorted sets.
_RANK_ARGUMENTS = 2

# Writes the rows of one flush: the recent alerts lists, the customer hashes, the sorted set
# by score. The rows come as plain arguments: ARGV = prefix, alerts kept per customer, the
# number of alerts, then (customer id, alert JSON) per alert, then the SCORE_FIELDS of each
# customer after its id. Redis spent two thirds of the script's time decoding the rows from
# one JSON argument (its JSON holding the explanation's JSON as escaped strings) and a third
# in HSET and ZADD (INFO commandstats, bench/throughput.py, 2026-11-30). Keys are built from
# ARGV, so this needs a single Redis (not a cluster).
_HSET_FIELDS = ", ".join(f"'{name}', ARGV[index + {position}]" for position, name in enumerate(SCORE_FIELDS, 1))
WRITE_SCRIPT = f"""
local prefix = ARGV[1]
local keep = tonumber(ARGV[2]) - 1
local index = 4
for _ = 1, tonumber(ARGV[3]) do
  local key = prefix .. ':alerts:' .. ARGV[index]
  redis.call('LPUSH', key, ARGV[index + 1])
  redis.call('LTRIM', key, 0, keep)
  index = index + 2
end
local scores, cancelled, churned, expansion = prefix .. ':scores', prefix .. ':cancelled', prefix .. ':churned', prefix .. ':expansion'
while index <= #ARGV do
  local customer = ARGV[index]
  redis.call('HSET', prefix .. ':customer:' .. customer, {_HSET_FIELDS})
  local cancelled_ms = ARGV[index + {len(SCORE_FIELDS) + 1}]
  if cancelled_ms == '' then
    redis.call('ZADD', scores, ARGV[index + 1], customer)
    redis.call('ZREM', cancelled, customer)
    redis.call('ZREM', churned, customer)
  else
    redis.call('ZADD', cancelled, ARGV[index + 1], customer)
    redis.call('ZADD', churned, cancelled_ms, customer)
    redis.call('ZREM', scores, customer)
  end
  local growth = ARGV[index + {len(SCORE_FIELDS) + 2}]
  if growth == '' then
    redis.call('ZREM', expansion, customer)
  else
    redis.call('ZADD', expansion, growth, customer)
  end
  index = index + {len(SCORE_FIELDS) + 1 + 2}
end
return 0
"""
_WRITE_SCRIPT_SHA = hashlib.sha1(WRITE_SCRIPT.encode()).hexdigest().encode()


#: A customer's KPIs into its hash, only if the hash has a score (an erased customer's is gone):
#: HMGET and HSET, which the documented ACL grants (EXISTS it does not). 1 when written.
KPIS_SCRIPT = "if redis.call('HMGET', KEYS[1], 'score')[1] then redis.call('HSET', KEYS[1], 'kpis', ARGV[1]) return 1 end return 0"
KPIS_SCRIPT_SHA = hashlib.sha1(KPIS_SCRIPT.encode()).hexdigest()

# The same for many customers in one call on a single Redis: ARGV = prefix, then (customer id,
# KPIs JSON) per customer; returns 1 or 0 per customer. redis-py packing one EVALSHA per
# customer cost about 6 % of the worker in a 2M-customer backlog (py-spy, 2026-12-07).
KPIS_MANY_SCRIPT = """
local prefix = ARGV[1]
local written = {}
for index = 2, #ARGV, 2 do
  local key = prefix .. ':customer:' .. ARGV[index]
  if redis.call('HMGET', key, 'score')[1] then
    redis.call('HSET', key, 'kpis', ARGV[index + 1])
    written[#written + 1] = 1
  else
    written[#written + 1] = 0
  end
end
return written
"""
_KPIS_MANY_SCRIPT_SHA = hashlib.sha1(KPIS_MANY_SCRIPT.encode()).hexdigest().encode()


class _BulkHeads(dict):
    """The header of a RESP bulk string by its length (``$671\\r\\n``), made once per length:
    formatting each argument with ``%`` cost more than the rest of a customer's row."""

    def __missing__(self, length: int) -> bytes:
        head = b"$%d\r\n" % length
        if length < 65536:  # a message's fields; a longer argument (rare) is not kept
            self[length] = head
        return head


_BULK_HEADS = _BulkHeads()


def _bulk(value: bytes) -> bytes:
    """One argument in the Redis protocol (RESP), from its length and bytes."""
    return _BULK_HEADS[len(value)] + value + b"\r\n"


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
    cancelled: bool = False
    cancelled_at: str | None = None
    cancellation_reason: str | None = None
    mrr: float = 0.0
    usage_growth: float | None = None


_stored_score = msgspec.json.Decoder(_StoredScore)

#: (min_confidence, min_usage_growth) of the expansion list (settings' [expansion]).
ExpansionRule = tuple[float, float]
DEFAULT_EXPANSION: ExpansionRule = (0.5, 0.2)


def _stored_values(encoded: bytes, expansion: ExpansionRule) -> tuple[bytes, ...]:
    """The SCORE_FIELDS of a message as the hash keeps them (numbers as Python prints them,
    an absent value as empty), then when it cancelled and its expansion growth."""
    message = _stored_score.decode(encoded)
    growth = expansion_growth(message.band, message.confidence, message.usage_growth, *expansion)
    cancelled_ms = epoch_ms(message.cancelled_at) if message.cancelled and message.cancelled_at else None
    return (
        repr(message.score).encode(), message.band.encode(), repr(message.churn_risk).encode(), message.as_of.encode(),
        message.computed_at.encode(), message.model_version.encode(), bytes(message.components), bytes(message.changes),
        repr(message.confidence).encode(), b"1" if message.cancelled else b"0", (message.cancelled_at or "").encode(),
        (message.cancellation_reason or "").encode(), repr(message.mrr).encode(),
        b"" if message.usage_growth is None else repr(message.usage_growth).encode(),
        b"" if cancelled_ms is None else str(cancelled_ms).encode(), b"" if growth is None else repr(growth).encode(),
    )


def _score_arguments(customer_id: str, encoded: bytes, expansion: ExpansionRule) -> bytes:
    """The customer's id, hash values and ranks as script arguments, in one join (1.6 us a
    customer against 3.8 for one ``%`` formatting of the row, 2026-12-07)."""
    heads = _BULK_HEADS
    customer = customer_id.encode()
    values = _stored_values(encoded, expansion)
    return b"\r\n".join([heads[len(customer)] + customer, *[heads[len(value)] + value for value in values], b""])


def _script_call(prefix: str, alerts: list[tuple[str, bytes]], scores: dict[str, bytes], expansion: ExpansionRule) -> list[bytes]:
    """EVALSHA of the write script with these rows, packed here: redis-py packs each argument
    in Python, which cost more per customer than scoring it."""
    arguments = [_bulk(prefix.encode()), _bulk(str(RECENT_ALERTS).encode()), _bulk(str(len(alerts)).encode())]
    arguments += [_bulk(customer_id.encode()) + _bulk(encoded) for customer_id, encoded in alerts]
    arguments += [_score_arguments(customer_id, encoded, expansion) for customer_id, encoded in scores.items()]
    count = 3 + 2 * len(alerts) + (len(SCORE_FIELDS) + 1 + _RANK_ARGUMENTS) * len(scores)
    return [b"*%d\r\n" % (count + 3), _bulk(b"EVALSHA"), _bulk(_WRITE_SCRIPT_SHA), _bulk(b"0"), *arguments]


def _kpis_call(prefix: str, rows: list[tuple[str, bytes]]) -> list[bytes]:
    """EVALSHA of KPIS_MANY_SCRIPT with these (customer id, KPIs JSON) rows, packed here."""
    arguments = [_bulk(customer_id.encode()) + _bulk(encoded) for customer_id, encoded in rows]
    return [b"*%d\r\n" % (4 + 2 * len(rows)), _bulk(b"EVALSHA"), _bulk(_KPIS_MANY_SCRIPT_SHA), _bulk(b"0"), _bulk(prefix.encode()), *arguments]


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


#: Scores waiting for Redis at most (about 1 KB each), whatever the customer count.
MAX_PENDING_SCORES = 200_000


class LatestScoreCache:
    """Keeps the latest score per customer in Redis, off the hot path.

    The stream hands over each published message as the bytes it sent to Kafka; only
    the newest per customer is kept. A timer writes them in chunks, one script call
    each. If Redis is down, pending scores stay (one per
    customer) and are retried, up to MAX_PENDING_SCORES: beyond, they are dropped and the
    refill writes every owned customer's score again from the records once Redis answers
    (with ten million customers, one per customer would be gigabytes). The Kafka output
    never waits for Redis.

    While the worker works through a backlog, the scores it publishes are late anyway
    and most are superseded within seconds: a flush then starts every
    ``backlog_interval_seconds`` instead of at every timer tick. In a 10,000-customer
    backlog that took Redis from 0.2 to 0.1 of a core (bench/throughput.py, 2026-11-30).

    Catching up, a flush writes the scores that waited when it started; what the stream
    scores during its round trips waits for the next one, so a customer scored many times
    in a backlog is written once an interval. Over 10,000 customers that took Redis from
    1.6-2.4 s of CPU to 0.45-0.8 s in a 200,000-event run, and the worker was faster in each
    of three alternated pairs (bench/throughput.py, 2026-12-08; docs/throughput-history.md);
    resident memory over 100,000 customers did not grow (bench/scale.py).
    Live, or once ``backlog_pending_limit`` wait, or for a stopping worker, a flush writes
    until nothing waits. (Tried on 2026-11-30 without the limit, 68,000 scores waited at
    once over 100,000 customers and the worker grew by 50 MB.)
    """

    def __init__(
        self,
        client: str | redis_asyncio.Redis | RedisCluster,
        prefix: str,
        backlog_interval_seconds: float = 0.0,
        backlog_pending_limit: int = BACKLOG_PENDING_LIMIT,
        expansion: ExpansionRule = DEFAULT_EXPANSION,
    ) -> None:
        """``client``: from stream/sinks/redis_connection.py (TLS, ACL user, cluster), or a plain URL."""
        if isinstance(client, str):
            client = redis_asyncio.Redis.from_url(client, socket_timeout=2, socket_connect_timeout=2)
        self._client = client
        #: A cluster takes per-key commands and hash-tagged keys instead of the one-script write.
        self.hash_tags = isinstance(client, RedisCluster)
        self._prefix = prefix
        self._expansion = expansion
        self._pending: dict[str, bytes] = {}
        self.overflowed = False
        self._pending_alerts: list[tuple[str, bytes]] = []
        self._pending_erasures: list[str] = []  # evicted customers whose keys are to go
        self._healthy = True
        self._flushing = False
        #: Set while no flush runs: an erasure waits for the one in flight (its chunk may hold the customer).
        self._idle = asyncio.Event()
        self._idle.set()
        #: Customers erased or evicted while a flush was in flight: never put back by its failure.
        self._gone_during_flush: set[str] = set()
        self._backlog_interval = backlog_interval_seconds
        self._backlog_pending_limit = backlog_pending_limit
        self._catching_up = False
        self._last_flush = self._last_batch = time.monotonic()
        # A key only this worker writes: when it is gone, Redis lost what the worker wrote.
        self._marker = f"{prefix}:worker:{uuid.uuid4().hex}"
        self._marked = False

    @property
    def client(self) -> redis_asyncio.Redis | RedisCluster:
        return self._client

    def is_pending(self, customer_id: str) -> bool:
        return customer_id in self._pending

    async def lost_since_last_check(self) -> bool:
        """Whether Redis lost what this worker wrote (restarted empty, flushed) since the last
        call: this worker's marker key is gone. False while Redis cannot be reached (the next
        check after it answers again tells), and on the first call (nothing written yet)."""
        try:
            kept = await self._client.set(self._marker, b"1", ex=MARKER_SECONDS, xx=True)
            if kept:
                return False
            await self._client.set(self._marker, b"1", ex=MARKER_SECONDS)
        except (RedisError, OSError):
            return False
        lost, self._marked = self._marked, True
        return lost

    def offer(self, customer_id: str, encoded_message: bytes) -> None:
        """The customer's newest ``customer-health`` message, as published. Beyond
        MAX_PENDING_SCORES waiting (Redis away or slower than the stream), what waits is dropped
        and ``overflowed`` set: the refill writes every owned customer's score again from the
        records once Redis answers, so memory stays bounded whatever the customer count."""
        if len(self._pending) >= MAX_PENDING_SCORES and customer_id not in self._pending:
            log.warning("%s scores waited for Redis: dropped; every owned customer's score is written again from the records once Redis answers",
                        len(self._pending))
            metrics.REDIS_PENDING_DROPPED.inc(len(self._pending))
            self._pending.clear()
            self.overflowed = True
        self._pending[customer_id] = encoded_message

    def room_for(self, scores: int) -> bool:
        """Whether ``scores`` more can wait while half of MAX_PENDING_SCORES is left to the stream:
        a refill that filled the rest would itself make the scores overflow, and start over."""
        return len(self._pending) + scores <= MAX_PENDING_SCORES // 2

    def take_overflowed(self) -> bool:
        """Whether scores were dropped since the last call (the refill then queues every customer)."""
        overflowed, self.overflowed = self.overflowed, False
        return overflowed

    @property
    def healthy(self) -> bool:
        """False from a failed write until one succeeds."""
        return self._healthy

    def offer_alert(self, customer_id: str, encoded_alert: bytes) -> None:
        if len(self._pending_alerts) < 100_000:  # bounded while Redis is away; Kafka has them all
            self._pending_alerts.append((customer_id, encoded_alert))

    @property
    def pending(self) -> int:
        return len(self._pending) + len(self._pending_alerts) + len(self._pending_erasures)

    def catching_up(self, behind: bool) -> None:
        """Called per batch of events: whether the worker is working through a backlog (the batch is full)."""
        self._catching_up = behind
        self._last_batch = time.monotonic()

    def flush_due(self, now: float) -> bool:
        """Whether a timer tick at ``now`` (time.monotonic) should flush."""
        return (
            not self._catching_up
            or now - self._last_batch >= BACKLOG_QUIET_SECONDS
            or len(self._pending) >= self._backlog_pending_limit
            or now - self._last_flush >= self._backlog_interval
        )

    async def flush(self, drain: bool = False) -> None:
        """Writes what is pending, a chunk per round trip; a flush already running does it.
        ``drain``: everything, even while catching up (a stopping worker)."""
        if self._flushing:
            return
        self._flushing = True
        self._idle.clear()
        self._last_flush = time.monotonic()
        try:
            while self._pending_erasures:
                if not await self._erase_chunk():
                    return
            # Catching up, a flush writes the scores that waited when it started (what comes
            # meanwhile waits for the next one, so each customer's scores coalesce), unless
            # the backlog limit is reached; otherwise it writes until nothing waits.
            budget = len(self._pending) if self._catching_up and not drain else None
            while self._pending_alerts or self._pending:
                if budget is not None and budget <= 0 and not self._pending_alerts and len(self._pending) < self._backlog_pending_limit:
                    break
                written = await self._flush_chunk(FLUSH_CHUNK if budget is None or budget <= 0 else min(budget, FLUSH_CHUNK))
                if written is None:
                    return
                if budget is not None:
                    budget -= written
        finally:
            self._flushing = False
            self._gone_during_flush.clear()
            self._idle.set()

    async def _erase_chunk(self) -> bool:
        """Deletes the keys of up to a chunk of evicted customers; on failure keeps them for the next flush."""
        chunk, self._pending_erasures = self._pending_erasures[:FLUSH_CHUNK], self._pending_erasures[FLUSH_CHUNK:]
        try:
            await self._delete(chunk)
            return True
        except (RedisError, OSError) as error:
            metrics.REDIS_WRITE_FAILURES.inc()
            self._pending_erasures[:0] = chunk
            log.warning("Redis could not delete the keys of %s evicted customer(s), will retry: %s", len(chunk), error)
            return False

    async def _flush_chunk(self, most: int = FLUSH_CHUNK) -> int | None:
        """Alerts first, then up to ``most`` scores, the oldest; how many scores it wrote, or None
        on failure (they are put back, newer offers win)."""
        alerts = self._pending_alerts[:FLUSH_CHUNK]
        del self._pending_alerts[:FLUSH_CHUNK]
        scores = _take(self._pending, most) if not alerts else {}
        try:
            if self.hash_tags:
                await self._write_per_key(alerts, scores)
            else:
                await self._write(_script_call(self._prefix, alerts, scores, self._expansion))
        except (RedisError, OSError) as error:
            metrics.REDIS_WRITE_FAILURES.inc()
            gone = self._gone_during_flush  # erased meanwhile: never put back
            for customer_id, encoded in scores.items():
                if customer_id not in gone:
                    self._pending.setdefault(customer_id, encoded)
            self._pending_alerts[:0] = [(customer, alert) for customer, alert in alerts if customer not in gone]
            if self._healthy:
                log.warning("Redis write failed, will retry (%s pending): %s", self.pending, error)
            self._healthy = False
            return None
        if not self._healthy:
            log.info("Redis writes recovered")
        self._healthy = True
        return len(scores)

    async def _write(self, command: list[bytes], script: str = WRITE_SCRIPT) -> Any:
        """One round trip of a packed EVALSHA of ``script``, loaded first when Redis does not know
        it (a restart, SCRIPT FLUSH); its answer."""
        pool = self._client.connection_pool
        connection = await pool.get_connection()
        try:
            await connection.send_packed_command(command)
            try:
                return await connection.read_response()
            except NoScriptError:
                await self._client.script_load(script)
                await connection.send_packed_command(command)
                return await connection.read_response()
        finally:
            await pool.release(connection)

    async def _write_per_key(self, alerts: list[tuple[str, bytes]], scores: dict[str, bytes]) -> None:
        """The same rows as the script, as per-key commands a cluster routes to each key's
        node: the customer's hash and alert list share a slot; the sorted set is one key."""
        pipe = self._client.pipeline()
        for customer_id, encoded in alerts:
            key = alerts_key(self._prefix, customer_id, hash_tag=True)
            pipe.lpush(key, encoded)
            pipe.ltrim(key, 0, RECENT_ALERTS - 1)
        prefix = self._prefix
        for customer_id, encoded in scores.items():
            *values, cancelled_ms, growth = _stored_values(encoded, self._expansion)
            pipe.hset(customer_key(prefix, customer_id, hash_tag=True), mapping=dict(zip(SCORE_FIELDS, values)))
            score = float(values[0])
            if cancelled_ms:
                pipe.zadd(cancelled_key(prefix), {customer_id: score})
                pipe.zadd(churned_key(prefix), {customer_id: int(cancelled_ms)})
                pipe.zrem(scores_key(prefix), customer_id)
            else:
                pipe.zadd(scores_key(prefix), {customer_id: score})
                pipe.zrem(cancelled_key(prefix), customer_id)
                pipe.zrem(churned_key(prefix), customer_id)
            if growth:
                pipe.zadd(expansion_key(prefix), {customer_id: float(growth)})
            else:
                pipe.zrem(expansion_key(prefix), customer_id)
        await pipe.execute()

    async def write_kpis(self, rows: list[tuple[str, bytes]]) -> list[str]:
        """Each customer's KPIs (JSON) into the ``kpis`` field of its hash, only where the hash
        exists: an atomic check, so an erased customer's hash is never brought back. By EVALSHA
        (the script loaded when Redis answers NOSCRIPT), the commands the documented ACL grants
        (docs/deploy.md).
        Returns the customers not written (no hash yet: their first score is on its way)."""
        gone = self._gone_during_flush
        rows = [(customer_id, encoded) for customer_id, encoded in rows if customer_id not in gone]
        if self.hash_tags:  # a cluster pipeline refuses EVALSHA: one call per customer, concurrently
            await self._client.script_load(KPIS_SCRIPT)  # every node of a cluster; cheap when loaded
            written = await asyncio.gather(*(
                self._client.evalsha(KPIS_SCRIPT_SHA, 1, customer_key(self._prefix, customer_id, True), encoded) for customer_id, encoded in rows
            ))
        else:  # one script call a chunk, packed here
            written = []
            for start in range(0, len(rows), FLUSH_CHUNK):
                written += await self._write(_kpis_call(self._prefix, rows[start:start + FLUSH_CHUNK]), KPIS_MANY_SCRIPT)
        return [customer_id for (customer_id, _encoded), done in zip(rows, written) if not done]

    def queue_erase(self, customer_id: str) -> None:
        """Deletes the customer's keys at the next flush (retried like the writes)."""
        self._forget_pending(customer_id)
        self._pending_erasures.append(customer_id)

    async def erase(self, customer_id: str) -> None:
        """Deletes the customer's hash, alert list and ranking, and drops what waits to be
        written for it; raises while Redis cannot do it (the erasure then waits and retries).
        A flush in flight may hold the customer's score: the delete goes after it, and its
        failure does not put the score back."""
        self._forget_pending(customer_id)
        await self._idle.wait()
        await self._delete([customer_id])

    def _forget_pending(self, customer_id: str) -> None:
        self._pending.pop(customer_id, None)
        self._pending_alerts = [(customer, alert) for customer, alert in self._pending_alerts if customer != customer_id]
        if self._flushing:
            self._gone_during_flush.add(customer_id)

    async def _delete(self, customer_ids: list[str]) -> None:
        """One round trip deleting these customers' hashes, alert lists and rankings."""
        pipe = self._client.pipeline(transaction=False)
        for customer_id in customer_ids:
            pipe.delete(customer_key(self._prefix, customer_id, self.hash_tags))
            pipe.delete(alerts_key(self._prefix, customer_id, self.hash_tags))
        for ranking in (scores_key, cancelled_key, churned_key, expansion_key):
            pipe.zrem(ranking(self._prefix), *customer_ids)
        await pipe.execute()

    async def close(self) -> None:
        await self._client.aclose()

