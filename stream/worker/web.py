"""The worker's HTTP lookups for people and tools, answered from Redis (any worker can answer)."""

from __future__ import annotations

import hmac

import faust
import msgspec
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from stream import metrics
from stream.settings import Settings
from stream.sinks.redis_cache import RECENT_ALERTS, LatestScoreCache, alerts_key, customer_key, scores_key

MAX_AT_RISK = 1000


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


def readiness(app: faust.App, assigned_once: bool) -> str | None:
    """None when the worker is ready for traffic, else why not (for /readyz)."""
    if not assigned_once:
        return "waiting for the consumer group to assign partitions"
    if app.in_recovery:  # Faust counts this as part of the rebalance: the more precise reason first
        return "reading the state back from the changelog"
    if app.rebalancing:
        return "rebalancing"
    return None


def error(view: View, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return view.json({"error": message}, status=status, headers=headers)


def refused(view: View, request: Request, tokens: list[bytes]) -> Response | None:
    """A 401 answer unless tokens are configured and the request carries one."""
    if not tokens or bearer_token_accepted(request, tokens):
        return None
    return error(view, 401, "a valid bearer token is required (Authorization: Bearer <token>)", {"WWW-Authenticate": "Bearer"})


def register(app: faust.App, cache: LatestScoreCache, prefix: str, settings: Settings) -> None:
    """Every page of the worker: the probes, /metrics and the customer lookups."""
    api_tokens = [token.encode() for token in settings.all_api_tokens()]
    metrics_tokens = [settings.metrics_token.get_secret_value().encode()] if settings.metrics_token else []
    register_probes(app)
    register_lookups(app, cache, prefix, api_tokens)

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            denied = refused(self, request, metrics_tokens)
            if denied is not None:
                return denied
            return self.bytes(generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


def register_probes(app: faust.App) -> None:
    """/healthz and /readyz: no authentication, no customer data."""
    assigned = []

    @app.on_partitions_assigned.connect
    async def note_assignment(sender: faust.App, assigned_partitions: set, **kwargs: object) -> None:
        assigned.append(True)

    @app.page("/healthz")
    class Alive(View):
        """The process answers: its event loop turns (no authentication, no customer data)."""

        async def get(self, request: Request) -> Response:
            return self.json({"status": "alive"})

    @app.page("/readyz")
    class Ready(View):
        """200 once partitions are assigned and their state read back; 503 with the reason before and during a rebalance."""

        async def get(self, request: Request) -> Response:
            reason = readiness(app, bool(assigned))
            if reason is not None:
                return self.json({"status": "not ready", "reason": reason}, status=503)
            return self.json({"status": "ready"})


def register_lookups(app: faust.App, cache: LatestScoreCache, prefix: str, api_tokens: list[bytes]) -> None:
    """The customer lookups, from Redis, behind the bearer tokens when there are any."""
    redis = cache.client
    tagged = cache.hash_tags

    @app.page("/customers/at-risk")
    class AtRisk(View):
        """Lowest scores first: ``?limit=N`` (1-1000, default 50)."""

        async def get(self, request: Request) -> Response:
            denied = refused(self, request, api_tokens)
            if denied is not None:
                return denied
            raw_limit = request.query.get("limit", "50")
            if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_AT_RISK:
                return error(self, 400, f"limit must be an integer from 1 to {MAX_AT_RISK}, got {raw_limit!r}")
            try:
                ranked = await redis.zrange(scores_key(prefix), 0, int(raw_limit) - 1, withscores=True)
                async with redis.pipeline(transaction=False) as pipe:
                    for customer_id, _ in ranked:
                        pipe.hmget(customer_key(prefix, customer_id.decode(), tagged), "band", "churn_risk", "as_of")
                    details = await pipe.execute() if ranked else []
            except (RedisError, OSError) as exc:
                return error(self, 503, f"Redis is unavailable: {exc}")
            customers = [
                {
                    "customer_id": customer_id.decode(),
                    "score": score,
                    "band": band.decode() if band else None,
                    "churn_risk": float(risk) if risk else None,
                    "as_of": as_of.decode() if as_of else None,
                }
                for (customer_id, score), (band, risk, as_of) in zip(ranked, details)
            ]
            return self.json({"customers": customers, "count": len(customers)})

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
                return error(self, 503, f"Redis is unavailable: {exc}")
            if not fields:
                return error(self, 404, f"unknown customer {customer_id!r} (no score yet)")
            values = {key.decode(): value.decode() for key, value in fields.items()}
            return self.json(
                {
                    "customer_id": customer_id,
                    "score": float(values["score"]),
                    "band": values["band"],
                    "churn_risk": float(values["churn_risk"]),
                    "confidence": float(values["confidence"]) if "confidence" in values else None,
                    "components": msgspec.json.decode(values["components"]),
                    "changes": msgspec.json.decode(values["changes"]) if "changes" in values else {},
                    "as_of": values["as_of"],
                    "computed_at": values["computed_at"],
                    "model_version": values["model_version"],
                    "recent_alerts": [msgspec.json.decode(alert) for alert in recent],
                }
            )
