"""The fleet's totals kept incrementally: each customer's contribution as exact integers,
and the next moment at which time alone could change it.

A worker with millions of customers cannot decode every record for every fleet export.
It keeps, per partition, the sum of its customers' contributions (``FleetTotals`` of one
customer, as integers: sums in millionths, so removing an old contribution and adding
the new one leaves exactly what a full recomputation gives) and recomputes a customer
only when its record changed or when ``unchanged_until`` says a window edge has passed.

``unchanged_until`` lists every moment at which a comparison of the fleet totals or of
``customer_kpis`` with the evaluation time can flip (each timestamp of the record, shifted
by the window lengths its own comparisons use; each day of the record, shifted by the
windows of days it is counted in) and returns the first one after the time asked. Listing
a moment too many only costs a recomputation (a shift of every window for every timestamp
did: twice the recounts of a quiet minute); the unit tests check that nothing changes
before the moment returned.

Pure: no clock, no store. Aggregation shape: ``empty_sums``, ``add_to`` / ``remove_from``,
``totals_from``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import msgspec

from scoring.kpis import FleetTotals
from scoring.state import DAY_MS, CustomerState

#: Sums (revenue, MRR, effort and loyalty points, resolution seconds) are kept in millionths.
FIXED_POINT = 1_000_000
#: FleetTotals fields that are its parameters, not sums.
_PARAMETERS = ("at_ms", "period_days", "survey_response_days")
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


#: The sums in a fixed order: how ``encode_counted`` lays them out (the Rust kernel's ``KEYS``,
#: native/src/fleet.rs, in the same order; tests/unit/test_kernel_fleet.py holds them equal).
SUM_KEYS: tuple[str, ...] = (
    "customers", "active", "active_at_period_start", "new_in_period", "lost_in_period", "buyers", "repeat_buyers",
    "bands.healthy", "bands.at_risk", "bands.critical", "nps.promoter", "nps.passive", "nps.detractor",
    "csat_satisfied", "csat_answers", "ces_sum", "ces_answers", "cli_points_sum", "cli_answers", "csi_answered", "csi_secure",
    "resolution_seconds_sum", "resolutions", "mrr", "orders", "revenue", "abandoned_checkouts", "regular_customers",
    "survey_participants", "mrr_movement.start", "mrr_movement.existing_end", "mrr_movement.new", "mrr_movement.expansion",
    "mrr_movement.contraction", "mrr_movement.churned", "emails.sent", "emails.opened", "emails.clicked", "customers_emailed",
    "customers_unsubscribed", "invitations_answered", "invitations_missed", "existing_buyers", "upsold", "csm_touched",
    "score_change_since_touchpoint_sum", "active_users.1d", "active_users.7d", "active_users.30d",
)  # fmt: skip
_SUM_KEY_SET = frozenset(SUM_KEYS)
_BAND = "bands."


def encode_counted(part: Sums) -> bytes:
    """A contribution as the fleet export keeps it on disk for a customer, to take it out again
    later without the record it was counted from (about 60 bytes instead of a kilobyte):
    MessagePack, the sums in ``SUM_KEYS`` order, then the name of a band outside the three, or
    nil. The kernel writes the same bytes."""
    other = [key for key in part if key not in _SUM_KEY_SET]
    if len(other) > 1 or (other and not other[0].startswith(_BAND)):
        raise ValueError(f"not a customer's contribution: {other}")
    band = other[0][len(_BAND) :] if other else None
    return msgspec.msgpack.encode([*(part.get(key, 0) for key in SUM_KEYS), band])


def decode_counted(stored: bytes) -> Sums:
    """``encode_counted``'s contribution back (zeros left out); ValueError for anything else."""
    try:
        items = msgspec.msgpack.decode(stored)
    except msgspec.DecodeError as error:
        raise ValueError(f"not a counted contribution: {error}") from None
    if not (isinstance(items, list) and len(items) == len(SUM_KEYS) + 1 and all(type(value) is int for value in items[:-1])):
        raise ValueError("not a counted contribution: 49 integers and a band's name or nil expected")
    band = items[-1]
    if band is not None and not isinstance(band, str):
        raise ValueError("not a counted contribution: 49 integers and a band's name or nil expected")
    part: Sums = {key: value for key, value in zip(SUM_KEYS, items) if value}
    if band is not None:
        part[_BAND + band] = 1
    return part


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
    timestamp_shifts, day_shifts = _shifts(period_days, survey_response_days)
    first: int | None = None
    for kind, moment in _timestamps(state):
        first = _first_after(at_ms, moment, timestamp_shifts[kind], first)
    today = at_ms // DAY_MS
    for kind, day in _days(state):
        # A window of days moves at midnight: the first shifted day after today.
        for shift in day_shifts[kind]:
            if day + shift > today:
                candidate = (day + shift) * DAY_MS
                if first is None or candidate < first:
                    first = candidate
                break
    return first


#: Per (period_days, survey_response_days): the shifts of each kind of timestamp and of day.
_SHIFTS: dict[tuple[int, float], tuple[list[list[int]], list[list[int]]]] = {}

# The kinds of timestamp and of day of a record (indexes into the shift lists).
_FIRST_EVENT, _LAST_EVENT, _CANCELLED, _FIRST_PURCHASE, _UNSUBSCRIBED, _CONTACT, _PULSE_EXPIRES = 0, 1, 2, 3, 4, 5, 6
_ANSWERED, _INVITED, _MRR_CHANGE, _INVOICE_DUE, _CATEGORY_FIRST = 7, 8, 9, 10, 11
_COUNTS_DAY, _USER_DAY, _FEATURE_DAY, _RESOLUTION_DAY, _EMAIL_DAY = 0, 1, 2, 3, 4


def _shifts(period_days: int, survey_response_days: float) -> tuple[list[list[int]], list[list[int]]]:
    """Each kind's windows, from every comparison with the evaluation time in FleetTotals.add
    and customer_kpis (and their helpers in scoring.kpis). A timestamp ``t`` compared as
    ``since <= t <= at`` with ``since = at - w`` changes at ``t`` and just after ``t + w``: both
    ``w`` and ``w + 1`` are listed. A day ``d`` in a window of days ``today - w < d <= today``
    enters at ``d`` and leaves at ``d + w``. Ages (days since) are not listed: ``aged_kpis``."""
    key = (period_days, survey_response_days)
    cached = _SHIFTS.get(key)
    if cached is not None:
        return cached
    p, r, d30, d90 = period_days * DAY_MS, int(survey_response_days * DAY_MS), 30 * DAY_MS, 90 * DAY_MS

    def windows(*lengths: int) -> list[int]:
        return sorted({length + edge for length in lengths for edge in (0, 1)})

    timestamp_shifts = [
        windows(p),  # first event: new in the period, or before it
        windows(p, 2 * p),  # last event: active now, active in the period before
        windows(0, p),  # cancelled: by now, in the period
        windows(p, d30),  # first purchase: bought before the period, upsell (30 days)
        windows(0, p),  # unsubscribed in the period
        windows(0, p),  # CSM touchpoint in the period
        windows(0),  # pulse expired
        windows(0, p, d90),  # survey answered: in the period, in 90 days, in time for its invitation
        windows(0, r, p, d90),  # survey sent: in the period or 90 days, its deadline
        windows(p),  # MRR change: the MRR at the period's start
        windows(0),  # invoice overdue
        windows(0, p, d30),  # category first bought: in the period, in 30 days
    ]
    day_shifts = [
        sorted({0, 7, 30, 90, period_days, period_days + 1, 2 * period_days + 1}),  # day counters (sessions 7 and 30 days, orders 30 and 90, the period, the period before it)
        [0, 1, 7, 30],  # a user's last day: DAU, WAU, MAU
        [0, 30],  # a key feature's last day: adoption over 30 days
        sorted({0, 30, period_days}),  # a resolution's day: 30 days, the period
        sorted({0, 91, period_days + 1}),  # an e-mail day: from the day 90 days (or the period) back
    ]
    cached = _SHIFTS[key] = (timestamp_shifts, day_shifts)
    return cached


def _first_after(at_ms: int, moment: int, shifts: list[int], first: int | None) -> int | None:
    for shift in shifts:  # ascending: the first one after at_ms is the earliest of this moment's
        candidate = moment + shift
        if candidate > at_ms:
            return candidate if first is None or candidate < first else first
    return first


def _timestamps(state: CustomerState) -> Iterator[tuple[int, int]]:
    """(kind, time) of every time of the record that fleet totals or customer KPIs compare with
    the evaluation time (not the last purchase, the negative touchpoint or the pulse's time:
    only ages are computed from them)."""
    for kind, moment in ((_FIRST_EVENT, state.first_event_ms), (_LAST_EVENT, state.last_event_ms), (_CANCELLED, state.cancelled_ms),
                         (_FIRST_PURCHASE, state.first_purchase_ms), (_UNSUBSCRIBED, state.email_unsubscribed_ms),
                         (_CONTACT, state.contact_ms), (_PULSE_EXPIRES, state.pulse_expires_ms)):
        if moment:
            yield kind, moment
    for response in state.surveys:
        yield _ANSWERED, response.answered_ms
    for sent_ms, _kind in state.survey_invites:
        yield _INVITED, sent_ms
    for when, _mrr in state.mrr_changes:
        yield _MRR_CHANGE, when
    for invoice in state.unpaid_invoices:
        yield _INVOICE_DUE, invoice.due_ms
    for first in state.category_first_ms:
        if first:
            yield _CATEGORY_FIRST, first


def _days(state: CustomerState) -> Iterator[tuple[int, int]]:
    """(kind, UTC day) of every day of the record that a window of days can take in or leave."""
    for day in state.counts.days:
        yield _COUNTS_DAY, day
    for day in state.users_last_day.values():
        yield _USER_DAY, day
    for day in state.features_last_day.values():
        yield _FEATURE_DAY, day
    for day in state.resolution_days:
        yield _RESOLUTION_DAY, day
    for day, *_counts in state.email_days:
        yield _EMAIL_DAY, day


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
