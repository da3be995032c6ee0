"""Every Prometheus metric the worker exports, declared in one place.

Labels are low-cardinality only (topic, outcome, reason): never a customer id.
Ratios are left to PromQL so the counts of several workers add up.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

REGISTRY = CollectorRegistry(auto_describe=True)


class BatchedHistogram(Collector):
    """A histogram fed a batch of observations at a time, exposed like prometheus_client's.

    ``Histogram.observe`` takes two locks per value; the agent observes three values
    per published score, thousands per batch, all from the event loop's thread.
    Counting them here first made those metrics 20 times cheaper.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = [float(bound) for bound in buckets] + [math.inf]
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        registry.register(self)

    def observe_many(self, values: Sequence[float]) -> None:
        counts, bounds = self._counts, self._bounds
        for value in values:
            counts[bisect_left(bounds, value)] += 1  # the first bucket whose upper bound is >= value
        self._sum += math.fsum(values)

    def observe(self, value: float) -> None:
        self.observe_many((value,))

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative, buckets = 0, []
        for bound, count in zip(self._bounds, self._counts):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        family = HistogramMetricFamily(self._name, self._documentation)
        family.add_metric([], buckets, self._sum)
        yield family

BUILD_INFO = Gauge(
    "healthscore_build_info",
    "1, labelled with the running version, the model version and whether each event goes through the Rust kernel.",
    ["version", "model_version", "kernel"],
    registry=REGISTRY,
)
EVENTS = Counter(
    "healthscore_events",
    "Input messages consumed, by topic and outcome (applied, duplicate, late, dead_lettered, rekeyed, misrouted; "
    "unknown_type: skipped, with unknown_event_types = count_and_skip).",
    ["topic", "outcome"],
    registry=REGISTRY,
)
MISROUTED = Counter(
    "healthscore_misrouted_events",
    "Input records found on a partition the key's murmur2 hash does not give (a producer with another "
    "partitioner), by what was done: forwarded to the right partition, or processed in place.",
    ["topic", "action"],
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
PROCESSING_LAG = BatchedHistogram(
    "healthscore_processing_lag_seconds",
    "Event time of the triggering event to the score being handed to the producer.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400),
    registry=REGISTRY,
)
PUBLISH_FAILURES = Counter(
    "healthscore_publish_failures",
    "Messages the producer could not deliver after its retries, by topic (scores, alerts, changelog).",
    ["topic"],
    registry=REGISTRY,
)
BATCH_EVENTS = Histogram(
    "healthscore_batch_events",
    "Records handed to the agent at once (small batches under load mean per-record overhead).",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
    registry=REGISTRY,
)
BATCH_DURATION = Histogram(
    "healthscore_batch_duration_seconds",
    "Time to process one batch of records, writes and sends included.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
PROCESSING_STATE = Gauge(
    "healthscore_processing_state",
    "1 for what the apply agent is doing now (assigning, recovering, rebalancing, running), 0 for the others; "
    "lookups are answered from Redis whatever it is (/readyz).",
    ["state"],
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
REDIS_REFILLS = Counter(
    "healthscore_redis_refills",
    "Times this worker began rewriting every owned customer's cached score: Redis lost them (restarted empty, flushed), or scores waiting for it were dropped.",
    registry=REGISTRY,
)
REDIS_PENDING_DROPPED = Counter(
    "healthscore_redis_pending_dropped",
    "Scores dropped while waiting for Redis (beyond the most kept): a refill writes them again from the records.",
    registry=REGISTRY,
)
REDIS_REFILLED_CUSTOMERS = Counter(
    "healthscore_redis_refilled_customers",
    "Customers whose latest score a refill wrote to Redis again.",
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
ALERTS_OVER_FLEET_BUDGET = Counter(
    "healthscore_alerts_over_fleet_budget",
    "Alerts not sent because the fleet's daily budget (alerts.max_alerts_per_day) was spent, by rule.",
    ["rule"],
    registry=REGISTRY,
)
STATE_RECORDS_UNREADABLE = Counter(
    "healthscore_state_records_unreadable",
    "Customer records that could not be decoded (reported once each with their partition); the customer "
    "is rebuilt from its next events.",
    registry=REGISTRY,
)
INGEST_REQUESTS = Counter(
    "healthscore_ingest_requests",
    "Requests `healthscore ingest` answered, by source (events, stripe, zendesk, segment) and HTTP status.",
    ["source", "status"],
    registry=REGISTRY,
)
INGEST_EVENTS = Counter(
    "healthscore_ingest_events", "Events `healthscore ingest` produced (acknowledged by Kafka), by input topic.", ["topic"], registry=REGISTRY
)
INGEST_REJECTED = Counter(
    "healthscore_ingest_rejected",
    "Events `healthscore ingest` could not produce, by source and reason (the contract's reasons, no_customer_id, "
    "unreadable); from the webhook sources they are parked on the ingest.rejected topic.",
    ["source", "reason"],
    registry=REGISTRY,
)
INGEST_IGNORED = Counter(
    "healthscore_ingest_ignored",
    "Source events `healthscore ingest` does not map (answered 200 so the source does not retry), by source and type.",
    ["source", "type"],
    registry=REGISTRY,
)
INGEST_SIGNATURE_FAILURES = Counter(
    "healthscore_ingest_signature_failures",
    "Requests refused for a missing or wrong signature, token or write key (nothing produced), by source.",
    ["source"],
    registry=REGISTRY,
)
INGEST_PRODUCE_LATENCY = Histogram(
    "healthscore_ingest_produce_latency_seconds",
    "From a request's events handed to the producer to Kafka's acknowledgement of all of them.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
    registry=REGISTRY,
)
CANCELLATIONS = Counter(
    "healthscore_cancellations",
    "Subscriptions cancelled (subscription.cancelled applied), by exit reason: one of cancellation_reasons, "
    "unspecified without a reason, other for anything else.",
    ["reason"],
    registry=REGISTRY,
)
CUSTOMERS_EVICTED = Counter(
    "healthscore_customers_evicted",
    "Customers evicted by the sweep after state_ttl_days without an event (record and Redis keys deleted); "
    "lost customers, still counted here.",
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "healthscore_deliveries",
    "Alerts `healthscore deliver` handed over, by endpoint and outcome (delivered: a 2xx; parked: on the "
    "delivery_failed topic after its retries, or its endpoint disabled or paused).",
    ["endpoint", "outcome"],
    registry=REGISTRY,
)
DELIVERY_ATTEMPTS = Counter(
    "healthscore_delivery_attempts",
    "HTTP requests to delivery endpoints, by endpoint and answer (2xx, 4xx, 5xx, or error: no answer).",
    ["endpoint", "status"],
    registry=REGISTRY,
)
DELIVERY_LATENCY = Histogram(
    "healthscore_delivery_latency_seconds",
    "From the alert raised (raised_at) to its delivery (a 2xx), by endpoint.",
    ["endpoint"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200),
    registry=REGISTRY,
)
DELIVERY_COMMIT_FAILURES = Counter(
    "healthscore_delivery_commit_failures",
    "Offset commits of `healthscore deliver` that failed (its group rebalanced): the alerts since the "
    "last commit are delivered again, at least once.",
    registry=REGISTRY,
)
DELIVERY_DROPPED_ERASED = Counter(
    "healthscore_delivery_dropped_erased",
    "Alerts `healthscore deliver` (or --redrive) did not send because their customer was erased since.",
    registry=REGISTRY,
)
ENDPOINT_DISABLED = Gauge(
    "healthscore_delivery_endpoint_disabled",
    "1 for an endpoint that answered 410 Gone (its alerts are parked until the process restarts).",
    ["endpoint"],
    registry=REGISTRY,
)
ERASURES = Counter(
    "healthscore_erasures",
    "Customers erased on request (`healthscore erase`): state, changelog, Redis, latest score.",
    registry=REGISTRY,
)
ERASURES_WAITING = Gauge(
    "healthscore_erasures_waiting_for_redis",
    "Erasures waiting for Redis to confirm the deletion of the customer's keys (their partition waits too).",
    registry=REGISTRY,
)
ALERTS_WAITING_FOR_LEDGER = Gauge(
    "healthscore_alerts_waiting_for_ledger",
    "Partitions whose alerts wait because the alerts topic's tail cannot be read back (the check that "
    "no alert is sent twice): the broker is unreachable, or the worker lacks READ on the topic.",
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
    "Customers the sweep visited (with the due index: those written since the last sweep and those due).",
    registry=REGISTRY,
)
CHANGELOG_RECORDS_RESTORED = Counter(
    "healthscore_changelog_records_restored",
    "Customer-state changelog records read back into the table (restart, rebalance, standby); restart time grows with it.",
    registry=REGISTRY,
)
CHANGELOG_RECORDS_WRITTEN = Counter(
    "healthscore_changelog_records_written",
    "Customer-state records sent to the changelog: one per changed customer per offset commit (or per batch); "
    "against healthscore_events_total, how much the changelog coalesces.",
    registry=REGISTRY,
)
FETCH_WAITED_FOR_COMMIT = Counter(
    "healthscore_fetch_waited_for_commit_seconds",
    "Seconds the fetcher waited for an offset commit still running when the next one was due (commit_every_events "
    "more events acked): what bounds the changes waiting for a slow commit during a backlog.",
    registry=REGISTRY,
)
FLEET_KPI_RETRIES_DROPPED = Counter(
    "healthscore_fleet_kpi_retries_dropped",
    "Customers whose KPIs Redis did not take and that were not kept for another try (more than "
    "100,000 waiting): their KPIs are written at their next change or window.",
    registry=REGISTRY,
)
KERNEL_FALLBACKS = Counter(
    "healthscore_kernel_fallbacks",
    "Events the Rust kernel could not take (a record or payload it cannot read) and the Python model applied instead.",
    registry=REGISTRY,
)
EVENTS_OUT_OF_ORDER = Counter(
    "healthscore_events_out_of_order",
    "Input records applied after a later-stamped record of the same partition number (they arrived after "
    "max_task_idle_seconds, or a producer sent them late): KPIs stay exact, alerts are evaluated on the "
    "path as it was applied, active days count forward only (docs/alerts.md).",
    ["topic"],
    registry=REGISTRY,
)
RECORDS_FETCHED_AGAIN = Counter(
    "healthscore_records_fetched_again",
    "Input records dropped from the stream buffer before processing (Faust clears it when flow resumes, "
    "as at the end of a recovery) and fetched again, by topic; without this they were skipped.",
    ["topic"],
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "healthscore_consumer_lag_records",
    "Records behind the end of the input topics, over the partitions this worker owns.",
    ["topic"],
    registry=REGISTRY,
)
SCORE = BatchedHistogram(
    "healthscore_score",
    "Published health scores (0-100).",
    buckets=(10, 20, 30, 40, 50, 60, 70, 80, 90, 100),
    registry=REGISTRY,
)
CHURN_RISK = BatchedHistogram(
    "healthscore_churn_risk",
    "Churn risk (0-1) of published scores.",
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
    registry=REGISTRY,
)
# Fleet KPIs over the trailing period, as counts and sums of the customers this worker
# owns: Prometheus sums the workers, dashboards compute the ratios.
CUSTOMERS_BY_BAND = Gauge("healthscore_customers", "Customers per band of their latest score.", ["band"], registry=REGISTRY)
FLEET_CUSTOMERS = Gauge(
    "healthscore_fleet_customers",
    "Customers by state in the trailing period: total, active, active_at_period_start, new_in_period, lost_in_period, answered_survey, emailed (sent an e-mail in the period), unsubscribed (in the period), csm_touched (latest CSM touchpoint, not negative, in the period, with a score just before it).",
    ["state"],
    registry=REGISTRY,
)
FLEET_BUYERS = Gauge(
    "healthscore_fleet_buyers",
    "Customers who bought in the trailing period: one_or_more, two_or_more purchases; regular (bought before the period, or on two days in it);"
    " existing (bought before the period too); upsold (existing, and bought a category new to them in the period).",
    ["purchases"],
    registry=REGISTRY,
)
FLEET_SURVEY_ANSWERS = Gauge(
    "healthscore_fleet_survey_answers",
    "Survey answers in the trailing period: nps by promoter/passive/detractor, csat by satisfied/all, ces all.",
    ["survey", "category"],
    registry=REGISTRY,
)
FLEET_CES_SCORE_SUM = Gauge("healthscore_fleet_ces_score_sum", "Sum of CES answers (1-7) in the trailing period.", registry=REGISTRY)
FLEET_ORDERS = Gauge("healthscore_fleet_orders", "Orders in the trailing period.", registry=REGISTRY)
FLEET_REVENUE_SUM = Gauge("healthscore_fleet_revenue_sum", "Revenue of the orders in the trailing period (the currency of the events).", registry=REGISTRY)
FLEET_ABANDONED_CHECKOUTS = Gauge("healthscore_fleet_abandoned_checkouts", "Abandoned checkouts in the trailing period.", registry=REGISTRY)
FLEET_ACTIVE_USERS = Gauge(
    "healthscore_fleet_active_users",
    "Distinct users active in the last 1d, 7d or 30d, summed over customers (DAU, WAU, MAU).",
    ["window"],
    registry=REGISTRY,
)
FLEET_MRR_MOVEMENT = Gauge(
    "healthscore_fleet_mrr_movement",
    "MRR over the trailing period: start (of customers paying at its start), existing_end (theirs now), new (of customers paying nothing at the start), expansion, contraction, churned.",
    ["kind"],
    registry=REGISTRY,
)
FLEET_ACQUISITION_SPEND = Gauge(
    "healthscore_fleet_acquisition_spend",
    "Acquisition spend over the trailing period, as configured (kpis.fleet_acquisition_spend; every worker exports the same value: use max()).",
    registry=REGISTRY,
)
FLEET_EMAILS = Gauge(
    "healthscore_fleet_emails",
    "E-mails in the trailing period by action: sent, opened, clicked (KPIs only; the score does not use them).",
    ["action"],
    registry=REGISTRY,
)
FLEET_SURVEY_INVITATIONS = Gauge(
    "healthscore_fleet_survey_invitations",
    "Surveys sent in the trailing period: answered in time, or missed (deadline passed unanswered).",
    ["status"],
    registry=REGISTRY,
)
FLEET_CLI_POINTS_SUM = Gauge(
    "healthscore_fleet_cli_points_sum",
    "Sum of Customer Loyalty Index answers in points (1: 100 ... 6: 0) in the trailing period; the answers are survey=cli of healthscore_fleet_survey_answers.",
    registry=REGISTRY,
)
FLEET_SECURE_CUSTOMERS = Gauge(
    "healthscore_fleet_secure_customers",
    "Customers who answered all three Customer Secure Index questions in the trailing period (answered), and of them the secure (all three positive).",
    ["status"],
    registry=REGISTRY,
)
FLEET_RESOLUTION_SECONDS_SUM = Gauge(
    "healthscore_fleet_resolution_seconds_sum", "Sum of the resolution times of the tickets resolved in the trailing period.", registry=REGISTRY
)
FLEET_RESOLUTIONS = Gauge("healthscore_fleet_resolutions", "Tickets resolved in the trailing period (counted in the sum).", registry=REGISTRY)
FLEET_MRR = Gauge("healthscore_fleet_mrr", "Monthly recurring revenue of subscribed, not cancelled customers.", registry=REGISTRY)
FLEET_PERIOD_DAYS = Gauge("healthscore_fleet_period_days", "Length of the trailing period of the fleet KPIs.", registry=REGISTRY)
FLEET_SCORE_CHANGE_SINCE_TOUCHPOINT_SUM = Gauge(
    "healthscore_fleet_score_change_since_touchpoint_sum",
    "Sum over the customers whose latest CSM touchpoint (not negative) fell in the period of their score now minus just"
    " before it, in points; divide by healthscore_fleet_customers{state=\"csm_touched\"}.",
    registry=REGISTRY,
)
FLEET_EXPORT_SECONDS = Gauge(
    "healthscore_fleet_export_seconds",
    "How long the last fleet export took (recounting changed and due customers, writing their KPIs).",
    registry=REGISTRY,
)
FLEET_EXPORT_RECOMPUTED = Gauge(
    "healthscore_fleet_export_recomputed_customers",
    "Customers the last fleet export recomputed: records changed since the one before, window edges passed, partitions counted in full.",
    registry=REGISTRY,
)


def initialize(consumed_topics: list[str], produced_topics: tuple[str, ...] | list[str] = ()) -> None:
    """Creates every labelled series at 0, so rates and dashboards show 0 rather than nothing."""
    from scoring.alerts import RULES
    from scoring.contract import RejectReason
    from scoring.state import Outcome

    for topic in consumed_topics:
        RECORDS_FETCHED_AGAIN.labels(topic)
        EVENTS_OUT_OF_ORDER.labels(topic)
        for outcome in [*(o.value for o in Outcome), "dead_lettered", "rekeyed", "misrouted", "unknown_type", "erased"]:
            EVENTS.labels(topic, outcome)
        for action in ("forwarded", "processed_in_place"):
            MISROUTED.labels(topic, action)
        for reason in RejectReason:
            DEAD_LETTERS.labels(topic, reason.value)
    for rule in RULES:
        ALERTS_ALREADY_PUBLISHED.labels(rule)
        ALERTS_OVER_FLEET_BUDGET.labels(rule)
        for severity in ("warning", "critical"):
            ALERTS_RAISED.labels(rule, severity)
            ALERTS_SUPPRESSED.labels(rule, severity)
    ALERTS_RAISED.labels("digest", "digest")
    for topic in produced_topics:
        PUBLISH_FAILURES.labels(topic)
    for band in ("healthy", "at_risk", "critical"):
        CUSTOMERS_BY_BAND.labels(band)
