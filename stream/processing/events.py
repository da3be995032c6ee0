"""One event's path: validate it, apply it to its customer's record, queue what changed.

Two implementations of the model, the same records and messages byte for byte
(tests/unit/test_kernel.py): the Rust kernel (``scoring.kernel``) where it is built and
computes the configured model, else the Python model (``scoring.pipeline``). What must
wait on Kafka (a dead letter, a rekeyed event, alerts checked against the alerts topic)
is returned to be awaited: most events need none, and a coroutine per event costs.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Awaitable, Iterable, Mapping

import msgspec
from aiokafka.partitioner import murmur2
from aiokafka.structs import ConsumerRecord

from scoring import kernel
from scoring.alerts import AlertParameters
from scoring.contract import Event, Rejection, RejectReason, SubscriptionCancelled, TopicKind, decode_event
from scoring.health import ScoringParameters
from scoring.kpis import cancellation_reason_label
from scoring.pipeline import step
from scoring.privacy import ErasedCustomers
from scoring.state import Outcome
from stream import metrics
from stream.kafka.producer import IdempotentProducer, Outputs
from stream.processing.publishing import Clock, Publisher
from stream.settings import Settings
from stream.state.working_set import WorkingSet

log = logging.getLogger("healthscore.worker")

#: What the kernel answers for a message it leaves to ``scoring.contract``.
DECLINED = object()

Waiting = Awaitable[None] | None


class _CancelledData(msgspec.Struct):
    reason: str | None = None


class _Cancellation(msgspec.Struct):
    """What counting an applied cancellation reads of its message (the kernel took the rest)."""

    type: str
    data: _CancelledData | None = None


_cancellation = msgspec.json.Decoder(_Cancellation)


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


class EventPath:
    """Applies one input message to its customer's record in the batch's working set."""

    def __init__(
        self,
        settings: Settings,
        parameters: ScoringParameters,
        rules: AlertParameters,
        native: Any | None,
        publisher: Publisher,
        input_kinds: Mapping[str, TopicKind],
        clock: Clock,
        erased: ErasedCustomers | None = None,
    ) -> None:
        self.native = native  # the Rust kernel, or None: the Python model
        self._erased = erased if erased is not None else ErasedCustomers(b"")
        self._parameters = parameters
        self._rules = rules
        self._publisher = publisher
        self._input_kinds = input_kinds
        self._clock = clock
        self._dedup_capacity = settings.dedup_capacity
        self._max_skew_ms = settings.max_future_skew_seconds * 1000
        self._forward_misrouted = settings.misrouted_events == "forward"
        self._skip_unknown_types = settings.unknown_event_types == "count_and_skip"
        self._cancellation_reasons = tuple(settings.cancellation_reasons)
        self._payments_topics = {topic for topic, kind in input_kinds.items() if kind is TopicKind.PAYMENTS}
        self._partition_counts: dict[str, int] = {}  # learnt when the agent starts
        self._warned_misrouted: set[str] = set()

    async def learn_partitions(self, producer: IdempotentProducer) -> None:
        """Each input topic's partition count, for telling a misrouted record."""
        for topic in self._input_kinds:
            if topic not in self._partition_counts:
                self._partition_counts[topic] = await producer.partition_count(topic)

    def right_partition(self, message: ConsumerRecord, working: WorkingSet) -> int | None:
        """The partition the Java (murmur2) partitioner gives the record's key, when the record is
        on another one. Checked only for a customer without a record here (a customer's first
        event on a partition), so the hash is computed about once per customer."""
        count = self._partition_counts.get(message.topic)
        if not count or working.knows(message.key, message.partition):
            return None
        right = (murmur2(message.key) & 0x7FFFFFFF) % count
        if right == message.partition:
            return None
        if message.topic not in self._warned_misrouted:
            self._warned_misrouted.add(message.topic)
            log.warning(
                "Records on %s arrive on partitions the Java partitioner (murmur2 of the key) does not give: %s. "
                "Fix the producer: librdkafka clients (kcat, confluent-kafka, ...) need partitioner=murmur2_random",
                message.topic,
                "forwarded to the right partition" if self._forward_misrouted else "processed where they are (misrouted_events)",
            )
        return right

    def validate(self, batch: Iterable[ConsumerRecord], now_ms: int) -> list[Event | Rejection | None]:
        return validate_batch(batch, self._input_kinds, now_ms, self._max_skew_ms)

    def handle(
        self, message: ConsumerRecord, decoded: Event | Rejection | None, working: WorkingSet, outputs: Outputs, counts: Counter, now_ms: int
    ) -> Waiting:
        """Applies one event (``decoded`` None: not validated yet)."""
        if message.key and message.value is not None:
            right = self.right_partition(message, working)
            if right is not None:
                if self._forward_misrouted:
                    return self._publisher.forward(message, right, counts)
                metrics.MISROUTED.labels(message.topic, "processed_in_place").inc()
        erased = self._erased
        if erased and not working.knows(message.key or b"", message.partition):  # a customer without a record: erased?
            if decoded is None:
                decoded = self.validate([message], now_ms)[0]  # the deny-list needs the event's time
            if isinstance(decoded, Event) and erased.refuses(decoded.customer_id, decoded.occurred_at_ms):
                counts[message.topic, "erased"] += 1  # a re-read input never rebuilds an erased customer
                return None
        if decoded is None:
            taken = self.handle_raw(message, working, outputs, counts, now_ms)
            if taken is not DECLINED:
                return taken  # type: ignore[return-value]
            decoded = self.validate([message], now_ms)[0]
            assert decoded is not None  # an input topic's message
        if isinstance(decoded, Rejection):
            if decoded.reason is RejectReason.UNKNOWN_TYPE and self._skip_unknown_types:
                counts[message.topic, "unknown_type"] += 1
                return None
            return self._publisher.dead_letter(message, decoded)
        if not message.key:  # null or empty: sent back keyed by its customer
            return self._publisher.rekey(message, decoded, counts)
        if self.native is not None:
            return self.handle_natively(message, decoded, working, outputs, counts)
        return self.handle_in_python(message, decoded, working, outputs, counts)

    def handle_in_python(self, message: ConsumerRecord, decoded: Event, working: WorkingSet, outputs: Outputs, counts: Counter) -> Waiting:
        source_position = (self._input_kinds[message.topic], message.partition, message.offset)
        parameters, rules, dedup_capacity = self._parameters, self._rules, self._dedup_capacity
        result = working.run(
            message.key,
            message.partition,
            decoded.customer_id,
            lambda state: step(state, decoded, parameters, dedup_capacity, source_position, rules),
            message,
        )
        counts[message.topic, result.outcome._value_] += 1  # not .value: Enum's property costs 0.5 us
        if result.outcome is not Outcome.APPLIED:
            return None
        if isinstance(decoded.data, SubscriptionCancelled):
            metrics.CANCELLATIONS.labels(cancellation_reason_label(decoded.data.reason, self._cancellation_reasons)).inc()
        publisher = self._publisher
        publisher.queue_score(outputs, message.key, message.partition, decoded.customer_id, result, decoded.event_id, decoded.occurred_at_ms)
        if result.alerts.raised or result.alerts.suppressed:
            return publisher.queue_alerts(outputs, message.key, message.partition, decoded.customer_id, result)
        return None

    def handle_natively(self, message: ConsumerRecord, decoded: Event, working: WorkingSet, outputs: Outputs, counts: Counter) -> Waiting:
        """handle_in_python through the Rust kernel (the same records and messages, byte for
        byte); an event it cannot take (a record or payload it cannot read) goes the Python way."""
        now = self._clock()
        source_position = (kernel.STREAM_INDEX[self._input_kinds[message.topic]], message.partition, message.offset)
        native, dedup_capacity = self.native, self._dedup_capacity

        def run(stored: bytes | None) -> tuple[bytes | None, tuple]:
            outcome, record, published, raised, suppressed = native.step(
                stored, decoded.customer_id, message.value, decoded.occurred_at_ms, kernel.due_ms(decoded.data, decoded.occurred_at_ms),
                source_position, dedup_capacity, int(now * 1000),
            )
            return (record if outcome == "applied" else None), (outcome, published, raised, suppressed)

        try:
            outcome, published, raised, suppressed = working.run_native(message.key, message.partition, run)
        except ValueError as error:
            metrics.KERNEL_FALLBACKS.inc()
            log.debug("The kernel could not take %s[%s]@%s: %s", message.topic, message.partition, message.offset, error)
            return self.handle_in_python(message, decoded, working, outputs, counts)
        return self._finish_native(message, decoded.customer_id, decoded.occurred_at_ms, now, outcome, published, raised, suppressed, outputs, counts)

    def handle_raw(self, message: ConsumerRecord, working: WorkingSet, outputs: Outputs, counts: Counter, now_ms: int) -> object:
        """The kernel validates and applies the message itself when ``scoring.contract`` surely
        accepts it (native/src/validate.rs); DECLINED leaves it to be validated here: a message
        without a key or a value (a tombstone) too."""
        if not message.key or message.value is None:
            return DECLINED
        now = self._clock()
        stream = kernel.STREAM_INDEX[self._input_kinds[message.topic]]
        native, max_skew_ms, dedup_capacity = self.native, self._max_skew_ms, self._dedup_capacity

        def run(stored: bytes | None) -> tuple[bytes | None, tuple | None]:
            taken = native.step_raw(
                stored, message.key, message.value, stream, now_ms, max_skew_ms, message.partition, message.offset,
                dedup_capacity, int(now * 1000),
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
        return self._finish_native(message, customer_id, occurred_at_ms, now, outcome, published, raised, suppressed, outputs, counts)

    def _finish_native(
        self, message: ConsumerRecord, customer_id: str, occurred_at_ms: int, now: float, outcome: str,
        published: tuple | None, raised: list, suppressed: list, outputs: Outputs, counts: Counter,
    ) -> Waiting:
        counts[message.topic, outcome] += 1
        if outcome != "applied":
            return None
        if message.topic in self._payments_topics and b"subscription.cancelled" in message.value:
            self._count_cancellation(message.value)
        publisher = self._publisher
        if published is not None:
            encoded, score, churn_risk = published
            publisher.publish_score(outputs, message.key, message.partition, customer_id, encoded, score, churn_risk, occurred_at_ms, now)
        if raised or suppressed:
            return publisher.publish_alerts(outputs, message.key, message.partition, customer_id, raised, suppressed)
        return None

    def _count_cancellation(self, value: bytes) -> None:
        """healthscore_cancellations_total by exit reason, for a cancellation the kernel applied."""
        try:
            event = _cancellation.decode(value)
        except msgspec.DecodeError:  # the kernel accepted it, so this does not happen; never fail for a count
            return
        if event.type == "subscription.cancelled":
            reason = event.data.reason if event.data is not None else None
            metrics.CANCELLATIONS.labels(cancellation_reason_label(reason, self._cancellation_reasons)).inc()
