"""Where results go besides the output topics' producer batches: the Redis cache of latest
scores and alerts (``redis_cache.py``), the dead-letter topics (``dead_letters.py``) and the
ledger that keeps an alert from being published twice (``alert_ledger.py``).

May import: ``scoring``, ``stream.metrics``, Faust, aiokafka and redis.
"""
