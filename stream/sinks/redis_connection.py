"""How the worker reaches Redis, from its settings: TLS (``rediss://``), an ACL user, a
cluster; and the start check that turns a refused login, an untrusted certificate or a
missing permission into one sentence naming the setting to fix.

An unreachable Redis does not stop the start (Kafka holds the truth: the scores wait and
Redis is refilled when it answers, stream/worker/cache_refill.py); wrong credentials do,
because they would never heal by themselves. May import: ``stream.settings``, redis.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import redis.asyncio as redis_asyncio
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError, ResponseError

from stream.settings import Settings

#: The ACL a worker's Redis user needs, with the key prefix in place of PREFIX (docs/deploy.md,
#: "A secured Kafka and Redis"); the tests run the worker as a user with exactly these.
WORKER_ACL = (
    "on ~PREFIX:* resetchannels -@all +ping +auth +script|load +evalsha"
    " +set +hset +zadd +lpush +ltrim +hgetall +hmget +zrange +lrange +del +zrem"
)
#: What a cluster client needs on top: the slot map and the commands' key positions.
CLUSTER_ACL_EXTRA = "+cluster|slots +cluster|shards +command +readonly"


class RedisAccessError(RuntimeError):
    """Redis refuses us; the message names the setting to fix."""


def redis_client(settings: Settings) -> redis_asyncio.Redis | RedisCluster:
    """The client every part of the worker uses (the cache, its refill, the API)."""
    options: dict = {"socket_timeout": 2, "socket_connect_timeout": 2}
    if settings.redis_username:
        options["username"] = settings.redis_username
    if settings.redis_password is not None:
        options["password"] = settings.redis_password.get_secret_value()
    if urlsplit(settings.redis_url).scheme == "rediss":
        options.update(
            ssl_cert_reqs="required",
            ssl_ca_certs=str(settings.redis_tls_cafile) if settings.redis_tls_cafile else None,
            ssl_certfile=str(settings.redis_tls_certfile) if settings.redis_tls_certfile else None,
            ssl_keyfile=str(settings.redis_tls_keyfile) if settings.redis_tls_keyfile else None,
            ssl_check_hostname=settings.redis_tls_check_hostname,
        )
    if settings.redis_cluster:
        return RedisCluster.from_url(settings.redis_url, **options)
    return redis_asyncio.Redis.from_url(settings.redis_url, **options)


def _where(settings: Settings) -> str:
    url = urlsplit(settings.redis_url)
    return f"{url.hostname}:{url.port or 6379}"


def explain(settings: Settings, error: BaseException) -> str | None:
    """What a failed first command means in terms of the settings; None when Redis is only
    unreachable (the worker starts and retries)."""
    where, user = _where(settings), settings.redis_username or "default"
    text = str(error)
    if isinstance(error, AuthenticationError) or "WRONGPASS" in text or "NOAUTH" in text:
        return f"Redis at {where} refused the login of user {user!r}: check redis_username and redis_password (HEALTHSCORE_REDIS_PASSWORD)"
    if isinstance(error, NoPermissionError) or text.startswith("NOPERM") or "NOPERM" in text:
        return f"Redis user {user!r} lacks a permission the worker needs ({text}): grant the ACL in docs/deploy.md, 'A secured Kafka and Redis'"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            f"the certificate of Redis at {where} is not trusted ({text.split('] ')[-1]}): set redis_tls_cafile to the CA"
            " that signed it (redis_tls_check_hostname if the name is the problem)"
        )
    if "SSL" in text or "record layer" in text or "WRONG_VERSION_NUMBER" in text:
        return f"TLS with Redis at {where} failed ({text}): a TLS port wants rediss://, a plain one redis:// (redis_url)"
    if urlsplit(settings.redis_url).scheme == "redis" and ("reset" in text.lower() or "closed by server" in text.lower()):
        return f"Redis at {where} accepted the connection, then closed it: a TLS port wants rediss:// in redis_url"
    if isinstance(error, ResponseError):
        return f"Redis at {where} answered {text!r} to the worker's first commands (redis_url, redis_cluster)"
    return None


async def check_redis(settings: Settings) -> str | None:
    """Logs in and tries the worker's commands once. Raises :class:`RedisAccessError` when
    Redis refuses us; returns a warning when it does not answer (the worker starts anyway)."""
    client = redis_client(settings)
    try:
        await client.ping()
        marker = f"{settings.redis_key_prefix}:worker:start-check"
        await client.set(marker, b"1", ex=10)
        if not settings.redis_cluster:
            from stream.sinks.redis_cache import WRITE_SCRIPT

            sha = await client.script_load(WRITE_SCRIPT)
            await client.evalsha(sha, 0, settings.redis_key_prefix, "1", "0")  # writes nothing: no rows
        return None
    except (RedisError, OSError) as error:
        reason = explain(settings, error)
        if reason is not None:
            raise RedisAccessError(reason) from None
        return f"Redis at {_where(settings)} does not answer ({error}); starting anyway: scores wait for it (redis_url)"
    finally:
        await client.aclose()
