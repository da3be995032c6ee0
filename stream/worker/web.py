"""The worker's HTTP lookups for people and tools, answered from Redis (any worker can answer),
and its probes: /readyz says whether this pod can answer lookups (Redis reachable), whatever
the consumer group is doing; /healthz says whether the process is alive and its agent
advancing, with the processing state (assigning, recovering, rebalancing, running) as detail.
Error bodies carry no internal error text: it is logged instead."""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import faust
import msgspec
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from scoring.fleet_sums import aged_kpis
from scoring.output import rfc3339
from stream import metrics
from stream.settings import Settings
from stream.sinks.redis_cache import (
    RECENT_ALERTS,
    LatestScoreCache,
    alerts_key,
    cancelled_key,
    churned_key,
    customer_key,
    expansion_key,
    scores_key,
)

MAX_AT_RISK = 1000
_LIMIT = re.compile(r"[0-9]{1,4}")  # ASCII digits only: str.isdigit takes "²", which int() refuses
log = logging.getLogger("healthscore.worker")


def bearer_token_accepted(request: Request, tokens: list[bytes]) -> bool:
    """Whether the request carries one of the tokens as ``Authorization: Bearer ...``, compared in
    constant time against every token (so the time taken says nothing about a near miss)."""
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        return False
    presented = given.strip().encode()
    accepted = False
    for token in tokens:
        accepted |= hmac.compare_digest(presented, token)
    return accepted


def processing_state(app: faust.App, assigned_once: bool) -> str:
    """What the agent is doing: assigning, recovering (reading state back), rebalancing or running."""
    if not assigned_once:
        return "assigning"
    if app.in_recovery:  # Faust counts this as part of the rebalance: the more precise state first
        return "recovering"
    if app.rebalancing:
        return "rebalancing"
    return "running"


@dataclass
class AgentProgress:
    """Whether the apply agent is alive and advancing: ``last_batch`` (time.monotonic()) is
    updated by the agent after each batch; ``waiting`` says how many records wait for it."""

    waiting: Callable[[], int]
    actors_alive: Callable[[], bool]
    stall_seconds: float
    last_batch: float = 0.0

    def __post_init__(self) -> None:
        self.last_batch = time.monotonic()

    def note_batch(self) -> None:
        self.last_batch = time.monotonic()

    def problem(self, state: str) -> str | None:
        """None while the agent is fine; else why /healthz fails."""
        if not self.actors_alive():
            return "the apply agent is not running"
        idle = time.monotonic() - self.last_batch
        if state == "running" and self.waiting() > 0 and idle > self.stall_seconds:
            return f"the apply agent has not advanced for {idle:.0f} s while records wait (agent_stall_seconds)"
        return None


def error(view: View, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return view.json({"error": message}, status=status, headers=headers)


def refused(view: View, request: Request, tokens: list[bytes]) -> Response | None:
    """A 401 answer unless tokens are configured and the request carries one."""
    if not tokens or bearer_token_accepted(request, tokens):
        return None
    return error(view, 401, "a valid bearer token is required (Authorization: Bearer <token>)", {"WWW-Authenticate": "Bearer"})


def register(app: faust.App, cache: LatestScoreCache, prefix: str, settings: Settings, progress: AgentProgress) -> None:
    """Every page of the worker: the probes, /metrics and the customer lookups."""
    api_tokens = [token.encode() for token in settings.all_api_tokens()]
    metrics_tokens = [settings.metrics_token.get_secret_value().encode()] if settings.metrics_token else []
    register_probes(app, cache, progress)
    register_lookups(app, cache, prefix, api_tokens)

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            denied = refused(self, request, metrics_tokens)
            if denied is not None:
                return denied
            return self.bytes(generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


def register_probes(app: faust.App, cache: LatestScoreCache, progress: AgentProgress) -> None:
    """/healthz and /readyz: no authentication, no customer data."""
    assigned = []

    @app.on_partitions_assigned.connect
    async def note_assignment(sender: faust.App, assigned_partitions: set, **kwargs: object) -> None:
        assigned.append(True)

    def state() -> str:
        current = processing_state(app, bool(assigned))
        for known in PROCESSING_STATES:
            metrics.PROCESSING_STATE.labels(known).set(1 if known == current else 0)
        return current

    @app.page("/healthz")
    class Alive(View):
        """200 while the event loop turns and the apply agent runs and advances; 503 with why not."""

        async def get(self, request: Request) -> Response:
            current = state()
            problem = progress.problem(current)
            if problem is not None:
                return self.json({"status": "failing", "reason": problem, "processing": current}, status=503)
            return self.json({"status": "alive", "processing": current})

    @app.page("/readyz")
    class Ready(View):
        """200 while this pod can answer lookups (Redis answers); a rebalance or a recovery does
        not stop lookups (they come from Redis), so they are in /healthz's detail instead."""

        async def get(self, request: Request) -> Response:
            current = state()
            try:
                await asyncio.wait_for(cache.client.ping(), timeout=2.0)
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                log.warning("/readyz: Redis does not answer (%s: %s)", type(exc).__name__, exc)
                return self.json({"status": "not ready", "reason": "Redis does not answer", "processing": current}, status=503)
            return self.json({"status": "ready", "processing": current})


PROCESSING_STATES = ("assigning", "recovering", "rebalancing", "running")


def redis_unavailable(view: View, exc: BaseException) -> Response:
    """503 without Redis's own error text (it names internal hosts): that goes to the log."""
    log.warning("A lookup failed: Redis is unavailable (%s: %s)", type(exc).__name__, exc)
    return error(view, 503, "Redis is unavailable")


#: The hash fields each list entry shows, after its id and score.
LIST_FIELDS = ("band", "churn_risk", "confidence", "mrr", "as_of", "cancelled_at", "cancellation_reason", "usage_growth")
#: Customers tied with the last of a page that are read to break the tie (by churn risk, then MRR).
MAX_TIES = 1000
_NUMBERS = {"churn_risk", "confidence", "mrr", "usage_growth"}


def _value(name: str, raw: bytes | None) -> object:
    if not raw:
        return None
    text = raw.decode()
    return float(text) if name in _NUMBERS else text


def riskiest_first(entry: dict) -> tuple:
    """Lowest score first; ties by churn risk (higher first), then MRR (bigger account first), then id."""
    return (entry["score"], -(entry["churn_risk"] or 0.0), -(entry["mrr"] or 0.0), entry["customer_id"])


async def list_entries(redis: Any, prefix: str, tagged: bool, ranked: list[tuple[bytes, float]], score_name: str = "score") -> list[dict]:
    """Each ranked customer with the LIST_FIELDS of its hash (one round trip)."""
    if not ranked:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for customer_id, _ in ranked:
            pipe.hmget(customer_key(prefix, customer_id.decode(), tagged), "score", *LIST_FIELDS)
        details = await pipe.execute()
    entries = []
    for (customer_id, rank), (score, *values) in zip(ranked, details):
        entry = {"customer_id": customer_id.decode(), "score": float(score) if score else None}
        entry.update({name: _value(name, raw) for name, raw in zip(LIST_FIELDS, values)})
        entry["cancelled"] = entry["cancelled_at"] is not None
        if score_name != "score":
            entry[score_name] = rank
        entries.append(entry)
    return entries


async def riskiest(redis: Any, prefix: str, tagged: bool, key: str, limit: int) -> list[dict]:
    """The ``limit`` lowest scores of a ranking, ties at the page's edge broken by riskiest_first."""
    ranked = await redis.zrange(key, 0, limit - 1, withscores=True)
    if len(ranked) == limit:
        edge = ranked[-1][1]
        ties = await redis.zrange(key, edge, edge, byscore=True, offset=0, num=MAX_TIES, withscores=True)
        ranked = list({member: score for member, score in [*ranked, *ties]}.items())
    entries = await list_entries(redis, prefix, tagged, ranked)
    for entry in entries:
        entry["score"] = entry["score"] if entry["score"] is not None else 0.0
    entries.sort(key=riskiest_first)
    return entries[:limit]


def query_limit(request: Request) -> int | str:
    """``?limit=`` (1-1000, default 50), or why it is refused."""
    raw_limit = request.query.get("limit", "50")
    if _LIMIT.fullmatch(raw_limit) is None or not 1 <= int(raw_limit) <= MAX_AT_RISK:
        return f"limit must be an integer from 1 to {MAX_AT_RISK}, got {raw_limit[:20]!r}"
    return int(raw_limit)


def query_since_ms(request: Request) -> int | str:
    """``?since=`` as RFC 3339 or a date (UTC), default the last 30 days; or why it is refused."""
    raw = request.query.get("since")
    if raw is None:
        return int(time.time() * 1000) - 30 * 86_400_000
    try:
        moment = datetime.fromisoformat(raw[:40])
    except ValueError:
        return f"since must be an RFC 3339 time or a date (YYYY-MM-DD), got {raw[:40]!r}"
    return int((moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp() * 1000)


def register_lookups(app: faust.App, cache: LatestScoreCache, prefix: str, api_tokens: list[bytes]) -> None:
    """The customer lookups, from Redis, behind the bearer tokens when there are any."""
    redis = cache.client
    tagged = cache.hash_tags
    register_lists(app, redis, prefix, tagged, api_tokens)

    @app.page("/customers/{customer_id}/health")
    class CustomerHealth(View):
        """Latest score, band, components and recent alerts of one customer."""

        async def get(self, request: Request, customer_id: str) -> Response:
            denied = refused(self, request, api_tokens)
            if denied is not None:
                return denied
            try:
                fields = await redis.hgetall(customer_key(prefix, customer_id, tagged))
                recent = await redis.lrange(alerts_key(prefix, customer_id, tagged), 0, RECENT_ALERTS - 1)
            except (RedisError, OSError) as exc:
                return redis_unavailable(self, exc)
            if not fields:
                return error(self, 404, "unknown customer (no score yet)")
            values = {key.decode(): value for key, value in fields.items()}
            text = {key: value.decode() for key, value in values.items()}
            return self.json(
                {
                    "customer_id": customer_id,
                    "score": float(text["score"]),
                    "band": text["band"],
                    "churn_risk": float(text["churn_risk"]),
                    "confidence": _value("confidence", values.get("confidence")),
                    "components": msgspec.json.decode(text["components"]),
                    "changes": msgspec.json.decode(text["changes"]) if "changes" in text else {},
                    "as_of": text["as_of"],
                    "computed_at": text["computed_at"],
                    "model_version": text["model_version"],
                    "cancelled": text.get("cancelled") == "1",
                    "cancelled_at": _value("cancelled_at", values.get("cancelled_at")),
                    "cancellation_reason": _value("cancellation_reason", values.get("cancellation_reason")),
                    "mrr": _value("mrr", values.get("mrr")),
                    "usage_growth": _value("usage_growth", values.get("usage_growth")),
                    "recent_alerts": [msgspec.json.decode(alert) for alert in recent],
                    "kpis": served_kpis(values["kpis"], int(time.time() * 1000)) if "kpis" in values else None,
                }
            )

    @app.page("/customers/{customer_id}/kpis")
    class CustomerKpis(View):
        """Everything a customer-success manager reads about one customer (scoring.kpis.customer_kpis):
        computed by the fleet export (``computed_at``) when the customer's record changed or a
        window edge passed, its ages (days since) given at the time of reading (``as_of``)."""

        async def get(self, request: Request, customer_id: str) -> Response:
            denied = refused(self, request, api_tokens)
            if denied is not None:
                return denied
            try:
                stored, = await redis.hmget(customer_key(prefix, customer_id, tagged), ["kpis"])  # HMGET: in the documented ACL
            except (RedisError, OSError) as exc:
                return redis_unavailable(self, exc)
            if stored is None:
                return error(self, 404, "no KPIs for this customer yet (unknown, or not exported since its first score)")
            return self.json({"customer_id": customer_id, **served_kpis(stored, int(time.time() * 1000))})


def served_kpis(stored: bytes | str, now_ms: int) -> dict[str, Any]:
    """A customer's KPIs as the fleet export wrote them (``as_of`` the time they were computed),
    their ages moved to ``now_ms``: exact until the export recomputes them at their next window edge."""
    kpis = msgspec.json.decode(stored)
    try:
        computed_ms = round(datetime.fromisoformat(kpis["as_of"]).timestamp() * 1000)
    except (KeyError, TypeError, ValueError):
        return kpis
    now_ms = max(now_ms, computed_ms)
    return {**aged_kpis(kpis, computed_ms, now_ms), "as_of": rfc3339(now_ms), "computed_at": kpis["as_of"]}


def register_lists(app: faust.App, redis: Any, prefix: str, tagged: bool, api_tokens: list[bytes]) -> None:
    """The lists a customer-success manager opens: the riskiest still to save, who left, who is ready for more."""
    register_at_risk(app, redis, prefix, tagged, api_tokens)
    register_churned_and_expansion(app, redis, prefix, tagged, api_tokens)


def register_at_risk(app: faust.App, redis: Any, prefix: str, tagged: bool, api_tokens: list[bytes]) -> None:
    @app.page("/customers/at-risk")
    class AtRisk(View):
        """Live customers, lowest scores first (``?limit=``); ``?include_cancelled=true`` lists the
        cancelled after them."""

        async def get(self, request: Request) -> Response:
            denied = refused(self, request, api_tokens)
            if denied is not None:
                return denied
            limit = query_limit(request)
            include = request.query.get("include_cancelled", "false").lower()
            if isinstance(limit, str) or include not in ("true", "false", "1", "0"):
                return error(self, 400, limit if isinstance(limit, str) else "include_cancelled must be true or false")
            try:
                customers = await riskiest(redis, prefix, tagged, scores_key(prefix), limit)
                if include in ("true", "1") and len(customers) < limit:
                    customers += await riskiest(redis, prefix, tagged, cancelled_key(prefix), limit - len(customers))
            except (RedisError, OSError) as exc:
                return redis_unavailable(self, exc)
            return self.json({"customers": customers, "count": len(customers)})


def register_churned_and_expansion(app: faust.App, redis: Any, prefix: str, tagged: bool, api_tokens: list[bytes]) -> None:
    @app.page("/customers/churned")
    class Churned(View):
        """Customers who cancelled since ``?since=`` (default: 30 days ago), latest first, with their exit reason."""

        async def get(self, request: Request) -> Response:
            denied = refused(self, request, api_tokens)
            if denied is not None:
                return denied
            limit, since_ms = query_limit(request), query_since_ms(request)
            if isinstance(limit, str) or isinstance(since_ms, str):
                return error(self, 400, limit if isinstance(limit, str) else str(since_ms))
            try:
                ranked = await redis.zrange(churned_key(prefix), "+inf", since_ms, desc=True, byscore=True, offset=0, num=limit, withscores=True)
                customers = await list_entries(redis, prefix, tagged, ranked)
            except (RedisError, OSError) as exc:
                return redis_unavailable(self, exc)
            return self.json({"customers": customers, "count": len(customers)})

    @app.page("/customers/expansion")
    class Expansion(View):
        """Healthy customers ready for more (upsell, cross-sell), fastest-growing usage first."""

        async def get(self, request: Request) -> Response:
            denied = refused(self, request, api_tokens)
            if denied is not None:
                return denied
            limit = query_limit(request)
            if isinstance(limit, str):
                return error(self, 400, limit)
            try:
                ranked = await redis.zrange(expansion_key(prefix), 0, limit - 1, desc=True, withscores=True)
                customers = await list_entries(redis, prefix, tagged, ranked)
            except (RedisError, OSError) as exc:
                return redis_unavailable(self, exc)
            return self.json({"customers": customers, "count": len(customers)})
