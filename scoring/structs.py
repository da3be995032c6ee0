"""The model's values: the customer record, scores, alerts and per-event results.

They are msgspec structs, declared here and nowhere else because the modules
that compute with them (state, health, alerts, pipeline, replay, output) are
compiled with mypyc, which cannot compile classes with a metaclass such as
msgspec's. Those modules import (and re-export) them from here.

All are declared ``gc=False``: they hold data, never a reference cycle, so the
garbage collector need not track them (the worker keeps thousands alive per
batch; tracked, they made collections a sixth of its time).

The record (``CustomerState`` and its parts) is serialized with msgpack as
positional arrays (``array_like``) to keep it small; new fields are only ever
appended, with defaults, so old changelog records still decode.
"""

from __future__ import annotations

import enum

import msgspec

COUNTERS = (
    "sessions",
    "feature_uses",
    "purchases",
    "revenue_cents",
    "abandoned_checkouts",
    "tickets_opened",
    "payments_failed",
    "refunds_cents",
)


class DayCounts(msgspec.Struct, array_like=True, gc=False):
    """Per-UTC-day counters of event time, in columns.

    ``days`` holds the day numbers (days since 1970-01-01) in ascending order and
    each counter list is aligned with it. Columns of small integers keep the record
    small; ``scoring.state.day_total`` and ``scoring.health.activity_sums`` sum them.
    """

    days: list[int] = []
    sessions: list[int] = []
    feature_uses: list[int] = []
    purchases: list[int] = []
    revenue_cents: list[int] = []
    abandoned_checkouts: list[int] = []
    tickets_opened: list[int] = []
    payments_failed: list[int] = []
    refunds_cents: list[int] = []

    def __post_init__(self) -> None:
        """A record whose columns are out of step with its days (no record this code writes: a
        corrupt or foreign one) is refused when it is read (msgspec.ValidationError), as the
        kernel refuses it: the worker then treats it as unreadable and rebuilds the customer
        from its next events, instead of failing on it at every event and every export."""
        days = len(self.days)
        columns = (self.sessions, self.feature_uses, self.purchases, self.revenue_cents, self.abandoned_checkouts, self.tickets_opened, self.payments_failed, self.refunds_cents)
        if any(len(column) != days for column in columns):
            raise ValueError("a day counter's column is not as long as the days")


class OpenTicket(msgspec.Struct, array_like=True, gc=False):
    ticket_id: str
    opened_ms: int
    priority: int  # index into PRIORITIES


class SurveyResponse(msgspec.Struct, array_like=True, gc=False):
    survey: str
    score: float
    scale_min: float
    scale_max: float
    answered_ms: int


class UnpaidInvoice(msgspec.Struct, array_like=True, gc=False):
    invoice_id: str
    amount: float
    due_ms: int


class PublishedScore(msgspec.Struct, array_like=True, gc=False):
    """What was last published for this customer, to detect changes and explain deltas."""

    score: float
    band: str
    as_of_ms: int
    #: component → its contribution in points to the published score
    contributions: dict[str, float] = {}


class CustomerState(msgspec.Struct, array_like=True, gc=False):
    customer_id: str
    first_event_ms: int = 0
    last_event_ms: int = 0
    counts: DayCounts = msgspec.field(default_factory=DayCounts)
    #: 32-bit fingerprint of a user id → last UTC day that user was active (ids can be long)
    users_last_day: dict[int, int] = {}
    features_last_day: dict[str, int] = {}
    last_usage_ms: int = 0
    first_purchase_ms: int = 0
    last_purchase_ms: int = 0
    purchase_days: int = 0
    categories: list[str] = []
    open_tickets: list[OpenTicket] = []
    tickets_resolved: int = 0
    tickets_reopened: int = 0
    resolution_seconds: list[float] = []
    surveys: list[SurveyResponse] = []
    unpaid_invoices: list[UnpaidInvoice] = []
    has_billing: bool = False
    mrr: float = 0.0
    previous_mrr: float = 0.0
    cancelled_ms: int = 0
    #: 8-byte fingerprints of the last applied event ids, concatenated
    applied_ids: bytes = b""
    published: PublishedScore | None = None
    events_applied: int = 0
    plan: str | None = None
    #: Partition and, per input stream, the last input offset applied: drops redeliveries exactly.
    source_partition: int = -1
    source_offsets: list[int] = msgspec.field(default_factory=lambda: [-1, -1, -1, -1])
    #: Distinct days with events, and the moving average of the gap between them (for the silence rule).
    active_days: int = 0
    gap_days_mean: float = 0.0
    #: Alert state: the band as alerting sees it (with hysteresis), open episodes and last alert per rule.
    alert_band: str | None = None
    alert_episodes: dict[str, int] = {}
    alert_last_raised: dict[str, int] = {}
    #: (day start in ms, highest published score that day) within the sharp-drop window.
    recent_scores: list[tuple[int, float]] = []
    #: When the customer's alerts of the last 30 days were raised (the per-customer budget).
    alert_times: list[int] = []
    #: Alerts of the digest rules waiting for the day's summary: (at, rule, detail).
    alert_digest: list[tuple[int, str, str]] = []
    #: The record's layout version (scoring.state.LAYOUT), always the last known field: a
    #: record without it is of layout 1. New fields go after it, in a new layout.
    layout: int = 1
    #: Layout 3: why the customer cancelled (subscription.cancelled data.reason), while cancelled.
    cancellation_reason: str | None = None
    #: Layout 4: the customer-success relationship and survey invitations. The latest CSM
    #: touchpoint not marked negative, and the latest negative one (0: none).
    contact_ms: int = 0
    negative_contact_ms: int = 0
    #: The latest CSM pulse: its rating 1-5 (0: none), when it was given, until when it
    #: counts, its reason codes (kept for the audit, never scored).
    pulse_rating: int = 0
    pulse_at_ms: int = 0
    pulse_expires_ms: int = 0
    pulse_reasons: list[str] = []
    #: Surveys sent: (when, survey kind), the latest MAX_INVITES by time.
    survey_invites: list[tuple[int, str]] = []
    #: Per day (day, e-mails sent, opened, clicked) over the 90 days up to the latest e-mail
    #: day, and the latest unsubscription (0: none). KPIs only, never scored.
    email_days: list[tuple[int, int, int, int]] = []
    email_unsubscribed_ms: int = 0
    #: The UTC day each of the last resolutions happened, aligned with the end of
    #: ``resolution_seconds`` (a record of an older layout has durations without days: those
    #: are left out of windowed figures), so time to resolution can be windowed by date.
    resolution_days: list[int] = []
    #: The last MAX_MRR_CHANGES changes of MRR by time, (when, MRR after it; a cancellation is
    #: 0.0): the MRR at a period's start, for MRR growth of existing customers.
    mrr_changes: list[tuple[int, float]] = []
    #: Layout 5: when each of ``categories`` was first bought (the earliest purchase's event
    #: time; 0 where a record of an older layout did not keep it), for upsell.
    category_first_ms: list[int] = []
    #: The published score just before the latest touchpoint not marked negative (-1: none,
    #: or none published then): did the customer's health move after the CSM's action?
    contact_score: float = -1.0


class ComponentScore(msgspec.Struct, frozen=True, gc=False):
    """One component's 0-100 score, its weight after reweighting, and weight × score (unrounded)."""

    score: float
    weight: float
    contribution: float


class HealthScore(msgspec.Struct, frozen=True, gc=False):
    score: float  # rounded to 2 decimals: the published value, compared to detect changes
    band: str
    churn_risk: float
    components: dict[str, ComponentScore]
    as_of_ms: int
    confidence: float
    #: Change of each component's contribution, in points, since the previous published score.
    changes: dict[str, float] = {}
    previous_score: float | None = None
    #: BG/NBD expected purchases in the outlook period at ``as_of_ms`` (None without a fitted
    #: model or for subscribers): the alert rules reuse it instead of computing it again.
    expected_purchases: float | None = None
    #: When the subscription was cancelled (0: not cancelled at ``as_of_ms``), and why.
    cancelled_ms: int = 0
    cancellation_reason: str | None = None
    #: The customer's monthly recurring revenue (for ties in the riskiest list).
    mrr: float = 0.0
    #: Activity (sessions and feature uses) of the last 30 days over the 30 before, minus 1;
    #: None without activity in the 30 days before (docs/model.md, "Customers ready for more").
    usage_growth: float | None = None
    #: The horizon a calibrated churn_risk is the probability of churning within (None: the prior).
    churn_risk_horizon_days: float | None = None
    #: A CSM pulse was given and has expired (scoring.health.needs_fresh_pulse).
    needs_fresh_pulse: bool = False


class ActivitySums(msgspec.Struct, frozen=True, gc=False):
    """Sums over the day buckets of the last 7, 30, 60 and 90 days, from one pass."""

    activity_7d: int
    activity_30d: int
    activity_60d: int
    activity_90d: int
    orders_30d: int
    orders_90d: int
    failed_payments_30d: int


class Reason(msgspec.Struct, frozen=True, gc=False):
    component: str
    change: float


class Alert(msgspec.Struct, frozen=True, gc=False):
    alert_id: str
    customer_id: str
    rule: str
    severity: str  # info | warning | critical
    score: float
    previous_score: float | None
    band: str
    churn_risk: float
    reasons: list[Reason]
    occurred_at_ms: int
    detail: str
    #: The customer's plan (subscription.updated data.plan), for routing alerts by segment.
    plan: str | None = None
    #: The playbook's step for this alert ([alerts.actions]): what to do, who, within how many hours.
    recommended_action: str | None = None
    action_owner: str | None = None
    action_due_hours: float | None = None


class AlertDecision(msgspec.Struct, frozen=True, gc=False):
    raised: list[Alert] = []
    #: (rule, severity) of alerts held back by the cooldown
    suppressed: list[tuple[str, str]] = []


NO_DECISION = AlertDecision()


class Outcome(str, enum.Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    LATE = "late"


class Step(msgspec.Struct, frozen=True, gc=False):
    outcome: Outcome
    #: A score that changed and must be published, or None.
    publish: HealthScore | None
    alerts: AlertDecision = NO_DECISION


class ScoreChanged(msgspec.Struct, frozen=True, gc=False):
    customer_id: str
    health: HealthScore
    trigger_event_id: str | None  # None: the sweep


class AlertRaised(msgspec.Struct, frozen=True, gc=False):
    alert: Alert


class ScoreLine(msgspec.Struct, frozen=True, gc=False):
    """A replay's score line, written by the Rust kernel (``scoring.output.score_line``'s bytes)."""

    line: bytes


class AlertLine(msgspec.Struct, frozen=True, gc=False):
    """A replay's alert line (``scoring.output.alert_line``'s bytes) with what the fleet's
    alert budget orders and spends it by."""

    customer_id: str
    occurred_at_ms: int
    churn_risk: float
    line: bytes


class FinalScore(msgspec.Struct, frozen=True, gc=False):
    customer_id: str
    health: HealthScore


class ComponentMessage(msgspec.Struct, gc=False):
    """One component in the ``customer-health`` message, rounded for publication."""

    score: float
    weight: float
    contribution: float


class HealthMessage(msgspec.Struct, gc=False):
    """The ``customer-health`` message (docs/events.md); fields in wire order.

    A struct rather than a dict: it is built and encoded once per published score,
    and msgspec encodes a struct without hashing its keys.
    """

    customer_id: str
    score: float
    band: str
    churn_risk: float
    components: dict[str, ComponentMessage]
    confidence: float
    previous_score: float | None
    changes: dict[str, float]
    as_of: str
    computed_at: str
    model_version: str
    trigger_event_id: str | None
    #: Whether the customer had cancelled at ``as_of``, when, and why (the exit reason).
    cancelled: bool = False
    cancelled_at: str | None = None
    cancellation_reason: str | None = None
    mrr: float = 0.0
    usage_growth: float | None = None
    churn_risk_horizon_days: float | None = None
    needs_fresh_pulse: bool = False
