"""The worker's HTTP lookups for people and tools, answered from Redis (any worker can answer)."""

from __future__ import annotations

import faust
import msgspec
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from stream import metrics
from stream.sinks.redis_cache import RECENT_ALERTS, LatestScoreCache, alerts_key, customer_key, scores_key

MAX_AT_RISK = 1000


def register(app: faust.App, cache: LatestScoreCache, prefix: str) -> None:
    redis = cache.client

    def error(view: View, status: int, message: str) -> Response:
        return view.json({"error": message}, status=status)

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.page("/customers/at-risk")
    class AtRisk(View):
        """Lowest scores first: ``?limit=N`` (1-1000, default 50)."""

        async def get(self, request: Request) -> Response:
            raw_limit = request.query.get("limit", "50")
            if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_AT_RISK:
                return error(self, 400, f"limit must be an integer from 1 to {MAX_AT_RISK}, got {raw_limit!r}")
            try:
                ranked = await redis.zrange(scores_key(prefix), 0, int(raw_limit) - 1, withscores=True)
                async with redis.pipeline(transaction=False) as pipe:
                    for customer_id, _ in ranked:
                        pipe.hmget(customer_key(prefix, customer_id.decode()), "band", "churn_risk", "as_of")
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
            try:
                fields = await redis.hgetall(customer_key(prefix, customer_id))
                recent = await redis.lrange(alerts_key(prefix, customer_id), 0, RECENT_ALERTS - 1)
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
