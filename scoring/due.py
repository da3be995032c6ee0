"""When a silent customer next needs the sweep: the due-time index's one question.

A sweep rescores a customer without an event. Most of the time that changes nothing that
matters: the score moves by less than ``sweep_min_score_change`` within its band, no alert
rule's condition starts or stops holding, nothing is evicted. ``next_sweep_due`` returns a
moment before which no sweep of the customer can do anything else, so the worker and the
replay rescore only the customers whose moment came (stream/processing/sweep.py,
scoring/replay.py) and publish exactly what a sweep of every customer would.

How it is bounded. Between *jump moments* (a day bucket leaving a window, a survey's
deadline, an invoice falling due, a pulse expiring, a cancellation taking effect, an alert
rule's silence or lapse deadline, the sweep's own silence threshold, eviction) every
component of the score is monotone in time: recency and touchpoint decay fall, BG/NBD's
expected purchases fall with the customer's age, sentiment moves monotonically toward its
neutral prior (every answer's weight decays by the same factor), an overdue invoice's
penalty grows. The composite is a positive-weighted mean of the components, clamped and
capped, so over an interval without a jump each component lies between its values at the
two ends, and the score between the composite of the lower ends and that of the upper ends.
An interval is *quiet* when, over that whole range, the band (and the band the hysteresis
compares) stays the published one, the score stays within ``min_change`` of the published
score, the same components have data, and the alert conditions hold as the record's open
episodes say, at both ends (each condition is a threshold on a monotone quantity or a
deadline). Each stretch between jump moments is tried whole; in one that is not quiet the
search narrows down to a sweep period (guessing from the score's drift where it can, halving
where it cannot: ``_last_quiet``) and ends at its last moment proven quiet. A probe is the
score's parts alone (``scoring.health.composite_at``), not a whole published score. (A
score a sweep just published is taken as still moving by the callers: due at the next
sweep, without a search.)

Pure: no clock, no store; the caller gives the time.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import Any

from scoring.alerts import BAND_RANK, AlertParameters, baseline_gap_days, conditions_holding, unusual_silence
from scoring.health import Composite, ScoringParameters, band_for, capped, composite_at
from scoring.state import DAY_MS, CustomerState, encode_state

#: The search stops this far after the moment it starts from (the customer is then due).
HORIZON_MS = 400 * DAY_MS


class DueSearch:
    """``next_sweep_due`` with a sweep's settings bound, for the worker's sweep and the replay.

    With ``native`` (``scoring.kernel.build`` of the same parameters and rules) the search runs
    in the Rust kernel on the encoded record: the same moment to the millisecond
    (tests/unit/test_kernel.py), at a fraction of the cost (bench/sweep.py --due)."""

    def __init__(
        self,
        parameters: ScoringParameters,
        rules: AlertParameters | None,
        min_change: float,
        period_ms: int,
        ttl_ms: int,
        native: Any = None,
    ) -> None:
        self.parameters = parameters
        self.rules = rules
        self.min_change = min_change
        self.period_ms = period_ms
        self.ttl_ms = ttl_ms
        self.native = native

    def next_due(self, state: CustomerState, at_ms: int) -> int:
        """The first moment after ``at_ms`` at which a sweep could matter for this customer."""
        if self.native is not None:
            try:
                return int(self.native.next_sweep_due(encode_state(state), at_ms, self.min_change, self.period_ms, self.ttl_ms, self.period_ms))
            except ValueError:  # a record the kernel cannot read: the model's search gives the same moment
                pass
        return next_sweep_due(state, at_ms, self.parameters, self.rules, self.min_change, self.period_ms, self.ttl_ms, self.period_ms)


def next_sweep_due(
    state: CustomerState,
    at_ms: int,
    parameters: ScoringParameters,
    rules: AlertParameters | None,
    min_change: float,
    silence_ms: int,
    ttl_ms: int,
    step_ms: int,
) -> int:
    """The first moment after ``at_ms`` (the customer scored or swept then, or an event came)
    at which a sweep could publish, open or close an alert episode, move the alert band, emit
    a digest or evict the customer (at most a horizon of 400 days later).

    ``silence_ms``: the sweep passes over a customer with an event within this long;
    ``ttl_ms``: evicted after this long without an event (0: never); ``step_ms``: the sweep's
    period, the shortest interval worth proving quiet."""
    start = max(at_ms + 1, state.last_event_ms + silence_ms)
    limit = start + HORIZON_MS
    if ttl_ms > 0 and state.last_event_ms > 0:
        limit = min(limit, state.last_event_ms + ttl_ms)
    if state.alert_digest:
        limit = min(limit, (state.alert_digest[0][0] // DAY_MS + 1) * DAY_MS)
    limit = max(limit, start)
    jumps = sorted({moment for moment in _jump_moments(state, parameters, rules, start) if start < moment < limit})
    jumps.append(limit)
    segment_start = start
    for segment_end in jumps:
        if segment_end <= segment_start:
            continue
        first = _probe(state, segment_start, parameters, rules)
        if not _steady(state, first, segment_start, parameters, rules, min_change):
            return segment_start
        last_moment = segment_end - 1
        if last_moment > segment_start:
            last = _probe(state, last_moment, parameters, rules)
            if not _quiet(state, first, last, last_moment, parameters, rules, min_change):
                # Something may happen inside: the last moment of the segment proven quiet, to a sweep period.
                quiet = _last_quiet(state, first, segment_start, (last_moment, last), parameters, rules, min_change, max(1, step_ms))
                return max(quiet, at_ms + 1)
        segment_start = segment_end
    return max(limit, at_ms + 1)


#: A probe: the score's parts at a moment (None without data) and the alert conditions holding.
Probe = tuple[Composite | None, frozenset[str]]

#: Guesses from the score's margin before the search halves only (each guess costs two probes).
MAX_GUESSES = 3


def _last_quiet(
    state: CustomerState,
    first: Probe,
    start_ms: int,
    loud_end: tuple[int, Probe],
    parameters: ScoringParameters,
    rules: AlertParameters | None,
    min_change: float,
    step_ms: int,
) -> int:
    """The last moment proven quiet between ``start_ms`` (quiet) and a loud moment, to
    ``step_ms``. Where the score is what makes the end loud, the search guesses where its
    margin (``_margin``), taken as linear between the two ends, runs out, and probes the
    guess and its neighbour a period away: a score drifting steadily is placed in about two
    probes instead of the dozen halving takes. Otherwise, or after MAX_GUESSES, it halves.
    Only a probe proven quiet moves the answer, so guesses change the cost, never the result's
    guarantee."""
    quiet, (loud, loud_probe) = start_ms, loud_end
    margin_quiet = _margin(state, first, first, quiet, parameters, min_change)
    margin_loud = _margin(state, first, loud_probe, loud, parameters, min_change)
    guesses = 0
    neighbour: int | None = None
    while loud - quiet > step_ms:
        guessing = False
        if neighbour is not None and quiet < neighbour < loud:
            middle = neighbour
        elif guesses < MAX_GUESSES and margin_quiet > 0.0 >= margin_loud:
            guesses, guessing = guesses + 1, True
            fraction = margin_quiet / (margin_quiet - margin_loud)
            middle = min(max(quiet + int((loud - quiet) * fraction), quiet + 1), loud - 1)
        else:
            middle = (quiet + loud) // 2
        probe = _probe(state, middle, parameters, rules)
        margin = _margin(state, first, probe, middle, parameters, min_change)
        if _quiet(state, first, probe, middle, parameters, rules, min_change):
            quiet, margin_quiet, neighbour = middle, margin, (middle + step_ms // 2 if guessing else None)
        else:
            loud, margin_loud, neighbour = middle, margin, (middle - step_ms // 2 if guessing else None)
    return quiet


def _probe(state: CustomerState, at_ms: int, parameters: ScoringParameters, rules: AlertParameters | None) -> Probe:
    composite = composite_at(state, at_ms, parameters)
    holding = conditions_holding(state, composite[2], at_ms, parameters, rules) if rules is not None and composite is not None else frozenset()
    return composite, holding


def _steady(state: CustomerState, probe: Probe, at_ms: int, parameters: ScoringParameters, rules: AlertParameters | None, min_change: float) -> bool:
    """Whether a sweep at ``at_ms`` alone would leave everything that matters as it is."""
    composite, holding = probe
    if composite is None:
        return state.published is None
    score = composite[1]
    return _within(state, score, score, at_ms, parameters, rules, min_change) and _episodes_agree(state, holding, at_ms, rules)


def _bounds(state: CustomerState, first: Probe, last: Probe, end_ms: int, parameters: ScoringParameters) -> tuple[float, float] | None:
    """The lowest and highest score between the two probes (no jump moment between them);
    None when they differ in which components have data."""
    a, b = first[0], last[0]
    if a is None or b is None or a[0].keys() != b[0].keys():
        return None
    low = high = 0.0
    others = b[0]
    for name, (score, share) in a[0].items():
        other = others[name][0]
        low += share * min(score, other)
        high += share * max(score, other)
    return capped(state, low, end_ms, parameters), capped(state, high, end_ms, parameters)


def _quiet(state: CustomerState, first: Probe, last: Probe, end_ms: int, parameters: ScoringParameters, rules: AlertParameters | None, min_change: float) -> bool:
    """Whether no sweep between the two probes (no jump moment between them) would matter."""
    if first[0] is None or last[0] is None:
        return first[0] is None and last[0] is None and state.published is None
    bounds = _bounds(state, first, last, end_ms, parameters)
    if bounds is None or first[1] != last[1]:
        return False
    return _within(state, bounds[0], bounds[1], end_ms, parameters, rules, min_change) and _episodes_agree(state, last[1], end_ms, rules)


def _margin(state: CustomerState, first: Probe, last: Probe, end_ms: int, parameters: ScoringParameters, min_change: float) -> float:
    """How far the scores between the probes stay from moving ``min_change`` off the published
    score or leaving its band (negative: beyond): the quantity the search's guesses follow.
    NaN when it does not apply (no published score, components appearing or going): every
    comparison with it is false, so the search halves."""
    published = state.published
    bounds = _bounds(state, first, last, end_ms, parameters)
    if published is None or bounds is None:
        return math.nan
    low, high = bounds
    floor, ceiling = _band_edges(published.band, parameters)
    return min(min_change - max(abs(low - published.score), abs(high - published.score)), low - floor, ceiling - high)


def _band_edges(band: str, parameters: ScoringParameters) -> tuple[float, float]:
    """The scores a band spans (``band_for``): [floor, ceiling)."""
    if band == "healthy":
        return parameters.healthy_min, 1e9
    if band == "at_risk":
        return parameters.at_risk_min, parameters.healthy_min
    return -1e9, parameters.at_risk_min


def _within(
    state: CustomerState, low: float, high: float, at_ms: int, parameters: ScoringParameters, rules: AlertParameters | None, min_change: float
) -> bool:
    """Scores anywhere in [low, high] keep the published band and score (within ``min_change``)
    and leave the band alerting sees where it is."""
    published = state.published
    if published is None:
        return False
    low, high = round(low, 2), round(high, 2)  # as score_state rounds the score its band is read from
    band = band_for(low, parameters)
    if band != published.band or band_for(high, parameters) != band:
        return False
    if max(abs(low - published.score), abs(high - published.score)) >= min_change:
        return False
    if rules is None or not rules.band_downgrade:
        return True
    alert_band = state.alert_band
    if alert_band is None:  # a sweep would set it
        return False
    if BAND_RANK[band_for(high - rules.hysteresis_points, parameters)] < BAND_RANK[alert_band]:
        return False  # the score clears the band edge by the hysteresis: the alert band moves up
    if BAND_RANK[band] > BAND_RANK[alert_band]:  # below it, by time alone: alerted once the silence is unusual
        return unusual_silence(state, at_ms, rules, rules.time_band_gap_multiplier) is None
    return True


def _episodes_agree(state: CustomerState, holding: frozenset[str], at_ms: int, rules: AlertParameters | None) -> bool:
    """The conditions holding are the episodes open, and a cancellation in effect was alerted:
    a sweep opens and closes nothing."""
    if rules is None:
        return True
    for rule in ("purchase_activity", "payment_trouble", "silence"):
        if rules.enabled(rule) and (rule in holding) != (rule in state.alert_episodes):
            return False
    cancelled = state.cancelled_ms
    if rules.cancellation and cancelled and cancelled <= at_ms and state.alert_episodes.get("cancellation") != cancelled:
        return False
    return True


def _jump_moments(state: CustomerState, parameters: ScoringParameters, rules: AlertParameters | None, after_ms: int) -> list[int]:
    """The moments at which a component, its presence, a cap or an alert condition can jump
    (every one after ``after_ms``, and some before it, which the caller drops)."""
    response_ms = int(parameters.survey_response_days * DAY_MS)
    moments: list[int] = []
    for moment in (state.cancelled_ms, state.pulse_expires_ms):
        if moment:
            moments.append(moment)
    for response in state.surveys:
        moments.append(response.answered_ms)
    for sent_ms, _kind in state.survey_invites:
        moments.append(sent_ms + response_ms)
    for invoice in state.unpaid_invoices:
        moments.append(invoice.due_ms + 1)  # overdue once past its due moment
        if rules is not None:
            moments.append(invoice.due_ms + int(rules.payment_overdue_days * DAY_MS) + 1)
    counts = state.counts
    days = counts.days
    # Days that left every window before the search starts add nothing (the longest is 90 days).
    for index in range(bisect_left(days, after_ms // DAY_MS - 89), len(days)):
        day = days[index]
        # A day leaves the windows its counts are read in: activity (7 and 90 days: usage's
        # trend), orders (30 and 90: purchase frequency), failed payments (30).
        if counts.sessions[index] or counts.feature_uses[index]:
            moments.extend(((day + 7) * DAY_MS, (day + 90) * DAY_MS))
        if counts.purchases[index]:
            moments.extend(((day + 30) * DAY_MS, (day + 90) * DAY_MS))
        if counts.payments_failed[index]:
            moments.append((day + 30) * DAY_MS)
    for day in state.users_last_day.values():  # usage breadth: weekly and monthly users
        moments.extend(((day + 7) * DAY_MS, (day + 30) * DAY_MS))
    for day in state.features_last_day.values():  # key features used within 30 days
        moments.append((day + 30) * DAY_MS)
    if rules is not None:
        moments.extend(_alert_deadlines(state, rules))
    return moments


def _alert_deadlines(state: CustomerState, rules: AlertParameters) -> list[int]:
    """The silence deadlines (the silence rule, and a fall of the band time alone caused) and
    the purchase lapse deadline: moments a condition starts holding."""
    deadlines = []
    gap = baseline_gap_days(state)
    if gap is not None:
        for multiplier in (rules.silence_gap_multiplier, rules.time_band_gap_multiplier):
            deadlines.append(state.last_event_ms + int(max(rules.silence_min_days, multiplier * gap) * DAY_MS) + 1)
    if state.purchase_days >= max(2, rules.purchase_lapse_min_purchases):
        purchase_gap = (state.last_purchase_ms // DAY_MS - state.first_purchase_ms // DAY_MS) / (state.purchase_days - 1)
        lapse_days = max(rules.purchase_lapse_min_days, rules.purchase_lapse_gap_multiplier * purchase_gap)
        deadlines.append(state.last_purchase_ms + int(lapse_days * DAY_MS) + 1)
    return deadlines
