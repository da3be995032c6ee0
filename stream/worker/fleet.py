"""Fleet KPIs and consumer lag, exported as gauges from the records this worker owns, and
each owned customer's KPIs into its Redis hash (GET /customers/{id}/kpis), in the same pass."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Mapping

import faust
from faust.types import TP

import msgspec

from scoring.kpis import FleetTotals, customer_kpis
from scoring.output import rfc3339
from scoring.state import decode_state
from stream import metrics
from stream.state.table import KeysByPartition


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


log = logging.getLogger(__name__)

#: Where each customer's KPIs go: (customer id, JSON) rows, written only for customers Redis knows.
KpisWriter = Callable[[list[tuple[str, bytes]]], Awaitable[None]]


@dataclass(frozen=True)
class FleetOptions:
    period_days: int = 30
    survey_response_days: float = 14.0
    key_features: tuple[str, ...] = ()
    acquisition_spend: float | None = None
    #: None: the customers' KPIs are not written (the gauges still are).
    write_kpis: KpisWriter | None = None


class FleetExport:
    """Reads every owned record (read-only, yielding to the stream every 1,000) into the gauges."""

    def __init__(
        self,
        app: faust.App,
        table: Any,
        keys_by_partition: KeysByPartition,
        input_topics: Iterable[str],
        sweep_topic: str,
        options: FleetOptions,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._app = app
        self._table = table
        self._keys_by_partition = keys_by_partition
        self._input_topics = list(input_topics)
        self._sweep_topic = sweep_topic
        self._options = options
        self._clock = clock

    async def export(self) -> None:
        consumer = self._app.consumer
        assignment = consumer.assignment()
        lag = consumer_lag(assignment, consumer._read_offset, consumer.highwater, self._input_topics)
        for name, records in lag.items():
            metrics.CONSUMER_LAG.labels(name).set(records)
        owned = {tp.partition for tp in assignment if tp.topic == self._sweep_topic}
        options = self._options
        now_ms = int(self._clock() * 1000)
        totals = FleetTotals(now_ms, options.period_days, options.survey_response_days)
        rows: list[tuple[str, bytes]] = []
        for partition in owned:
            for index, key in enumerate(list(self._keys_by_partition.get(partition, ()))):
                stored = self._table.get(key)
                if stored is not None:
                    state = decode_state(stored)
                    totals.add(state)
                    if options.write_kpis is not None:
                        rows.append((state.customer_id, customer_kpis_json(state, now_ms, options)))
                if index % 1000 == 999:
                    await self._write(rows)
                    rows = []
                    await asyncio.sleep(0)  # let the stream run
        await self._write(rows)
        publish_fleet(totals)
        if options.acquisition_spend is not None:
            metrics.FLEET_ACQUISITION_SPEND.set(options.acquisition_spend)

    async def _write(self, rows: list[tuple[str, bytes]]) -> None:
        """The customers' KPIs; a Redis failure is logged and skipped (the next export writes them)."""
        if not rows or self._options.write_kpis is None:
            return
        try:
            await self._options.write_kpis(rows)
        except Exception as error:  # the error's text can name a customer's key: only its type is logged
            log.warning("Writing %d customers' KPIs to Redis failed (%s); the next export tries again", len(rows), type(error).__name__)


def customer_kpis_json(state: Any, now_ms: int, options: FleetOptions) -> bytes:
    """``scoring.kpis.customer_kpis`` with the time it was computed at, as JSON."""
    kpis = customer_kpis(state, now_ms, options.key_features, options.survey_response_days)
    return msgspec.json.encode({"as_of": rfc3339(now_ms), **dataclasses.asdict(kpis)})


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
    metrics.FLEET_BUYERS.labels("regular").set(totals.regular_customers)
    metrics.FLEET_CUSTOMERS.labels("answered_survey").set(totals.survey_participants)
    for kind, amount in totals.mrr_movement.items():
        metrics.FLEET_MRR_MOVEMENT.labels(kind).set(amount)
    for action, count in totals.emails.items():
        metrics.FLEET_EMAILS.labels(action).set(count)
    metrics.FLEET_CUSTOMERS.labels("emailed").set(totals.customers_emailed)
    metrics.FLEET_CUSTOMERS.labels("unsubscribed").set(totals.customers_unsubscribed)
    metrics.FLEET_SURVEY_INVITATIONS.labels("answered").set(totals.invitations_answered)
    metrics.FLEET_SURVEY_INVITATIONS.labels("missed").set(totals.invitations_missed)
    metrics.FLEET_ORDERS.set(totals.orders)
    metrics.FLEET_REVENUE_SUM.set(totals.revenue)
    metrics.FLEET_ABANDONED_CHECKOUTS.set(totals.abandoned_checkouts)
    for window, users in totals.active_users.items():
        metrics.FLEET_ACTIVE_USERS.labels(window).set(users)
    for category, count in totals.nps.items():
        metrics.FLEET_SURVEY_ANSWERS.labels("nps", category).set(count)
    metrics.FLEET_SURVEY_ANSWERS.labels("csat", "satisfied").set(totals.csat_satisfied)
    metrics.FLEET_SURVEY_ANSWERS.labels("csat", "all").set(totals.csat_answers)
    metrics.FLEET_SURVEY_ANSWERS.labels("ces", "all").set(totals.ces_answers)
    metrics.FLEET_CES_SCORE_SUM.set(totals.ces_sum)
    metrics.FLEET_SURVEY_ANSWERS.labels("cli", "all").set(totals.cli_answers)
    metrics.FLEET_CLI_POINTS_SUM.set(totals.cli_points_sum)
    metrics.FLEET_SECURE_CUSTOMERS.labels("answered").set(totals.csi_answered)
    metrics.FLEET_SECURE_CUSTOMERS.labels("secure").set(totals.csi_secure)
    metrics.FLEET_RESOLUTION_SECONDS_SUM.set(totals.resolution_seconds_sum)
    metrics.FLEET_RESOLUTIONS.set(totals.resolutions)
    metrics.FLEET_MRR.set(totals.mrr)
    metrics.FLEET_PERIOD_DAYS.set(totals.period_days)
