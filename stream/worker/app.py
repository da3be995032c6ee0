"""``build_app``: the worker's Faust app, assembled from its parts.

Read it top to bottom: the Faust app and its topics, the customer-state table and its
changelog, the consumer that hands the agent whole batches, the sinks (Redis, the alert
ledger), the per-event path, the sweep, the agent, the timers and the HTTP pages. Each part
is a class or function of its own package (docs/architecture.md), given what it needs.

One agent reads the four input topics and the sweep-tick topic, so every change to a
customer's record happens in one place, in order.
"""

from __future__ import annotations

import logging
import time
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

import faust

from scoring.fleet_budget import FleetBudget
from stream import metrics
from stream.kafka.batching import BatchInProgress, BulkDeliveryConsumer
from stream.kafka.clients import connection_options, faust_broker_options
from stream.kafka.producer import IdempotentProducer
from stream.processing.batches import BatchHandler
from stream.processing.erasure import Eraser
from stream.processing.events import EventPath, native_kernel_for
from stream.processing.publishing import Clock, Publisher
from stream.processing.sweep import Sweeper
from stream.processing.topics import WorkerTopics
from stream.settings import Settings
from stream.sinks.alert_ledger import AlertLedger
from stream.sinks.redis_cache import LatestScoreCache
from stream.sinks.redis_connection import redis_client
from stream.state.changelog import DeferredChangelog
from stream.state.erased import ErasedCustomersFollower, deny_list
from stream.state.recovery import GroupedRecoveryTableManager
from stream.state.table import KeysByPartition, customer_state_table, persisted_offsets
from stream.worker import web
from stream.worker.cache_refill import CacheRefill
from stream.worker.fleet import FleetExport, FleetOptions
from stream.worker.rebalance import connect_rebalance_hooks
from stream.worker.timers import Timers
from stream.worker.web import AgentProgress

log = logging.getLogger("healthscore.worker")


def faust_app(settings: Settings) -> faust.App:
    """The Faust app with the worker's settings (no agent, table or timer yet)."""
    app = faust.App(
        settings.app_id,
        **faust_broker_options(settings.kafka),
        store="memory://",
        datadir=str(settings.data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.topics.replication_factor,
        # No run-time topic creation where the ACL has no CREATE (`healthscore topics` made them);
        # no leader-election topic: nothing here runs on the leader only.
        topic_allow_declare=settings.topics.allow_runtime_creation,
        topic_disable_leader=True,
        producer_acks=-1,
        broker_commit_interval=settings.commit_interval_seconds,
        broker_commit_every=settings.commit_every_events,
        broker_session_timeout=settings.session_timeout_seconds,
        consumer_auto_offset_reset="earliest",
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_ssl_context=settings.web_ssl_context(),
        web_enabled=True,
        web_metrics_enabled=False,
        # Faust's own pages list the tables and the routing: off (only ours, stream/worker/web.py).
        web_router_enabled=False,
        web_tables_enabled=False,
        web_stats_enabled=False,
        web_graph_enabled=False,
        stream_wait_empty=False,
        table_cleanup_interval=3600.0,
        table_standby_replicas=settings.standby_replicas,
        stream_buffer_maxsize=settings.stream_buffer_events,
        broker_max_poll_records=settings.fetch_max_records,
        # aiokafka waits for a partition's batch to be on the broker once it is full: with
        # the 16 KB default, every ~15 score messages cost a round trip.
        producer_max_batch_size=settings.producer_batch_bytes,
        producer_linger=settings.producer_linger_seconds,
        producer_compression_type=None if settings.producer_compression == "none" else settings.producer_compression,
        # Restart time is the time to read the changelog back: in groups (stream/state/recovery.py).
        TableManager=GroupedRecoveryTableManager,
    )
    app.transport.Producer = IdempotentProducer
    return app


def announce_build(model_version: str, kernel: bool) -> None:
    """The version, model version and mode, in the log and in healthscore_build_info."""
    import scoring.compiled

    try:
        version = package_version("healthscore")
    except PackageNotFoundError:
        version = "not installed"
    metrics.BUILD_INFO.labels(version, model_version, "rust" if kernel else "python").set(1)
    log.info("healthscore %s, model %s, %s, model %s", version, model_version, "Rust kernel" if kernel else "Python model", scoring.compiled.status)


def agent_alive(agent: faust.types.AgentT) -> bool:
    """Whether the agent's actor runs (before the agent starts: yes, nothing has failed yet)."""
    actors = list(getattr(agent, "_actors", ()))
    if not agent.started or not actors:
        return not agent.crashed
    return any(actor.actor_task is not None and not actor.actor_task.done() and not actor.crashed for actor in actors)


def fleet_options(settings: Settings, cache: LatestScoreCache) -> FleetOptions:
    scoring = settings.scoring
    return FleetOptions(settings.fleet_period_days, scoring.survey_response_days, tuple(scoring.key_features),
                        settings.kpis.fleet_acquisition_spend, cache.write_kpis, settings.model_parameters())


def build_app(settings: Settings, clock: Clock = time.time) -> faust.App:
    parameters = settings.model_parameters()
    rules = settings.alerts.parameters()
    native = native_kernel_for(settings, parameters, rules)  # logs which model runs
    announce_build(parameters.model_version, native is not None)
    if settings.privacy.hash_key is None:
        log.warning(
            "privacy.hash_key is not set: user ids in the customer records are fingerprinted with a public key, so they "
            "are not pseudonymous; set HEALTHSCORE_PRIVACY__HASH_KEY (a random secret, the same on every worker)"
        )
    app = faust_app(settings)
    topics = WorkerTopics.declare(app, settings)

    # State: the table, its changelog written once per commit (or per batch), the key index.
    keys_by_partition = KeysByPartition()
    table = customer_state_table(app, settings, keys_by_partition)
    changelog_topic = table.changelog_topic.get_topic_name()
    on_changelog_delivered = persisted_offsets(table, changelog_topic)
    deferred = DeferredChangelog(table, changelog_topic, on_changelog_delivered) if settings.changelog_writes == "per_commit" else None
    producer: IdempotentProducer = app.producer  # type: ignore[assignment]

    async def write_changelog() -> None:
        """Before offsets are committed: every record changed since the last commit, once."""
        if deferred is not None and deferred.pending:
            await deferred.flush(producer)

    app.transport.Consumer = BulkDeliveryConsumer.configured(settings.fetch_max_wait_seconds, write_changelog if deferred else None)

    # Sinks, and what a batch publishes through them.
    cache = LatestScoreCache(redis_client(settings), settings.redis_key_prefix, settings.redis_backlog_flush_interval_seconds, expansion=settings.expansion.rule())
    budget = FleetBudget(settings.alerts.max_alerts_per_day, settings.partitions)
    ledger = AlertLedger(
        connection_options(settings.kafka), settings.topics.alerts, settings.alert_tail_messages, budget,
        owned=lambda partition: any(tp.partition == partition for tp in app.consumer.assignment()),
    )
    app.healthscore_cache = cache  # for tests and diagnostics
    in_progress = BatchInProgress()
    connect_rebalance_hooks(app, in_progress, deferred, producer, ledger)
    publisher = Publisher(topics, producer, cache, ledger, parameters.model_version, settings.partitions, clock, budget)

    # Erased customers stay erased: the deny-list, read before any event and at each assignment.
    erased = deny_list(settings)
    erased_follower = ErasedCustomersFollower(settings, erased)

    @app.on_partitions_assigned.connect
    async def read_erasures_again(sender: faust.App, assigned: set, **kwargs: object) -> None:
        """The partitions' previous owner may have erased some of their customers."""
        erased_follower.stale = True

    # The agent: each batch through the per-event path (or the sweep, for its ticks).
    events = EventPath(settings, parameters, rules, native, publisher, topics.input_kinds, clock, erased)
    sweeper = Sweeper(settings, parameters, rules, keys_by_partition, publisher, topics.sweep, clock, native)
    eraser = Eraser(publisher, cache, topics.erasures, clock, erased, settings)
    handler = BatchHandler(
        app, table, keys_by_partition, changelog_topic, on_changelog_delivered, deferred, topics.input_kinds,
        events, sweeper, eraser, publisher, cache, in_progress, settings.batch_max_events, clock, erased_follower,
    )

    async def apply_events(stream: faust.StreamT) -> None:
        await handler.run(stream)

    agent = app.agent(topics.source, name="apply-events")(apply_events)
    progress = AgentProgress(lambda: topics.source.queue.qsize(), lambda: agent_alive(agent), settings.agent_stall_seconds)
    handler.on_batch_done = progress.note_batch

    fleet = FleetExport(app, table, keys_by_partition, topics.input_kinds, topics.sweep_name, fleet_options(settings, cache), clock, native)
    refill = CacheRefill(app, table, keys_by_partition, topics.sweep_name, parameters, cache, clock, fleet.rewrite_all_kpis)

    @app.on_rebalance_complete.connect
    async def refill_owned_customers(sender: faust.App, **kwargs: object) -> None:
        """The records of the partitions now owned are back: their scores go to Redis again."""
        refill.queue_owned()

    Timers(app, topics.sweep_name, sweeper, cache, refill, fleet).register(settings)
    web.register(app, cache, settings.redis_key_prefix, settings, progress)
    metrics.initialize([*topics.input_kinds, topics.sweep_name], [topics.health, topics.alerts, changelog_topic])
    for name in topics.input_kinds:
        metrics.CONSUMER_LAG.labels(name)
    return app
