"""What a batch publishes besides state: changed scores, new alerts (each once), rekeyed
events and dead letters; and the observations of what it published, for the histograms."""

from __future__ import annotations

from collections import Counter
from typing import Callable, Iterable

import msgspec
from aiokafka.structs import ConsumerRecord

from scoring.contract import CONTRACT_VERSION, Event, Rejection
from scoring.fleet_budget import FleetBudget, riskiest_first
from scoring.output import alert_message, encode_json, health_message
from scoring.pipeline import Step
from stream import metrics
from stream.kafka.producer import IdempotentProducer, Outputs
from stream.processing.topics import WorkerTopics
from stream.sinks.alert_ledger import AlertLedger, epoch_ms
from stream.sinks.dead_letters import DeadLetters
from stream.sinks.redis_cache import LatestScoreCache

#: The header naming the wire contract's version on the records we publish.
CONTRACT_HEADER = "healthscore-contract"

#: The wall clock, in seconds (time.time); tests pass their own.
Clock = Callable[[], float]


class _AlertOrder(msgspec.Struct):
    """What of an alert message decides its turn for the fleet budget."""

    churn_risk: float = 0.0
    occurred_at: str = ""


def _spending_order(pending: tuple) -> tuple[int, float]:
    return pending[0]


class Publisher:
    """Queues a batch's messages on its :class:`Outputs` (sent at the batch's end) and offers
    them to the Redis cache; alerts already on the alerts topic are not queued again."""

    def __init__(
        self,
        topics: WorkerTopics,
        producer: IdempotentProducer,
        cache: LatestScoreCache,
        ledger: AlertLedger,
        model_version: str,
        input_partitions: int,
        clock: Clock,
        budget: FleetBudget | None = None,
    ) -> None:
        self._topics = topics
        self._health = topics.health
        self._alerts = topics.alerts
        self._producer = producer
        self._cache = cache
        self._ledger = ledger
        self._model_version = model_version
        self._input_partitions = input_partitions
        self._health_partitions = 0  # learnt when the agent starts
        contract = [(CONTRACT_HEADER, str(CONTRACT_VERSION).encode())]
        self._output_headers = {topics.health: contract, topics.alerts: contract, topics.erasures: contract}
        self._clock = clock
        self.dead_letters = DeadLetters(topics.dead_letters)
        # Observations of the batch's published scores, handed to the histograms at its end.
        self._lags: list[float] = []
        self._scores: list[float] = []
        self._risks: list[float] = []
        self._budget = budget if budget is not None else FleetBudget(0, input_partitions)
        self._alert_decoder = msgspec.json.Decoder(_AlertOrder)
        # The batch's new alerts, sent at its end in the order they spend the fleet budget.
        self._pending: list[tuple[tuple[int, float], int, bytes, str, str, str, str, bytes]] = []

    @property
    def output_headers(self) -> dict[str, list[tuple[str, bytes]]]:
        """The wire contract's version on every record consumers read (scores, alerts, the
        erasure audit), so they can tell a layout change: header ``healthscore-contract``."""
        return self._output_headers

    @property
    def health_topic(self) -> str:
        return self._health

    async def learn_health_partitions(self) -> None:
        if not self._health_partitions:
            self._health_partitions = await self._producer.partition_count(self._health)

    def health_partition(self, key: bytes, source_partition: int) -> int:
        """Scores go to the customer's input partition number when the health topic has as many
        partitions as the inputs (as `healthscore topics` creates it): the same partition the
        documented murmur2 partitioner gives the key, without hashing every key again."""
        if self._health_partitions == self._input_partitions:
            return source_partition
        return self._producer.key_partition(self._health, key).partition

    async def dead_letter(self, message: ConsumerRecord, rejection: Rejection) -> None:
        await self.dead_letters.send(message, rejection)

    async def forward(self, message: ConsumerRecord, partition: int, counts: Counter) -> None:
        """A record on a partition its key's murmur2 hash does not give goes to the right one,
        as it was (key, value, headers), where its customer's record lives."""
        await self._topics.inputs[message.topic].send(key=message.key, value=message.value, partition=partition, headers=list(message.headers or ()))
        counts[message.topic, "misrouted"] += 1
        metrics.MISROUTED.labels(message.topic, "forwarded").inc()

    async def rekey(self, message: ConsumerRecord, event: Event, counts: Counter) -> None:
        """A keyless event goes back keyed, so it lands on its customer's partition."""
        await self._topics.inputs[message.topic].send(key=event.customer_id.encode(), value=message.value)
        counts[message.topic, "rekeyed"] += 1

    def publish_score(
        self, outputs: Outputs, key: bytes, partition: int, customer_id: str, encoded: bytes, score: float, churn_risk: float, event_ms: int, now: float
    ) -> None:
        """Queues a changed score's message (sent at the end of the batch)."""
        outputs.add(self._health, self.health_partition(key, partition), key, encoded)
        self._lags.append(max(0.0, now - event_ms / 1000))
        self._scores.append(score)
        self._risks.append(churn_risk)
        self._cache.offer(customer_id, encoded)

    def queue_score(
        self, outputs: Outputs, key: bytes, partition: int, customer_id: str, result: Step, trigger: str | None, event_ms: int
    ) -> None:
        """The Python model's score, encoded here (the kernel hands over its message encoded)."""
        if result.publish is None:
            return
        now = self._clock()
        encoded = encode_json(health_message(customer_id, result.publish, int(now * 1000), self._model_version, trigger))
        self.publish_score(outputs, key, partition, customer_id, encoded, result.publish.score, result.publish.churn_risk, event_ms, now)

    async def publish_alerts(
        self,
        outputs: Outputs,
        key: bytes,
        partition: int,
        customer_id: str,
        raised: Iterable[tuple[str, str, str, bytes]],
        suppressed: Iterable[tuple[str, str]],
    ) -> None:
        """New alerts, (id, rule, severity, message), unless already on the topic, wait for the
        batch's end (:meth:`release_alerts`)."""
        for alert_id, rule, severity, encoded in raised:
            if await self._ledger.is_published(partition, alert_id):
                metrics.ALERTS_ALREADY_PUBLISHED.labels(rule).inc()
                continue
            order = self._alert_decoder.decode(encoded)
            spending = riskiest_first(order.churn_risk, epoch_ms(order.occurred_at))
            self._pending.append((spending, partition, key, customer_id, alert_id, rule, severity, encoded))
        for rule, severity in suppressed:
            metrics.ALERTS_SUPPRESSED.labels(rule, severity).inc()

    def release_alerts(self, outputs: Outputs) -> None:
        """Queues the batch's new alerts that the fleet's daily budget admits (by time, and at
        the same time the riskiest first); records that they were sent; counts the others."""
        pending, self._pending = self._pending, []
        pending.sort(key=_spending_order)
        for (at_ms, _), partition, key, customer_id, alert_id, rule, severity, encoded in pending:
            if not self._budget.admit(partition, at_ms):
                metrics.ALERTS_OVER_FLEET_BUDGET.labels(rule).inc()
                continue
            outputs.add(self._alerts, partition, key, encoded)
            self._ledger.record(partition, alert_id)
            metrics.ALERTS_RAISED.labels(rule, severity).inc()
            self._cache.offer_alert(customer_id, encoded)

    def forget_in_cache(self, customer_id: str) -> None:
        """The customer's Redis keys are deleted at the next flush (an evicted customer)."""
        self._cache.queue_erase(customer_id)

    def forget(self, customer_id: str) -> None:
        """An erased customer's alerts still waiting for the batch's end are not sent."""
        self._pending = [pending for pending in self._pending if pending[3] != customer_id]

    async def queue_alerts(self, outputs: Outputs, key: bytes, partition: int, customer_id: str, result: Step) -> None:
        """The Python model's alerts, encoded here."""
        now_ms = int(self._clock() * 1000)
        raised = [
            (alert.alert_id, alert.rule, alert.severity, encode_json(alert_message(alert, now_ms, self._model_version)))
            for alert in result.alerts.raised
        ]
        await self.publish_alerts(outputs, key, partition, customer_id, raised, result.alerts.suppressed)

    def observe_published(self) -> None:
        """Hands the batch's observations to the histograms in one call each."""
        for histogram, values in (
            (metrics.PROCESSING_LAG, self._lags), (metrics.SCORE, self._scores), (metrics.CHURN_RISK, self._risks)
        ):
            histogram.observe_many(values)
            values.clear()
