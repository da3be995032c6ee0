"""The Faust app: topics, the customer-state table, the agent, timers and web pages.

This module only wires: decode and validate (scoring.contract), apply, score and
check alert rules (scoring.pipeline), publish, count. Values travel as raw
bytes: Faust never decodes them (it would ack undecodable messages silently).

One agent reads the four input topics and the sweep-tick topic, so every change
to a customer's record happens in one place, in order. Records reach it in batches
(stream/batching.py); a batch is validated as a whole, then applied; its changed
records are written back as they fall out of use, and its messages acked after the
last one (stream/working_set.py); its scores and alerts leave as producer batches
(stream/outputs.py), and the changelog records of the customers it changed follow
once per offset commit, just before it (stream/changelog.py).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections import Counter
from typing import Any, Awaitable, Callable, Iterable, Mapping

import faust
import msgspec
from aiokafka.structs import ConsumerRecord
from faust.types import TP
from mode import Service

from scoring import kernel
from scoring.alerts import AlertParameters
from scoring.contract import Event, Rejection, RejectReason, TopicKind, decode_event
from scoring.health import ScoringParameters
from scoring.kpis import FleetTotals
from scoring.output import alert_message, encode_json, health_message
from scoring.pipeline import Step, due_for_sweep, step, sweep
from scoring.state import CustomerState, Outcome, decode_state
from stream import metrics, web
from stream.alert_ledger import AlertLedger
from stream.batching import BatchingTopic, BatchInProgress, BulkDeliveryConsumer
from stream.changelog import DeferredChangelog
from stream.memory import collect_garbage_rarely, release_free_memory
from stream.outputs import IdempotentProducer, Outputs
from stream.recovery import GroupedRecoveryTableManager
from stream.settings import Settings, TopicNames
from stream.sinks import LatestScoreCache, dead_letter_headers
from stream.working_set import WorkingSet

log = logging.getLogger("healthscore.worker")

Clock = Callable[[], float]

#: What the kernel answers for a message it leaves to ``scoring.contract``.
DECLINED = object()


class SweepTick(msgspec.Struct, frozen=True):
    """Rescore the customers of this partition at ``at_ms``, in key order after ``after``."""

    at_ms: int
    started_at: float
    after: str | None = None


def raw_schema() -> faust.Schema:
    """A new raw-bytes schema per topic: Faust mutates a schema shared between channels."""
    return faust.Schema(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


def validate_batch(
    messages: Iterable[ConsumerRecord], input_kinds: Mapping[str, TopicKind], now_ms: int, max_skew_ms: int
) -> list[Event | Rejection | None]:
    """Each message's event or why it is refused; None for a message that is not an event (a sweep tick)."""
    validated: list[Event | Rejection | None] = []
    for message in messages:
        kind = input_kinds.get(message.topic)
        if kind is None:
            validated.append(None)
            continue
        try:
            validated.append(decode_event(message.key, message.value, kind, now_ms, max_skew_ms))
        except Exception as error:  # a bug must not stop the stream: the message is parked with the reason
            log.exception("Failed to validate %s[%s]@%s", message.topic, message.partition, message.offset)
            validated.append(Rejection(RejectReason.PROCESSING_ERROR, f"{type(error).__name__}: {error}"))
    return validated


def consumer_lag(
    assignment: Iterable[TP], read_offsets: Mapping[TP, int | None], highwater: Callable[[TP], int | None], topics: Iterable[str]
) -> dict[str, int]:
    """Records on each input topic not yet handed to the stream. A partition not fetched
    yet has no known high-water mark (None until the first fetch answers) and counts 0."""
    lag = dict.fromkeys(topics, 0)
    for tp in assignment:
        if tp.topic not in lag:
            continue
        end = highwater(tp)
        if end is None:
            continue
        read = read_offsets.get(tp)  # the last offset handed to the stream
        lag[tp.topic] += max(0, end - (read + 1 if read is not None else 0))
    return lag


#: Longest a rebalance waits for the batch being applied (a batch takes tens of milliseconds).
REVOKE_WAIT_SECONDS = 10.0

TimerJob = Callable[[], Awaitable[None]]


async def logged_on_failure(job: TimerJob, what: str, retry_seconds: float) -> None:
    """Runs a timer's job. An exception escaping a Faust timer stops the whole worker, and
    a sweep, a metrics export or a cache flush is worth less than the stream: it is logged
    and retried."""
    try:
        await job()
    except Exception:
        log.exception("%s failed; retrying in %s s", what, retry_seconds)


def guarded_timer(app: faust.App, interval: float, what: str) -> Callable[[TimerJob], TimerJob]:
    """``app.timer`` for every timer of the worker, each run through :func:`logged_on_failure`."""

    def register(job: TimerJob) -> TimerJob:
        @functools.wraps(job)
        async def run() -> None:
            await logged_on_failure(job, what, interval)

        return app.timer(interval=interval)(run)

    return register


def native_kernel_for(settings: Settings, parameters: ScoringParameters, rules: AlertParameters) -> Any | None:
    """The Rust kernel when the settings ask for it, it is built and it computes this model."""
    if not settings.native_kernel:
        why = "native_kernel = false"
    elif not kernel.available():
        why = "the Rust kernel is not built"
    elif not kernel.supports(parameters):
        why = "the Rust kernel does not compute BG/NBD yet"
    else:
        log.info("Each event goes through the Rust kernel")
        return kernel.build(parameters, rules)
    log.info("Each event goes through the Python model (%s)", why)
    return None


def build_app(settings: Settings, clock: Clock = time.time) -> faust.App:
    parameters = settings.scoring.parameters()
    rules = settings.alerts.parameters()
    native = native_kernel_for(settings, parameters, rules)
    model_version = parameters.model_version
    input_kinds = settings.topics.inputs()
    sweep_topic_name = settings.topics.sweep
    max_skew_ms = settings.max_future_skew_seconds * 1000
    sweep_silence_ms = int(settings.sweep_interval_seconds * 1000)
    partitions = settings.partitions

    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        datadir=str(settings.data_dir),
        topic_partitions=partitions,
        topic_replication_factor=1,
        producer_acks=-1,
        broker_commit_interval=settings.commit_interval_seconds,
        broker_commit_every=settings.commit_every_events,
        broker_session_timeout=settings.session_timeout_seconds,
        consumer_auto_offset_reset="earliest",
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_enabled=True,
        web_metrics_enabled=False,
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
        # Restart time is the time to read the changelog back: in groups (stream/recovery.py).
        TableManager=GroupedRecoveryTableManager,
    )
    app.transport.Producer = IdempotentProducer

    def topic(name: str) -> faust.TopicT:
        return app.topic(name, partitions=partitions, schema=raw_schema())

    source = BatchingTopic(
        app, topics=[*input_kinds, sweep_topic_name], partitions=partitions, schema=raw_schema(), batch_limit=settings.batch_max_events
    )
    input_topics = {name: topic(name) for name in input_kinds}
    sweep_topic = topic(sweep_topic_name)
    health_topic_name = topic(settings.topics.health).get_topic_name()
    alerts_topic_name = topic(settings.topics.alerts).get_topic_name()
    dead_letter_topics = {name: topic(TopicNames.dead_letter(name)) for name in [*input_kinds, sweep_topic_name]}

    # Which customers live on which partition, for the sweep: filled as records are
    # written and as the table is restored from its changelog.
    keys_by_partition: dict[int, set[bytes]] = {}

    async def index_changelog(event: faust.EventT) -> None:
        keys_by_partition.setdefault(event.message.partition, set()).add(event.message.key)
        metrics.CHANGELOG_RECORDS_RESTORED.inc()

    states = app.Table(
        "customer-state",
        default=None,
        partitions=partitions,
        key_type=bytes,
        value_type=bytes,
        on_changelog_event=index_changelog,
        # Restart time is the time to read the changelog back: small segments let Kafka's
        # compaction keep it near one record per customer instead of one per batch.
        extra_topic_configs={
            "segment.bytes": settings.changelog_segment_bytes,
            "min.cleanable.dirty.ratio": 0.2,
        },
        recovery_buffer_size=10_000,
    )
    changelog_topic_name = states.changelog_topic.get_topic_name()
    producer: IdempotentProducer = app.producer  # type: ignore[assignment]

    # Scores go to the customer's input partition number when the health topic has as many
    # partitions as the inputs (as `healthscore topics` creates it): the same partition the
    # documented murmur2 partitioner gives the key, without hashing every key again.
    health_partitions: list[int] = []  # learnt when the agent starts

    def health_partition(key: bytes, source_partition: int) -> int:
        if health_partitions[0] == partitions:
            return source_partition
        return producer.key_partition(health_topic_name, key).partition

    def persisted(partition: int, offset: int) -> None:
        """As Faust's own changelog callback: a disk store resumes recovery after this offset."""
        states.data.set_persisted_offset(faust.types.TP(changelog_topic_name, partition), offset)

    deferred = DeferredChangelog(states, changelog_topic_name, persisted) if settings.changelog_writes == "per_commit" else None

    async def write_changelog() -> None:
        """Before offsets are committed: every record changed since the last commit, once."""
        if deferred is not None and deferred.pending:
            await deferred.flush(producer)

    app.transport.Consumer = BulkDeliveryConsumer.configured(settings.fetch_max_wait_seconds, write_changelog if deferred else None)

    in_progress = BatchInProgress()

    @app.on_partitions_revoked.connect
    async def write_changelog_before_handing_over(sender: faust.App, revoked: set, **kwargs: object) -> None:
        """The partitions' next owner reads their records from the changelog: they must all be
        there, those of a batch still being applied and of a commit's flush under way included."""
        if not await in_progress.ended(timeout=REVOKE_WAIT_SECONDS):
            log.warning("A batch was still being applied %s s into a rebalance; its changelog records may follow it", REVOKE_WAIT_SECONDS)
        if deferred is not None:
            await deferred.flush(producer)
        await producer.flush()

    cache = LatestScoreCache(settings.redis_url, settings.redis_key_prefix, settings.redis_backlog_flush_interval_seconds)
    ledger = AlertLedger(settings.kafka_bootstrap, settings.topics.alerts, settings.alert_tail_messages)
    app.healthscore_cache = cache  # for tests and diagnostics

    @app.on_partitions_assigned.connect
    async def forget_published_alerts(sender: faust.App, assigned: set, **kwargs: object) -> None:
        ledger.forget_all()

    async def dead_letter(message: ConsumerRecord, rejection: Rejection) -> None:
        reason = rejection.reason.value
        await dead_letter_topics[message.topic].send(
            key=message.key,
            value=message.value,
            headers=dead_letter_headers(
                message.topic, message.partition, message.offset, message.timestamp, reason, rejection.detail
            ),
        )
        metrics.EVENTS.labels(message.topic, "dead_lettered").inc()
        metrics.DEAD_LETTERS.labels(message.topic, reason).inc()
        log.warning(
            "Dead-lettered %s[%s]@%s: %s (%s)", message.topic, message.partition, message.offset, reason, rejection.detail
        )

    # Observations of the batch's published scores, handed to the histograms at its end.
    lags: list[float] = []
    published_scores: list[float] = []
    published_risks: list[float] = []

    def observe_published() -> None:
        for histogram, values in (
            (metrics.PROCESSING_LAG, lags), (metrics.SCORE, published_scores), (metrics.CHURN_RISK, published_risks)
        ):
            histogram.observe_many(values)
            values.clear()

    def publish_score(
        outputs: Outputs, key: bytes, partition: int, customer_id: str, encoded: bytes, score: float, churn_risk: float, event_ms: int, now: float
    ) -> None:
        """Queues a changed score's message (sent at the end of the batch)."""
        outputs.add(health_topic_name, health_partition(key, partition), key, encoded)
        lags.append(max(0.0, now - event_ms / 1000))
        published_scores.append(score)
        published_risks.append(churn_risk)
        cache.offer(customer_id, encoded)

    def queue_score(
        outputs: Outputs, key: bytes, partition: int, customer_id: str, result: Step, trigger: str | None, event_ms: int
    ) -> None:
        if result.publish is None:
            return
        now = clock()
        encoded = encode_json(health_message(customer_id, result.publish, int(now * 1000), model_version, trigger))
        publish_score(outputs, key, partition, customer_id, encoded, result.publish.score, result.publish.churn_risk, event_ms, now)

    async def publish_alerts(
        outputs: Outputs,
        key: bytes,
        partition: int,
        customer_id: str,
        raised: Iterable[tuple[str, str, str, bytes]],
        suppressed: Iterable[tuple[str, str]],
    ) -> None:
        """Queues new alerts, (id, rule, severity, message), unless already on the topic; records that they were sent."""
        for alert_id, rule, severity, encoded in raised:
            if await ledger.is_published(partition, alert_id):
                metrics.ALERTS_ALREADY_PUBLISHED.labels(rule).inc()
                continue
            outputs.add(alerts_topic_name, partition, key, encoded)
            ledger.record(partition, alert_id)
            metrics.ALERTS_RAISED.labels(rule, severity).inc()
            cache.offer_alert(customer_id, encoded)
        for rule, severity in suppressed:
            metrics.ALERTS_SUPPRESSED.labels(rule, severity).inc()

    async def queue_alerts(outputs: Outputs, key: bytes, partition: int, customer_id: str, result: Step) -> None:
        now_ms = int(clock() * 1000)
        raised = [
            (alert.alert_id, alert.rule, alert.severity, encode_json(alert_message(alert, now_ms, model_version)))
            for alert in result.alerts.raised
        ]
        await publish_alerts(outputs, key, partition, customer_id, raised, result.alerts.suppressed)

    async def rekey(message: ConsumerRecord, event: Event, counts: Counter) -> None:
        """A keyless event goes back keyed, so it lands on its customer's partition."""
        await input_topics[message.topic].send(key=event.customer_id.encode(), value=message.value)
        counts[message.topic, "rekeyed"] += 1

    def handle_event(
        message: ConsumerRecord, decoded: Event | Rejection | None, working: WorkingSet, outputs: Outputs, counts: Counter, now_ms: int
    ) -> Awaitable[None] | None:
        """Applies one event (``decoded`` None: not validated yet). What must wait on Kafka (a dead
        letter, a rekeyed event, alerts) is returned to be awaited: most events need none, and a
        coroutine per event costs."""
        if decoded is None:
            taken = handle_raw(message, working, outputs, counts, now_ms)
            if taken is not DECLINED:
                return taken  # type: ignore[return-value]
            decoded = validate_batch([message], input_kinds, now_ms, max_skew_ms)[0]
            assert decoded is not None  # an input topic's message
        if isinstance(decoded, Rejection):
            return dead_letter(message, decoded)
        if message.key is None:
            return rekey(message, decoded, counts)
        if native is not None:
            return handle_natively(message, decoded, working, outputs, counts)
        return handle_in_python(message, decoded, working, outputs, counts)

    def handle_in_python(
        message: ConsumerRecord, decoded: Event, working: WorkingSet, outputs: Outputs, counts: Counter
    ) -> Awaitable[None] | None:
        source_position = (input_kinds[message.topic], message.partition, message.offset)
        result = working.run(
            message.key,
            message.partition,
            decoded.customer_id,
            lambda state: step(state, decoded, parameters, settings.dedup_capacity, source_position, rules),
        )
        counts[message.topic, result.outcome._value_] += 1  # not .value: Enum's property costs 0.5 us
        if result.outcome is not Outcome.APPLIED:
            return None
        queue_score(outputs, message.key, message.partition, decoded.customer_id, result, decoded.event_id, decoded.occurred_at_ms)
        if result.alerts.raised or result.alerts.suppressed:
            return queue_alerts(outputs, message.key, message.partition, decoded.customer_id, result)
        return None

    def handle_natively(
        message: ConsumerRecord, decoded: Event, working: WorkingSet, outputs: Outputs, counts: Counter
    ) -> Awaitable[None] | None:
        """handle_in_python through the Rust kernel (the same records and messages, byte for
        byte); an event it cannot take (a record or payload it cannot read) goes the Python way."""
        now = clock()
        source_position = (kernel.STREAM_INDEX[input_kinds[message.topic]], message.partition, message.offset)

        def run(stored: bytes | None) -> tuple[bytes | None, tuple]:
            outcome, record, published, raised, suppressed = native.step(
                stored, decoded.customer_id, message.value, decoded.occurred_at_ms, kernel.due_ms(decoded.data, decoded.occurred_at_ms),
                source_position, settings.dedup_capacity, int(now * 1000),
            )
            return (record if outcome == "applied" else None), (outcome, published, raised, suppressed)

        try:
            outcome, published, raised, suppressed = working.run_native(message.key, message.partition, run)
        except ValueError as error:
            metrics.KERNEL_FALLBACKS.inc()
            log.debug("The kernel could not take %s[%s]@%s: %s", message.topic, message.partition, message.offset, error)
            return handle_in_python(message, decoded, working, outputs, counts)
        return finish_native(message, decoded.customer_id, decoded.occurred_at_ms, now, outcome, published, raised, suppressed, outputs, counts)

    def handle_raw(message: ConsumerRecord, working: WorkingSet, outputs: Outputs, counts: Counter, now_ms: int) -> object:
        """The kernel validates and applies the message itself when ``scoring.contract`` surely
        accepts it (native/src/validate.rs); DECLINED leaves it to be validated here."""
        if message.key is None:
            return DECLINED
        now = clock()
        stream = kernel.STREAM_INDEX[input_kinds[message.topic]]

        def run(stored: bytes | None) -> tuple[bytes | None, tuple | None]:
            taken = native.step_raw(
                stored, message.key, message.value, stream, now_ms, max_skew_ms, message.partition, message.offset,
                settings.dedup_capacity, int(now * 1000),
            )
            if taken is None:
                return None, None
            outcome, record = taken[2][:2]
            return (record if outcome == "applied" else None), taken

        try:
            taken = working.run_native(message.key, message.partition, run)
        except ValueError:  # a record it cannot read: the validated path tries again, then Python
            return DECLINED
        if taken is None:
            return DECLINED
        customer_id, occurred_at_ms, (outcome, _, published, raised, suppressed) = taken
        return finish_native(message, customer_id, occurred_at_ms, now, outcome, published, raised, suppressed, outputs, counts)

    def finish_native(
        message: ConsumerRecord, customer_id: str, occurred_at_ms: int, now: float, outcome: str,
        published: tuple | None, raised: list, suppressed: list, outputs: Outputs, counts: Counter,
    ) -> Awaitable[None] | None:
        counts[message.topic, outcome] += 1
        if outcome != "applied":
            return None
        if published is not None:
            encoded, score, churn_risk = published
            publish_score(outputs, message.key, message.partition, customer_id, encoded, score, churn_risk, occurred_at_ms, now)
        if raised or suppressed:
            return publish_alerts(outputs, message.key, message.partition, customer_id, raised, suppressed)
        return None

    def swept(state: CustomerState, at_ms: int) -> Step | None:
        """Silent customers only (scoring.pipeline.due_for_sweep); None leaves the record untouched."""
        if not due_for_sweep(state, at_ms, sweep_silence_ms):
            return None
        return sweep(state, at_ms, parameters, rules, settings.sweep_min_score_change)

    async def handle_tick(message: ConsumerRecord, working: WorkingSet, outputs: Outputs) -> None:
        try:
            tick = msgspec.json.decode(message.value, type=SweepTick)
        except (msgspec.DecodeError, TypeError) as error:
            await dead_letter(message, Rejection(RejectReason.INVALID_FIELD, f"not a sweep tick: {error}"))
            return
        partition = message.partition
        after = tick.after.encode() if tick.after is not None else b""
        pending = sorted(key for key in keys_by_partition.get(partition, ()) if key > after)
        chunk = pending[: settings.sweep_chunk_size]
        for key in chunk:
            customer_id = key.decode()
            result = working.run(key, partition, customer_id, lambda state: swept(state, tick.at_ms))
            if result is not None:
                queue_score(outputs, key, partition, customer_id, result, None, tick.at_ms)
                await queue_alerts(outputs, key, partition, customer_id, result)
        metrics.SWEEP_CUSTOMERS.inc(len(chunk))
        if len(pending) > len(chunk):
            # Let the stream have its turn, then continue where this step stopped.
            next_tick = SweepTick(tick.at_ms, tick.started_at, chunk[-1].decode())
            await sweep_topic.send(value=msgspec.json.encode(next_tick), partition=partition)
        else:
            metrics.SWEEP_DURATION.observe(max(0.0, clock() - tick.started_at))

    @app.agent(source, name="apply-events")
    async def apply_events(stream: faust.StreamT) -> None:
        """Applies each batch of records (stream/batching.py), then writes each changed record once."""
        # Everything alive now (modules, Faust's services) lives as long as the worker.
        collect_garbage_rarely()
        if not health_partitions:
            health_partitions.append(await producer.partition_count(health_topic_name))
        async for batch in stream:
            started = time.perf_counter()
            batch = batch.current(app)
            in_progress.begin()
            cache.catching_up(len(batch) >= settings.batch_max_events)
            outputs = Outputs()
            working = WorkingSet(states, keys_by_partition, outputs, changelog_topic_name)
            counts: Counter = Counter()
            # Without the kernel, the whole batch is validated before any of it is applied: one
            # pass of the JSON decoder and the contract checks, then one of the model, each with
            # its code and data warm (bench/throughput.py, ten interleaved pairs: 8 faster, median
            # +7 %). The kernel validates each message itself (None: not validated yet).
            now_ms = int(clock() * 1000)
            validated = validate_batch(batch, input_kinds, now_ms, max_skew_ms) if native is None else itertools.repeat(None)
            for message, decoded in zip(batch, validated):
                try:
                    if message.topic not in input_kinds:
                        await handle_tick(message, working, outputs)
                    else:
                        waiting = handle_event(message, decoded, working, outputs, counts, now_ms)
                        if waiting is not None:
                            await waiting
                except Exception as error:  # a bug must not stop the stream: park the message and go on
                    log.exception("Failed to process %s[%s]@%s", message.topic, message.partition, message.offset)
                    await dead_letter(message, Rejection(RejectReason.PROCESSING_ERROR, f"{type(error).__name__}: {error}"))
            working.write_back()
            if deferred is not None and batch.still_current(app):
                deferred.take(outputs)  # their changelog records wait for the next commit
            metrics.SCORES_PUBLISHED.inc(outputs.count(health_topic_name))
            metrics.CHANGELOG_RECORDS_WRITTEN.inc(outputs.count(changelog_topic_name))
            observe_published()
            await outputs.send(producer, {changelog_topic_name: persisted})
            batch.ack(app)
            in_progress.end()
            for (topic_name, outcome), count in counts.items():
                metrics.EVENTS.labels(topic_name, outcome).inc(count)
            metrics.LAST_EVENT_PROCESSED.set(clock())
            metrics.BATCH_EVENTS.observe(len(batch))
            metrics.BATCH_DURATION.observe(time.perf_counter() - started)

    @guarded_timer(app, settings.sweep_interval_seconds, "Starting a sweep")
    async def start_sweep() -> None:
        """Each worker sweeps the partitions it owns, at the current time."""
        now = clock()
        owned = sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == sweep_topic_name)
        for partition in owned:
            await sweep_topic.send(value=msgspec.json.encode(SweepTick(int(now * 1000), now)), partition=partition)
        if owned:
            log.info("Sweep started for %s partition(s)", len(owned))

    @guarded_timer(app, 2.0, "Releasing free memory")
    async def give_back_memory() -> None:
        """glibc keeps freed heap pages until trimmed: 8-15 MB every 4 s while processing
        100k customers, returned in 1-3 ms."""
        release_free_memory()

    @guarded_timer(app, settings.redis_flush_interval_seconds, "Writing scores to Redis")
    async def flush_cache() -> None:
        if cache.flush_due(time.monotonic()):
            await cache.flush()

    @app.service
    class FlushCacheOnStop(Service):
        """A worker told to stop writes its pending scores to Redis first (the last flush
        interval's worth, a few seconds' while catching up); they are on Kafka already."""

        async def on_stop(self) -> None:
            await cache.flush()

    @guarded_timer(app, settings.fleet_metrics_interval_seconds, "Exporting fleet metrics")
    async def export_fleet_metrics() -> None:
        """Fleet KPIs from the records this worker owns, and its consumer lag (read-only)."""
        consumer = app.consumer
        assignment = consumer.assignment()
        lag = consumer_lag(assignment, consumer._read_offset, consumer.highwater, input_kinds)
        for name, records in lag.items():
            metrics.CONSUMER_LAG.labels(name).set(records)
        owned = {tp.partition for tp in assignment if tp.topic == sweep_topic_name}
        totals = FleetTotals(int(clock() * 1000), settings.fleet_period_days)
        for partition in owned:
            for index, key in enumerate(list(keys_by_partition.get(partition, ()))):
                stored = states.get(key)
                if stored is not None:
                    totals.add(decode_state(stored))
                if index % 1000 == 999:
                    await asyncio.sleep(0)  # let the stream run
        publish_fleet(totals)

    web.register(app, cache, settings.redis_key_prefix)
    metrics.initialize([*input_kinds, sweep_topic_name], [health_topic_name, alerts_topic_name, changelog_topic_name])
    for name in input_kinds:
        metrics.CONSUMER_LAG.labels(name)
    return app


def publish_fleet(totals: FleetTotals) -> None:
    for band, count in totals.bands.items():
        metrics.CUSTOMERS_BY_BAND.labels(band).set(count)
    for state, count in (
        ("total", totals.customers),
        ("active", totals.active),
        ("active_at_period_start", totals.active_at_period_start),
        ("new_in_period", totals.new_in_period),
        ("lost_in_period", totals.lost_in_period),
    ):
        metrics.FLEET_CUSTOMERS.labels(state).set(count)
    metrics.FLEET_BUYERS.labels("one_or_more").set(totals.buyers)
    metrics.FLEET_BUYERS.labels("two_or_more").set(totals.repeat_buyers)
    for category, count in totals.nps.items():
        metrics.FLEET_SURVEY_ANSWERS.labels("nps", category).set(count)
    metrics.FLEET_SURVEY_ANSWERS.labels("csat", "satisfied").set(totals.csat_satisfied)
    metrics.FLEET_SURVEY_ANSWERS.labels("csat", "all").set(totals.csat_answers)
    metrics.FLEET_SURVEY_ANSWERS.labels("ces", "all").set(totals.ces_answers)
    metrics.FLEET_CES_SCORE_SUM.set(totals.ces_sum)
    metrics.FLEET_RESOLUTION_SECONDS_SUM.set(totals.resolution_seconds_sum)
    metrics.FLEET_RESOLUTIONS.set(totals.resolutions)
    metrics.FLEET_MRR.set(totals.mrr)
    metrics.FLEET_PERIOD_DAYS.set(totals.period_days)


async def request_sweep(settings: Settings, at_ms: int, now: float) -> int:
    """Asks every partition's owner to sweep at ``at_ms`` (``healthscore sweep``); returns the partition count."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True)
    try:
        await producer.start()
        partitions = await producer.partitions_for(settings.topics.sweep)
        for partition in sorted(partitions):
            await producer.send_and_wait(
                settings.topics.sweep, msgspec.json.encode(SweepTick(at_ms, now)), partition=partition
            )
    finally:
        await producer.stop()
    return len(partitions)
