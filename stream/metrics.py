"""Every Prometheus metric the worker exports, declared in one place.

Labels are low-cardinality only (topic, outcome, reason): never a customer id.
Ratios are left to PromQL so the counts of several workers add up.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS = Counter(
    "healthscore_events",
    "Input messages consumed, by topic and outcome (applied, duplicate, late, dead_lettered, rekeyed).",
    ["topic", "outcome"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "healthscore_dead_letters",
    "Messages sent to a dead-letter topic, by source topic and reason.",
    ["topic", "reason"],
    registry=REGISTRY,
)
SCORES_PUBLISHED = Counter(
    "healthscore_scores_published",
    "Health scores published to the customer-health topic.",
    registry=REGISTRY,
)
PROCESSING_LAG = Histogram(
    "healthscore_processing_lag_seconds",
    "Event time of the triggering event to the score being handed to the producer.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400),
    registry=REGISTRY,
)
LAST_EVENT_PROCESSED = Gauge(
    "healthscore_last_event_processed_timestamp_seconds",
    "Wall-clock time the worker last finished processing an input message.",
    registry=REGISTRY,
)
REDIS_WRITE_FAILURES = Counter(
    "healthscore_redis_write_failures",
    "Failed attempts to write latest scores to Redis (the batch is retried).",
    registry=REGISTRY,
)
ALERTS_RAISED = Counter(
    "healthscore_alerts_raised",
    "Churn-risk alerts published, by rule and severity.",
    ["rule", "severity"],
    registry=REGISTRY,
)
ALERTS_SUPPRESSED = Counter(
    "healthscore_alerts_suppressed",
    "Alerts held back by the per-customer cooldown, by rule and severity.",
    ["rule", "severity"],
    registry=REGISTRY,
)
ALERTS_ALREADY_PUBLISHED = Counter(
    "healthscore_alerts_already_published",
    "Alerts not sent again because their alert_id was already on the alerts topic (after a crash or rebalance).",
    ["rule"],
    registry=REGISTRY,
)
SWEEP_DURATION = Histogram(
    "healthscore_sweep_duration_seconds",
    "Wall-clock time of one sweep of one partition, from its tick to its last customer.",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
    registry=REGISTRY,
)
SWEEP_CUSTOMERS = Counter(
    "healthscore_sweep_customers",
    "Customers rescored by the sweep.",
    registry=REGISTRY,
)
