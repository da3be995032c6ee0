"""Realistic demo events for the four input topics.

Customers follow one of four personas: healthy, slowly disengaging, payment
trouble, and cancelling. A run covers ``history_days`` of simulated history
compressed into the run, ending at the wall clock, so scores move within a
short demo; with ``history_days=0`` events are simply live.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Iterator

import msgspec

from scoring.contract import TopicKind
from scoring.state import DAY_MS
from stream.kafka.clients import connection_options
from stream.settings import KafkaSettings

PERSONAS = ("healthy", "disengaging", "payment_trouble", "cancelling")
PERSONA_SHARES = (0.55, 0.2, 0.15, 0.1)
FEATURES = ("dashboards", "reports", "exports", "integrations", "alerts", "api")
CATEGORIES = ("basics", "addons", "premium", "services")
#: With ``csm``: the share of events that are the company's outreach.
OUTREACH_SHARE = 0.08


@dataclass(frozen=True)
class GeneratedEvent:
    topic: TopicKind
    customer_id: str
    value: dict


class EventSynthesizer:
    """Deterministic for a seed: the same arguments give the same events."""

    def __init__(self, customers: int, seed: int = 7, csm: bool = False) -> None:
        self._random = random.Random(seed)
        #: Also the company's side: CSM touchpoints and pulses, surveys sent, e-mails (off:
        #: the mix, and so every seed's events, stay as they were before these existed).
        self._csm = csm
        self._invites: dict[str, list[str]] = {}
        self._seed = seed
        self._sequence = 0
        rng = self._random
        self.personas: dict[str, str] = {}
        #: Progress (0 = start of the run, 1 = end) at which a customer is gone; absent: retained.
        self.churn_progress: dict[str, float] = {}
        self._decline_start: dict[str, float] = {}
        for index in range(customers):
            customer = f"cust-{index:05d}"
            persona = rng.choices(PERSONAS, PERSONA_SHARES)[0]
            self.personas[customer] = persona
            if persona == "disengaging":
                start = rng.uniform(0.1, 0.7)
                self._decline_start[customer] = start
                self.churn_progress[customer] = start + rng.uniform(0.15, 0.35)
            elif persona == "cancelling":
                self.churn_progress[customer] = rng.uniform(0.3, 0.95)
        self._ids = list(self.personas)
        self._open_tickets: dict[str, list[str]] = {}
        self._invoices: dict[str, list[str]] = {}
        self._cancelled: dict[str, int] = {}

    def _activity(self, customer: str, persona: str, progress: float) -> float:
        churn = self.churn_progress.get(customer)
        if persona == "disengaging":
            start = self._decline_start[customer]
            if progress <= start:
                return 1.0
            return max(0.0, 1.0 - (progress - start) / (churn - start))
        if persona == "cancelling":
            return 1.0 if progress < churn or customer not in self._cancelled else 0.0
        return 1.0

    def churned_at(self, start_ms: int, end_ms: int) -> dict[str, int]:
        """Ground truth: when each churning customer was gone (cancellation, or activity reaching zero)."""
        gone = {}
        for customer, progress in self.churn_progress.items():
            at = self._cancelled.get(customer, int(start_ms + progress * (end_ms - start_ms)))
            if progress <= 1.0:
                gone[customer] = at
        return gone

    def next_event(self, at_ms: int, progress: float) -> GeneratedEvent:
        rng = self._random
        for _ in range(50):
            customer = rng.choice(self._ids)
            persona = self.personas[customer]
            if rng.random() < self._activity(customer, persona, progress):
                break
        else:
            customer = next(c for c in self._ids if self.personas[c] == "healthy") if "healthy" in self.personas.values() else customer
            persona = self.personas[customer]
        self._sequence += 1
        event_id = f"gen-{self._seed}-{self._sequence}"
        topic, event_type, data = self._body(customer, persona, progress, at_ms)
        value = {"event_id": event_id, "type": event_type, "customer_id": customer, "occurred_at": at_ms, "data": data}
        return GeneratedEvent(topic, customer, value)

    def _body(self, customer: str, persona: str, progress: float, at_ms: int) -> tuple[TopicKind, str, dict]:
        rng = self._random
        if persona == "cancelling" and progress >= self.churn_progress[customer] and customer not in self._cancelled:
            self._cancelled[customer] = at_ms
            return TopicKind.PAYMENTS, "subscription.cancelled", {"reason": "switched vendor"}
        if self._csm and rng.random() < OUTREACH_SHARE:
            return self._outreach(customer, self._troubled(customer, persona, progress))
        roll = rng.random()
        user = f"{customer}-u{rng.randint(1, 8)}"
        if roll < 0.45:
            return TopicKind.USAGE, "usage.session", {"user_id": user, "duration_seconds": round(rng.uniform(30, 3600), 1)}
        if roll < 0.65:
            return TopicKind.USAGE, "usage.feature", {"user_id": user, "feature": rng.choice(FEATURES), "count": rng.randint(1, 5)}
        if roll < 0.75:
            if persona != "healthy" and rng.random() < 0.3:
                return TopicKind.PURCHASES, "checkout.abandoned", {"cart_value": round(rng.uniform(10, 300), 2)}
            quantity = rng.randint(1, 3)
            price = round(rng.uniform(5, 120), 2)
            return TopicKind.PURCHASES, "purchase.completed", {
                "order_id": f"o-{self._sequence}",
                "amount": round(quantity * price, 2),
                "currency": "EUR",
                "items": [{"sku": f"sku-{rng.randint(1, 50)}", "category": rng.choice(CATEGORIES), "quantity": quantity, "unit_price": price}],
            }
        if roll < 0.85:
            tickets = self._open_tickets.setdefault(customer, [])
            if tickets and rng.random() < (0.7 if persona == "healthy" else 0.3):
                return TopicKind.TICKETS, "ticket.resolved", {"ticket_id": tickets.pop(0)}
            if self._csm and self._invites.get(customer) and rng.random() < 0.5:  # answers a survey it was sent
                kind = self._invites[customer].pop(0)
                return TopicKind.TICKETS, "survey.answered", {"survey": kind, "score": rng.randint(1, 3) if self._troubled(customer, persona, progress) else rng.randint(4, 5)}
            if rng.random() < 0.35:
                good = persona == "healthy"
                score = rng.randint(8, 10) if good else rng.randint(2, 7)
                return TopicKind.TICKETS, "survey.answered", {"survey": "nps", "score": score}
            ticket = f"t-{self._sequence}"
            tickets.append(ticket)
            priority = rng.choice(("low", "normal", "normal", "high") if persona == "healthy" else ("normal", "high", "urgent"))
            return TopicKind.TICKETS, "ticket.opened", {"ticket_id": ticket, "priority": priority}
        invoices = self._invoices.setdefault(customer, [])
        if invoices and rng.random() < 0.6:
            invoice = invoices.pop(0)
            if persona == "payment_trouble" and rng.random() < 0.7:
                invoices.append(invoice)
                return TopicKind.PAYMENTS, "payment.failed", {"invoice_id": invoice, "amount": 99.0, "reason": "card_declined"}
            return TopicKind.PAYMENTS, "payment.succeeded", {"invoice_id": invoice, "amount": 99.0}
        if rng.random() < 0.2:
            return TopicKind.PAYMENTS, "subscription.updated", {"mrr": rng.choice((49.0, 99.0, 199.0))}
        invoice = f"inv-{self._sequence}"
        invoices.append(invoice)
        return TopicKind.PAYMENTS, "invoice.issued", {"invoice_id": invoice, "amount": 99.0, "due_at": at_ms + 7 * DAY_MS}

    def _troubled(self, customer: str, persona: str, progress: float) -> bool:
        """Whether the customer is on its way out at this point of the run (its signals sour)."""
        if persona == "payment_trouble":
            return True
        if persona == "disengaging":
            return progress > self._decline_start[customer]
        return persona == "cancelling" and progress > self.churn_progress[customer] - 0.3

    def _outreach(self, customer: str, troubled: bool) -> tuple[TopicKind, str, dict]:
        """The company's side (``csm=True``): its tone follows the customer's trouble, as the
        articles say it does; a customer in trouble also answers fewer surveys (it is active less)."""
        rng = self._random
        roll = rng.random()
        if roll < 0.3:
            sentiment = rng.choice(("negative", "negative", "neutral", "positive") if troubled else ("positive", "positive", "neutral"))
            return TopicKind.TICKETS, "csm.touchpoint", {"channel": rng.choice(("call", "meeting", "email", "qbr")), "sentiment": sentiment}
        if roll < 0.45:
            return TopicKind.TICKETS, "csm.pulse", {"rating": rng.randint(1, 3) if troubled else rng.randint(3, 5)}
        if roll < 0.75:
            self._invites.setdefault(customer, []).append("csat")
            return TopicKind.TICKETS, "survey.sent", {"survey": "csat"}
        action = rng.choice(("sent", "sent", "sent", "unsubscribed") if troubled else ("sent", "opened", "opened", "clicked"))
        return TopicKind.USAGE, f"email.{action}", {"campaign": "newsletter"}

    def timeline(self, total: int, start_ms: int, end_ms: int) -> Iterator[GeneratedEvent]:
        """``total`` events spread evenly from ``start_ms`` to ``end_ms`` of event time."""
        for index in range(total):
            progress = index / max(1, total - 1)
            yield self.next_event(int(start_ms + progress * (end_ms - start_ms)), progress)


async def produce(
    kafka: KafkaSettings,
    topics: dict[TopicKind, str],
    customers: int,
    rate: float,
    duration: float,
    history_days: float,
    seed: int,
    echo=print,
    csm: bool = False,
) -> int:
    """Sends rate × duration events to Kafka, paced in wall time; returns how many were sent."""
    from aiokafka import AIOKafkaProducer

    total = max(1, int(rate * duration))
    synthesizer = EventSynthesizer(customers, seed, csm)
    producer = AIOKafkaProducer(**connection_options(kafka), acks="all", enable_idempotence=True, linger_ms=5)
    encoder = msgspec.json.Encoder()
    history_ms = history_days * DAY_MS
    started = time.time()
    try:
        await producer.start()
        for index in range(total):
            target = started + index / rate
            delay = target - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            progress = index / max(1, total - 1)
            now_ms = int(time.time() * 1000)
            at_ms = int(now_ms - history_ms * (1 - progress))
            event = synthesizer.next_event(at_ms, progress)
            await producer.send(topics[event.topic], encoder.encode(event.value), key=event.customer_id.encode())
            if index and index % max(1, int(rate * 5)) == 0:
                echo(f"  sent {index}/{total} events")
        await producer.flush()
    finally:
        await producer.stop()
    echo(f"Sent {total} events for {customers} customers in {time.time() - started:.1f} s")
    return total


def write_history(
    path: str,
    labels_path: str,
    customers: int,
    events: int,
    start_ms: int,
    end_ms: int,
    seed: int,
    progress=None,
    csm: bool = False,
) -> tuple[int, int]:
    """Writes the same synthetic history as JSON Lines, and its ground-truth churn labels as CSV.

    Returns (events written, churned customers).
    """
    from scoring.output import rfc3339

    synthesizer = EventSynthesizer(customers, seed, csm)
    encoder = msgspec.json.Encoder()
    with open(path, "wb") as out:
        for index, generated in enumerate(synthesizer.timeline(events, start_ms, end_ms)):
            out.write(encoder.encode(generated.value) + b"\n")
            if progress is not None and index % 10_000 == 0:
                progress(index)
    churned = synthesizer.churned_at(start_ms, end_ms)
    with open(labels_path, "w") as out:
        out.write("customer_id,churned_at\n")
        for customer, at in sorted(churned.items()):
            out.write(f"{customer},{rfc3339(at)}\n")
    return events, len(churned)
