"""Fleet KPIs and consumer lag, exported as gauges from the records this worker owns."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Iterable, Mapping

import faust
from faust.types import TP

from scoring.kpis import FleetTotals
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


class FleetExport:
    """Reads every owned record (read-only, yielding to the stream every 1,000) into the gauges."""

    def __init__(
        self,
        app: faust.App,
        table: Any,
        keys_by_partition: KeysByPartition,
        input_topics: Iterable[str],
        sweep_topic: str,
        period_days: int,
        clock: Callable[[], float] = time.time,
        survey_response_days: float = 14.0,
    ) -> None:
        self._app = app
        self._table = table
        self._keys_by_partition = keys_by_partition
        self._input_topics = list(input_topics)
        self._sweep_topic = sweep_topic
        self._period_days = period_days
        self._clock = clock
        self._survey_response_days = survey_response_days

    async def export(self) -> None:
        consumer = self._app.consumer
        assignment = consumer.assignment()
        lag = consumer_lag(assignment, consumer._read_offset, consumer.highwater, self._input_topics)
        for name, records in lag.items():
            metrics.CONSUMER_LAG.labels(name).set(records)
        owned = {tp.partition for tp in assignment if tp.topic == self._sweep_topic}
        totals = FleetTotals(int(self._clock() * 1000), self._period_days, self._survey_response_days)
        for partition in owned:
            for index, key in enumerate(list(self._keys_by_partition.get(partition, ()))):
                stored = self._table.get(key)
                if stored is not None:
                    totals.add(decode_state(stored))
                if index % 1000 == 999:
                    await asyncio.sleep(0)  # let the stream run
        publish_fleet(totals)


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
