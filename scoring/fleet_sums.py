"""The fleet's totals kept incrementally: each customer's contribution as exact integers,
and the next moment at which time alone could change it.

A worker with millions of customers cannot decode every record for every fleet export.
It keeps, per partition, the sum of its customers' contributions (``FleetTotals`` of one
customer, as integers: sums in millionths, so removing an old contribution and adding
the new one leaves exactly what a full recomputation gives) and recomputes a customer
only when its record changed or when ``unchanged_until`` says a window edge has passed.

``unchanged_until`` is conservative by construction: it lists every moment at which a
comparison of the fleet totals or of ``customer_kpis`` with the evaluation time can flip
(each timestamp of the record, shifted by every window length those functions use; each
day of the record, shifted by every window of days) and returns the first one after the
time asked. Listing a moment too many only costs a recomputation; the unit tests check
that nothing changes before the moment returned.

Pure: no clock, no store. Aggregation shape: ``empty_sums``, ``add_to`` / ``remove_from``,
``totals_from``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

from scoring.kpis import FleetTotals
from scoring.state import DAY_MS, CustomerState

#: Sums (revenue, MRR, effort and loyalty points, resolution seconds) are kept in millionths.
FIXED_POINT = 1_000_000
#: FleetTotals fields that are its parameters, not sums.
_PARAMETERS = ("at_ms", "period_days", "survey_response_days")
#: Fixed windows (days) of customer_kpis: DAU/WAU/MAU, sessions, orders, resolutions, e-mails, answers
#: (as days, and as milliseconds for the 30 and 90 days before the evaluation time).
_KPI_WINDOWS_DAYS = (1, 7, 30, 90)
#: The continuous KPIs of customer_kpis: linear in time between the moments above.
AGEING_KPIS = ("days_since_last_purchase", "days_since_csm_contact")

Sums = dict[str, int]


def empty_sums() -> Sums:
    return {}


#: The FleetTotals fields that are sums (looked up once: ``dataclasses.fields`` is slow).
_SUM_FIELDS = tuple(item.name for item in dataclasses.fields(FleetTotals) if item.name not in _PARAMETERS)


def contribution(state: CustomerState, at_ms: int, period_days: int, survey_response_days: float) -> Sums:
    """One customer's part of the fleet totals at ``at_ms``, as integers; zeros left out."""
    totals = FleetTotals(at_ms, period_days, survey_response_days)
    totals.add(state)
    vector: Sums = {}
    for name in _SUM_FIELDS:
        value = getattr(totals, name)
        if isinstance(value, dict):
            for key, part in value.items():
                if part:
                    vector[f"{name}.{key}"] = _fixed(part)
        elif value:
            vector[name] = _fixed(value)
    return vector


def _fixed(value: int | float | bool) -> int:
    return round(value * FIXED_POINT) if isinstance(value, float) else int(value)


def add_to(sums: Sums, part: Sums) -> None:
    for key, value in part.items():
        sums[key] = sums.get(key, 0) + value


def remove_from(sums: Sums, part: Sums) -> None:
    for key, value in part.items():
        sums[key] = sums.get(key, 0) - value


def totals_from(sums: Sums, at_ms: int, period_days: int, survey_response_days: float) -> FleetTotals:
    """The FleetTotals the sums stand for (what ``stream.worker.fleet.publish_fleet`` exports)."""
    totals = FleetTotals(at_ms, period_days, survey_response_days)
    kinds = {item.name: getattr(totals, item.name) for item in dataclasses.fields(FleetTotals)}
    for key, value in sums.items():
        name, _, part = key.partition(".")
        current = kinds[name]
        if isinstance(current, dict):
            current[part] = value / FIXED_POINT if isinstance(current.get(part, 0), float) else value
        else:
            setattr(totals, name, value / FIXED_POINT if isinstance(current, float) else value)
    return totals


def unchanged_until(state: CustomerState, at_ms: int, period_days: int, survey_response_days: float) -> int | None:
    """The first moment after ``at_ms`` at which the customer's contribution to the fleet
    totals or its ``customer_kpis`` (but for the ages in AGEING_KPIS) could change with no
    new event; None when time alone never changes them again."""
    period_ms = period_days * DAY_MS
    response_ms = int(survey_response_days * DAY_MS)
    shifts_ms = sorted({0, 1, period_ms, period_ms + 1, 2 * period_ms, 2 * period_ms + 1, response_ms, response_ms + 1,
                        *(w for days in (30, 90) for w in (days * DAY_MS, days * DAY_MS + 1))})
    shifts_days = sorted({0, 1, 2, period_days, period_days + 1, 2 * period_days, 2 * period_days + 1,
                          *(w for days in _KPI_WINDOWS_DAYS for w in (days, days + 1))})
    first: int | None = None
    for moment in _timestamps(state):
        first = _first_after(at_ms, moment, shifts_ms, first)
    today = at_ms // DAY_MS
    for day in _days(state):
        # A window of days moves at midnight: the first shifted day after today.
        for shift in shifts_days:
            if day + shift > today:
                candidate = (day + shift) * DAY_MS
                if first is None or candidate < first:
                    first = candidate
                break
    return first


def _first_after(at_ms: int, moment: int, shifts: list[int], first: int | None) -> int | None:
    for shift in shifts:  # ascending: the first one after at_ms is the earliest of this moment's
        candidate = moment + shift
        if candidate > at_ms:
            return candidate if first is None or candidate < first else first
    return first


def _timestamps(state: CustomerState) -> Iterator[int]:
    """Every time of the record that fleet totals or customer KPIs compare with the evaluation time."""
    for moment in (state.first_event_ms, state.last_event_ms, state.cancelled_ms, state.first_purchase_ms,
                   state.last_purchase_ms, state.email_unsubscribed_ms, state.contact_ms, state.negative_contact_ms,
                   state.pulse_at_ms, state.pulse_expires_ms):
        if moment:
            yield moment
    for response in state.surveys:
        yield response.answered_ms
    for sent_ms, _kind in state.survey_invites:
        yield sent_ms
    for when, _mrr in state.mrr_changes:
        yield when
    for invoice in state.unpaid_invoices:
        yield invoice.due_ms
    for first in state.category_first_ms:
        if first:
            yield first


def _days(state: CustomerState) -> Iterator[int]:
    """Every UTC day of the record that a window of days can take in or leave."""
    yield from state.counts.days
    yield from state.users_last_day.values()
    yield from state.features_last_day.values()
    yield from state.resolution_days
    for day, *_counts in state.email_days:
        yield day


def aged_kpis(kpis: dict[str, Any], computed_ms: int, at_ms: int) -> dict[str, Any]:
    """Customer KPIs computed at ``computed_ms`` as they read at ``at_ms``, for a time before the
    customer's ``unchanged_until``: only the ages move (days since, days overdue)."""
    aged = dict(kpis)
    elapsed_days = (at_ms - computed_ms) / DAY_MS
    for name in AGEING_KPIS:
        if aged.get(name) is not None:
            aged[name] += elapsed_days
    if aged.get("overdue_invoices"):
        aged["max_days_overdue"] += elapsed_days
    return aged
