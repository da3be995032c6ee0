"""The one settings object: files in config/ overlaid by HEALTHSCORE_* environment variables.

Loaded once at start, validated, frozen, and passed down explicitly. A bad value
fails fast with an error naming the key. Nested keys are set from the
environment with a double underscore, e.g. ``HEALTHSCORE_TOPICS__PURCHASES``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import ssl
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from scoring.contract import TopicKind
from scoring.alerts import DEFAULT_ACTIONS, RULES, Action, AlertParameters
from scoring.bgnbd import BgNbdParameters
from scoring.health import COMPONENTS, DEFAULT_WEIGHTS, ScoringParameters
from scoring.churn import FEATURES, ChurnModel
from scoring.kpis import DEFAULT_CANCELLATION_REASONS

PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: The shortest bearer token accepted (api_tokens, api_tokens_file, metrics_token).
MIN_TOKEN_CHARACTERS = 32
DEFAULT_CONFIG_FILE = PROJECT_ROOT / "config" / "healthscore.toml"


class Frozen(BaseModel):
    # hide_input_in_errors: a refused value may be a secret (a webhook secret, a Slack URL).
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class TopicNames(Frozen):
    purchases: str = "purchases"
    usage: str = "product-usage"
    tickets: str = "tickets"
    payments: str = "payments"
    health: str = "customer-health"
    alerts: str = "churn-alerts"
    #: Internal control topic, co-partitioned with the inputs: sweep ticks (one per partition)
    #: and erasure requests (keyed by customer), applied in order with the customer's events.
    sweep: str = "healthscore-sweep"
    #: The audit trail of erasures: one record per erased customer, keyed by its keyed hash
    #: (never the id), compacted and kept for ever.
    erasures: str = "healthscore-erasures"
    #: Alerts `healthscore deliver` could not deliver to an endpoint (retries spent, or the
    #: endpoint disabled), with the endpoint and last error in headers, for `--redrive`.
    delivery_failed: str = "churn-alerts.delivery-failed"
    #: What `healthscore ingest` received and could not turn into events (no customer id, a
    #: value past the contract's bounds): the original body, with the source and reason in headers.
    ingest_rejected: str = "ingest.rejected"
    #: Replicas of every topic ``healthscore topics`` and the worker create: 1 on a local broker,
    #: 3 on a production cluster (managed clusters refuse 1, or cannot write it with acks=all).
    replication_factor: int = Field(1, ge=1, le=16)
    #: ``min.insync.replicas`` of those topics (0: the broker's default); 2 with 3 replicas.
    min_insync_replicas: int = Field(0, ge=0, le=16)
    #: How long Kafka keeps the scores, the alerts and the dead letters (``retention.ms``).
    health_retention_days: float = Field(7.0, gt=0)
    alerts_retention_days: float = Field(30.0, gt=0)
    dead_letter_retention_days: float = Field(7.0, gt=0)
    #: How long the control topic keeps sweep ticks and erasure requests (which name the
    #: customer): longer than a worker may be down, or a request waiting for it is lost.
    control_retention_days: float = Field(7.0, gt=0)
    #: Whether the worker may create a missing topic at run time (its changelog); false for
    #: an ACL without CREATE: the worker then refuses to start while a topic is missing.
    allow_runtime_creation: bool = True

    @classmethod
    def name_fields(cls) -> list[str]:
        """The fields that name a topic (the others configure them)."""
        return [name for name, field in cls.model_fields.items() if field.annotation is str]

    def inputs(self) -> dict[str, TopicKind]:
        """Input topic name -> which stream of the contract it carries."""
        return {
            self.purchases: TopicKind.PURCHASES,
            self.usage: TopicKind.USAGE,
            self.tickets: TopicKind.TICKETS,
            self.payments: TopicKind.PAYMENTS,
        }

    @staticmethod
    def dead_letter(topic: str) -> str:
        return f"{topic}.dlq"


KAFKA_SSL_PROTOCOLS = ("SSL", "SASL_SSL")
KAFKA_SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")


class KafkaSettings(Frozen):
    """How every Kafka client of the project connects (stream/kafka/clients.py): the worker,
    its alert ledger and every command. Secrets are SecretStr: never printed."""

    #: host:port[,host:port...]; the older top-level ``kafka_bootstrap`` sets the same thing.
    bootstrap: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    #: OAUTHBEARER: the token is read from this file at each new connection (a sidecar
    #: refreshes it), or printed on stdout by this command: a string runs in a shell
    #: (/bin/sh -c: `curl ... | jq -r .access_token` works), a list of strings as argv without one.
    sasl_oauth_token_file: Path | None = None
    sasl_oauth_token_command: str | list[str] | None = None
    #: CA bundle (PEM) the brokers' certificates are checked against (unset: the system's).
    ssl_cafile: Path | None = None
    #: A client certificate and its key (PEM), for clusters that authenticate clients by TLS.
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True
    client_id: str = "healthscore"

    @model_validator(mode="after")
    def _complete(self) -> "KafkaSettings":
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def problems(self) -> list[str]:
        """What is missing or contradictory, each naming the setting to fix."""
        problems = []
        uses_sasl = self.security_protocol in KAFKA_SASL_PROTOCOLS
        sasl_set = [name for name in ("sasl_mechanism", "sasl_username", "sasl_password", "sasl_oauth_token_file", "sasl_oauth_token_command") if getattr(self, name) is not None]
        ssl_set = [name for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile") if getattr(self, name) is not None]
        if not uses_sasl and sasl_set:
            problems.append(f"kafka.{sasl_set[0]} is set but kafka.security_protocol is {self.security_protocol}: use SASL_SSL (or SASL_PLAINTEXT)")
        if self.security_protocol not in KAFKA_SSL_PROTOCOLS and ssl_set:
            problems.append(f"kafka.{ssl_set[0]} is set but kafka.security_protocol is {self.security_protocol}: use SSL or SASL_SSL")
        if uses_sasl and self.sasl_mechanism is None:
            problems.append(f"kafka.sasl_mechanism is required with security_protocol {self.security_protocol} (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER)")
        if self.sasl_mechanism == "OAUTHBEARER":
            command = self.sasl_oauth_token_command
            if isinstance(command, list) and (not command or not all(part.strip() for part in command)):
                problems.append("kafka.sasl_oauth_token_command as a list needs a program and no empty argument")
            if isinstance(command, str) and not command.strip():
                problems.append("kafka.sasl_oauth_token_command is empty: give the command that prints the token")
            if (self.sasl_oauth_token_file is None) == (self.sasl_oauth_token_command is None):
                problems.append("kafka.sasl_mechanism OAUTHBEARER takes its token from kafka.sasl_oauth_token_file or kafka.sasl_oauth_token_command: set one")
        elif uses_sasl and self.sasl_mechanism is not None:
            for name in ("sasl_username", "sasl_password"):
                if getattr(self, name) is None:
                    problems.append(f"kafka.{name} is required with sasl_mechanism {self.sasl_mechanism} (HEALTHSCORE_KAFKA__{name.upper()})")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            problems.append("kafka.ssl_certfile and kafka.ssl_keyfile go together: set both for a client certificate, or neither")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "sasl_oauth_token_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                problems.append(f"kafka.{name}: {path} is not a file")
        return problems


def _check_weights(weights: dict[str, float]) -> dict[str, float]:
    unknown = sorted(set(weights) - set(COMPONENTS))
    if unknown:
        raise ValueError(f"unknown component(s) {unknown}; known: {list(COMPONENTS)}")
    negative = sorted(name for name, weight in weights.items() if not weight >= 0)
    if negative:
        raise ValueError(f"weight of {negative} is negative")
    if sum(weights.values()) <= 0:
        raise ValueError("at least one weight must be positive")
    return weights


class SegmentSettings(Frozen):
    """Weights for the customers of one plan (``subscription.updated`` data.plan)."""

    weights: dict[str, float]

    @field_validator("weights")
    @classmethod
    def _weights_valid(cls, weights: dict[str, float]) -> dict[str, float]:
        return _check_weights(weights)


class BgNbdSettings(Frozen):
    """Fitted BG/NBD parameters, as printed by ``healthscore fit-bgnbd``."""

    r: float = Field(gt=0)
    alpha: float = Field(gt=0)
    a: float = Field(gt=0)
    b: float = Field(gt=0)
    time_unit: Literal["day", "week"] = "day"


Finite = Annotated[float, Field(allow_inf_nan=False, ge=-1e6, le=1e6)]


class ChurnRiskSettings(Frozen):
    """A churn model `healthscore calibrate` fitted (docs/model.md, "Calibrated churn risk"):
    churn_risk becomes the probability of churning within ``horizon_days``."""

    horizon_days: float = Field(gt=0, le=3650)
    intercept: Finite
    #: One coefficient per feature of scoring.churn.FEATURES.
    coefficients: dict[str, Finite]
    #: What it was fitted on, for the record.
    fitted_at: str = ""
    as_of: str = ""
    customers: int = Field(0, ge=0)
    churned: int = Field(0, ge=0)

    @field_validator("coefficients")
    @classmethod
    def _every_feature(cls, coefficients: dict[str, float]) -> dict[str, float]:
        if set(coefficients) != set(FEATURES):
            raise ValueError(f"one coefficient per feature, no other: {list(FEATURES)}; got {sorted(coefficients)}")
        return coefficients

    def model(self) -> ChurnModel:
        return ChurnModel(self.intercept, tuple(self.coefficients[name] for name in FEATURES), self.horizon_days)


class ScoringSettings(Frozen):
    weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    segments: dict[str, SegmentSettings] = Field(default_factory=dict)
    healthy_min: float = Field(50.0, ge=0, le=100)
    at_risk_min: float = Field(35.0, ge=0, le=100)
    usage_half_life_days: float = Field(7.0, gt=0)
    key_features: tuple[str, ...] = ()
    purchase_half_life_days: float = Field(45.0, gt=0)
    purchase_outlook_days: float = Field(30.0, gt=0)
    expected_purchases_midpoint: float = Field(1.0, gt=0)
    support_target_resolution_hours: float = Field(48.0, gt=0)
    sentiment_half_life_days: float = Field(90.0, gt=0)
    survey_response_days: float = Field(14.0, gt=0, le=365)
    unanswered_survey_points: float = Field(25.0, ge=0, le=100)
    relationship_half_life_days: float = Field(30.0, gt=0, le=3650)
    #: Fewer distinct days with events than this: held below healthy_min, confidence scaled down.
    healthy_min_active_days: int = Field(3, ge=0, le=365)
    bgnbd: BgNbdSettings | None = None
    churn_risk: ChurnRiskSettings | None = None

    @field_validator("weights")
    @classmethod
    def _weights_valid(cls, weights: dict[str, float]) -> dict[str, float]:
        return _check_weights(weights)

    @model_validator(mode="after")
    def _bands_ordered(self) -> "ScoringSettings":
        if self.at_risk_min >= self.healthy_min:
            raise ValueError(f"at_risk_min ({self.at_risk_min}) must be below healthy_min ({self.healthy_min})")
        return self

    def parameters(self, user_hash_key: bytes | None = None) -> ScoringParameters:
        """The model's parameters; ``user_hash_key`` from privacy.hash_key (Settings.model_parameters)."""
        bgnbd = self.bgnbd
        return ScoringParameters(
            **({"user_hash_key": user_hash_key} if user_hash_key is not None else {}),
            weights=dict(self.weights),
            segment_weights={plan: dict(segment.weights) for plan, segment in self.segments.items()},
            healthy_min=self.healthy_min,
            at_risk_min=self.at_risk_min,
            healthy_min_active_days=self.healthy_min_active_days,
            usage_half_life_days=self.usage_half_life_days,
            key_features=tuple(self.key_features),
            purchase_half_life_days=self.purchase_half_life_days,
            bgnbd=BgNbdParameters(bgnbd.r, bgnbd.alpha, bgnbd.a, bgnbd.b) if bgnbd else None,
            bgnbd_time_unit_days=7.0 if bgnbd and bgnbd.time_unit == "week" else 1.0,
            purchase_outlook_days=self.purchase_outlook_days,
            expected_purchases_midpoint=self.expected_purchases_midpoint,
            support_target_resolution_hours=self.support_target_resolution_hours,
            sentiment_half_life_days=self.sentiment_half_life_days,
            survey_response_days=self.survey_response_days,
            unanswered_survey_points=self.unanswered_survey_points,
            relationship_half_life_days=self.relationship_half_life_days,
            churn_model=self.churn_risk.model() if self.churn_risk is not None else None,
        )


class ExpansionSettings(Frozen):
    """Who is listed by GET /customers/expansion (scoring.kpis.expansion_growth): healthy
    customers scored with at least ``min_confidence`` whose activity of the last 30 days is at
    least ``min_usage_growth`` (0.2: 20 %) above the 30 days before."""

    min_confidence: float = Field(0.5, ge=0, le=1)
    min_usage_growth: float = Field(0.2, gt=0, le=1000)

    def rule(self) -> tuple[float, float]:
        return (self.min_confidence, self.min_usage_growth)


class AcquisitionSpend(Frozen):
    """Acquisition (marketing and sales) spend over [start, end], dates inclusive, for the CAC
    and LTV/CAC of ``healthscore kpis``."""

    start: date
    end: date
    amount: float = Field(ge=0, le=1e15, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> "AcquisitionSpend":
        if self.end < self.start:
            raise ValueError(f"end ({self.end}) is before start ({self.start})")
        return self


class KpiSettings(Frozen):
    """Inputs of the period KPIs that events do not carry."""

    #: Spend per period; `healthscore kpis` sums the entries lying within its --from/--to
    #: (--acquisition-spend overrides).
    acquisition_spend: tuple[AcquisitionSpend, ...] = ()
    #: Acquisition spend over each trailing fleet period (fleet_period_days), exported as
    #: healthscore_fleet_acquisition_spend for the LTV/CAC panel and rule; None: not exported.
    fleet_acquisition_spend: float | None = Field(None, ge=0, le=1e15, allow_inf_nan=False)

    def spend_within(self, first: date, last: date) -> float | None:
        inside = [entry.amount for entry in self.acquisition_spend if first <= entry.start and entry.end <= last]
        return sum(inside) if inside else None


class ActionSettings(Frozen):
    """One step of the playbook: alerts of ``rule`` (and of ``severity`` and ``band`` when
    set) carry this action, its owner's role and a due time ``due_hours`` after they are raised."""

    rule: str
    severity: Literal["warning", "critical", "digest"] | None = None
    band: Literal["healthy", "at_risk", "critical"] | None = None
    action: str = Field(min_length=1, max_length=500)
    owner: str = Field(min_length=1, max_length=64)
    due_hours: float = Field(gt=0, le=8760)

    @field_validator("rule")
    @classmethod
    def _known_rule(cls, rule: str) -> str:
        if rule not in (*RULES, "digest"):
            raise ValueError(f"unknown rule {rule!r}; known: {[*RULES, 'digest']}")
        return rule


class AlertSettings(Frozen):
    """Thresholds of the alert rules (docs/alerts.md); each rule can be switched off."""

    band_downgrade: bool = True
    hysteresis_points: float = Field(5.0, ge=0, le=50)
    sharp_drop: bool = False
    sharp_drop_points: float = Field(15.0, gt=0, le=100)
    sharp_drop_window_days: float = Field(7.0, gt=0, le=90)
    purchase_activity: bool = True
    purchase_activity_min_expected: float = Field(0.2, gt=0)
    purchase_lapse_gap_multiplier: float = Field(4.0, ge=1, le=100)
    purchase_lapse_min_days: float = Field(14.0, gt=0, le=3650)
    purchase_lapse_min_purchases: int = Field(3, ge=2, le=1000)
    detractor: bool = True
    payment_trouble: bool = False
    payment_failures_30d: int = Field(2, ge=1)
    payment_overdue_days: float = Field(7.0, ge=0)
    cancellation: bool = True
    time_band_gap_multiplier: float = Field(2.0, ge=1)
    silence: bool = True
    silence_gap_multiplier: float = Field(4.0, ge=1)
    silence_min_days: float = Field(3.0, gt=0)
    silence_min_active_days: int = Field(3, ge=2)
    cooldown_hours: float = Field(24.0, ge=0)
    max_alerts_per_customer_30d: int = Field(1, ge=0)
    #: At most this many alerts a day across the fleet (0: no limit), spent per partition
    #: (scoring/fleet_budget.py); alerts raised at the same moment go riskiest first.
    max_alerts_per_day: int = Field(0, ge=0)
    digest_rules: list[str] = []
    #: The playbook (docs/alerts.md, "Actions"); setting it replaces the whole default list.
    actions: list[ActionSettings] = Field(default_factory=lambda: [ActionSettings(**dataclasses.asdict(action)) for action in DEFAULT_ACTIONS])

    @field_validator("digest_rules")
    @classmethod
    def _known_rules(cls, rules: list[str]) -> list[str]:
        unknown = sorted(set(rules) - set(RULES))
        if unknown:
            raise ValueError(f"unknown rule(s) {unknown}; known: {list(RULES)}")
        return rules

    def parameters(self) -> AlertParameters:
        return AlertParameters(
            **{**self.model_dump(exclude={"max_alerts_per_day", "actions"}), "digest_rules": tuple(self.digest_rules)},
            actions=tuple(Action(**action.model_dump()) for action in self.actions),
        )


def private_address(host: str) -> bool:
    """Whether an IP address is one a delivery must not reach unless allowed: loopback,
    link-local (169.254.169.254, the cloud metadata service), private, reserved, multicast."""
    address = ipaddress.ip_address(host.strip("[]"))
    return (address.is_private or address.is_loopback or address.is_link_local or address.is_reserved
            or address.is_multicast or address.is_unspecified)


def _webhook_secret_problem(secret: str) -> str | None:
    """Standard Webhooks secrets are "whsec_" and base64 of 24 to 64 random bytes."""
    import base64
    import binascii

    if not secret.startswith("whsec_"):
        return 'must start with "whsec_"'
    try:
        raw = base64.b64decode(secret[len("whsec_"):], validate=True)
    except (binascii.Error, ValueError):
        return 'is not "whsec_" followed by base64'
    if not 24 <= len(raw) <= 64:
        return f"decodes to {len(raw)} bytes; Standard Webhooks secrets are 24 to 64 random bytes"
    return None


class EndpointSettings(Frozen):
    """One place alerts are delivered to (`healthscore deliver`), and which alerts."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=64)
    kind: Literal["webhook", "slack"]
    #: A secret: a Slack incoming-webhook URL carries its token (never logged or shown).
    url: SecretStr
    #: Webhooks: the Standard Webhooks secret ("whsec_" + base64); or from the environment,
    #: HEALTHSCORE_DELIVERY_SECRET_<NAME> (the name upper-cased, - as _).
    secret: SecretStr | None = None
    #: Filters (empty: all): which rules, severities, bands and plans (customer segments, from
    #: subscription.updated data.plan), and the least churn risk.
    rules: list[str] = []
    severities: list[Literal["warning", "critical", "digest"]] = []
    bands: list[Literal["healthy", "at_risk", "critical"]] = []
    min_churn_risk: float = Field(0.0, ge=0, le=1)
    plans: list[str] = []
    #: At most this many deliveries a minute to this endpoint (0: no limit).
    max_per_minute: int = Field(0, ge=0, le=6000)
    #: http:// is refused unless this is true (a receiver on the same host, a test).
    allow_insecure_http: bool = False
    #: Loopback, link-local (the cloud metadata service) and private addresses are refused,
    #: as the URL's host or as what its name resolves to, unless this is true.
    allow_private_network: bool = False

    @model_validator(mode="after")
    def _safe_url(self) -> "EndpointSettings":
        url = self.url.get_secret_value()
        where = f"delivery endpoint {self.name!r}: url"
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"{where} must be an https:// URL with a host")
        if parts.scheme == "http" and not self.allow_insecure_http:
            raise ValueError(f"{where} is http://: use https://, or set allow_insecure_http = true for this endpoint")
        if parts.username or parts.password:
            raise ValueError(f"{where} carries credentials: use the endpoint's secret instead")
        try:
            literal = private_address(parts.hostname)
        except ValueError:
            literal = parts.hostname == "localhost" or parts.hostname.endswith(".localhost")
        if literal and not self.allow_private_network:
            raise ValueError(f"{where} is a loopback, link-local or private address: set allow_private_network = true for this endpoint if that is meant")
        if self.kind == "webhook":
            secret = self.secret_value()
            problem = _webhook_secret_problem(secret) if secret else None
            if problem:
                raise ValueError(f"delivery endpoint {self.name!r}: the webhook secret {problem}")
        return self

    def url_value(self) -> str:
        return self.url.get_secret_value()

    def secret_value(self) -> str | None:
        from_environment = os.environ.get(f"HEALTHSCORE_DELIVERY_SECRET_{self.name.upper().replace('-', '_')}")
        if from_environment:
            return from_environment
        return self.secret.get_secret_value() if self.secret is not None else None


_PATH = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$"


def bearer_tokens(tokens: list[SecretStr], tokens_file: Path | None) -> list[str]:
    """The accepted bearer tokens: those set, and the non-empty lines of the file."""
    found = [token.get_secret_value() for token in tokens]
    if tokens_file is not None and tokens_file.is_file():
        found += [line.strip() for line in tokens_file.read_text().splitlines() if line.strip()]
    return [token for token in found if token]


class IngestSettings(Frozen):
    """`healthscore ingest`: events from Stripe, Zendesk, Segment and our own contract over
    HTTP into the input topics (docs/ingest.md). Credentials are secrets, several at once for
    rotation; a source without its credential is not served."""

    host: str = "127.0.0.1"
    port: int = Field(6068, ge=1, le=65535)
    #: Bearer tokens for POST /v1/events (our contract), and/or a file of them, one per line.
    api_tokens: list[SecretStr] = []
    api_tokens_file: Path | None = None
    #: Segment write keys (HTTP basic auth user, as Segment's SDKs send it).
    segment_write_keys: list[SecretStr] = []
    #: Stripe endpoint signing secrets (whsec_...), and Zendesk webhook signing secrets.
    stripe_webhook_secrets: list[SecretStr] = []
    zendesk_webhook_secrets: list[SecretStr] = []
    #: Where the customer id is: "customer" (the Stripe customer id) or "metadata.<key>" (of
    #: the object, or of the invoice's subscription details).
    stripe_customer_id_from: str = Field("customer", pattern=r"^(customer|metadata\.[A-Za-z0-9_-]{1,64})$")
    #: A dotted path into the Zendesk payload ("detail.organization_id": Zendesk's organization id).
    zendesk_customer_id_from: str = Field("detail.organization_id", pattern=_PATH, max_length=128)
    #: A dotted path into a Segment call for the account ("context.groupId": Segment's B2B spec).
    segment_account_from: str = Field("context.groupId", pattern=_PATH, max_length=128)
    #: Track events that are sessions (usage.session); any other track is a feature use.
    segment_session_events: list[str] = ["Session Started", "Application Opened", "Signed In"]
    #: Track event name -> the feature it counts as (unlisted names count as themselves).
    segment_features: dict[str, str] = {}
    #: Largest request body accepted (413 beyond).
    max_body_bytes: int = Field(1_048_576, ge=1024, le=33_554_432)
    #: How old a signed webhook's timestamp may be (Stripe's default tolerance is 300 s).
    signature_tolerance_seconds: int = Field(300, ge=10, le=86_400)

    @model_validator(mode="after")
    def _safe_to_serve(self) -> "IngestSettings":
        if self.api_tokens_file is not None and not self.api_tokens_file.is_file():
            raise ValueError(f"api_tokens_file: {self.api_tokens_file} is not a file")
        for where, tokens in (("api_tokens", self.api_tokens), ("segment_write_keys", self.segment_write_keys),
                              ("stripe_webhook_secrets", self.stripe_webhook_secrets), ("zendesk_webhook_secrets", self.zendesk_webhook_secrets)):
            if any(len(token.get_secret_value()) < 16 for token in tokens):
                raise ValueError(f"{where}: every entry must be at least 16 characters")
        short = [token for token in self.all_api_tokens() if len(token) < MIN_TOKEN_CHARACTERS]
        if short:
            raise ValueError(f"api_tokens: bearer tokens must be at least {MIN_TOKEN_CHARACTERS} characters")
        credentials = self.all_api_tokens() or self.segment_write_keys or self.stripe_webhook_secrets or self.zendesk_webhook_secrets
        if not credentials and not is_loopback(self.host):
            raise ValueError(
                f"host {self.host!r} is not a loopback address and no credentials are configured (api_tokens, "
                "segment_write_keys, stripe_webhook_secrets, zendesk_webhook_secrets): set them first"
            )
        return self

    def all_api_tokens(self) -> list[str]:
        return bearer_tokens(self.api_tokens, self.api_tokens_file)


class DeliverySettings(Frozen):
    """`healthscore deliver`: alerts from churn-alerts to webhooks and Slack (docs/delivery.md)."""

    endpoints: list[EndpointSettings] = []
    #: The consumer group of the delivery processes (its own: it never slows the workers).
    group_id: str = "healthscore-deliver"
    #: Waits before each retry, in seconds (Standard Webhooks' schedule by default), each with
    #: up to 20 % jitter and at most max_retry_delay_seconds; Retry-After is honoured too.
    retry_schedule_seconds: list[float] = [5, 300, 1800, 7200, 18000, 36000, 36000]
    max_retry_delay_seconds: float = Field(36000.0, gt=0)
    #: How long one alert may wait on one endpoint before it is parked (delivery_failed topic):
    #: an endpoint that keeps failing must not hold the others back.
    max_wait_per_alert_seconds: float = Field(60.0, gt=0)
    request_timeout_seconds: float = Field(10.0, gt=0, le=300)
    #: A link to the customer in Slack messages, e.g. "https://crm.example.com/customers/{customer_id}"
    #: (the id is URL-encoded into it).
    customer_url_template: str | None = None
    #: /metrics of the delivery process (no customer data: counts by endpoint).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(6067, ge=1, le=65535)

    @field_validator("customer_url_template")
    @classmethod
    def _one_placeholder(cls, template: str | None) -> str | None:
        if template is None:
            return None
        try:
            example = template.format(customer_id="x")
        except (KeyError, IndexError, ValueError, AttributeError) as error:
            raise ValueError(f"takes one placeholder, {{customer_id}}: {error}") from None
        if not example.startswith("https://"):
            raise ValueError("must be an https:// URL")
        return template

    @field_validator("endpoints")
    @classmethod
    def _unique_and_complete(cls, endpoints: list[EndpointSettings]) -> list[EndpointSettings]:
        names = [endpoint.name for endpoint in endpoints]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"endpoint names must be unique: {duplicated}")
        for endpoint in endpoints:
            unknown = sorted(set(endpoint.rules) - set(RULES) - {"digest"})
            if unknown:
                raise ValueError(f"endpoint {endpoint.name!r}: unknown rule(s) {unknown}; known: {[*RULES, 'digest']}")
            if endpoint.kind == "webhook" and not endpoint.secret_value():
                raise ValueError(
                    f"endpoint {endpoint.name!r} is a webhook without a secret: set its secret, or "
                    f"HEALTHSCORE_DELIVERY_SECRET_{endpoint.name.upper().replace('-', '_')}"
                )
        return endpoints

    def endpoint(self, name: str) -> EndpointSettings:
        for endpoint in self.endpoints:
            if endpoint.name == name:
                return endpoint
        raise ValueError(f"no endpoint named {name!r} in [[delivery.endpoints]] (known: {[e.name for e in self.endpoints]})")


class PrivacySettings(Frozen):
    """Personal data: erasure and what is kept (docs/privacy.md)."""

    #: The secret of the keyed hashes that stand for customer ids in the erasure audit trail
    #: (HEALTHSCORE_PRIVACY__HASH_KEY; at least 16 characters). `healthscore erase` needs it.
    hash_key: SecretStr | None = None
    #: An erased customer's events are refused for ever (until `healthscore erase --allow-return`);
    #: with a quarantine, those that occurred this many days after the erasure are applied again.
    erasure_quarantine_days: float = Field(0.0, ge=0, le=3650)

    @field_validator("hash_key")
    @classmethod
    def _long_enough(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and len(key.get_secret_value()) < 16:
            raise ValueError("privacy.hash_key must be at least 16 characters (a random secret, e.g. `openssl rand -hex 32`)")
        return key


class RocksDbSettings(Frozen):
    """The customer-state store on local disk (``state_store = "rocksdb"``, stream/state/store.py).

    Memory it takes: the block cache (one, shared by every partition) plus, per partition owned
    or kept as a standby, up to ``max_write_buffers`` write buffers of ``write_buffer_mb``."""

    #: Blocks of records read recently, kept in memory for every partition's database together.
    block_cache_mb: int = Field(256, ge=8, le=65_536)
    #: Each partition's in-memory write buffer before it is written to disk as a file.
    write_buffer_mb: int = Field(16, ge=1, le=1024)
    #: Write buffers a partition may hold while older ones are written out.
    max_write_buffers: int = Field(2, ge=2, le=16)
    #: A partition's local copy last written longer ago than this is deleted and the partition read
    #: back from its changelog's start: the changelog may have compacted away tombstones (erased
    #: customers) written since. Keep it below the changelog's delete.retention.ms (broker default 24 h).
    max_local_age_hours: float = Field(20.0, gt=0, le=24 * 365)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HEALTHSCORE_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        hide_input_in_errors=True,
    )

    app_id: str = "healthscore"
    #: The same as kafka.bootstrap (kept for existing configs and HEALTHSCORE_KAFKA_BOOTSTRAP).
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka: KafkaSettings = KafkaSettings()
    partitions: int = Field(8, ge=1, le=1024)
    #: redis://host:port/db, or rediss:// for TLS; without a password (redis_password).
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_key_prefix: str = "healthscore"
    #: The ACL user and its password (a secret, never printed); none: the default user.
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    #: With rediss://: the CA bundle (PEM) the server's certificate is checked against (unset:
    #: the system's), a client certificate and key for servers that ask for one, and whether
    #: the certificate must name the host.
    redis_tls_cafile: Path | None = None
    redis_tls_certfile: Path | None = None
    redis_tls_keyfile: Path | None = None
    redis_tls_check_hostname: bool = True
    #: A Redis Cluster (or a clustered managed Redis): a customer's keys share one slot
    #: ({customer id} hash tags) and the writes are per-key commands, not one script.
    redis_cluster: bool = False
    web_host: str = "127.0.0.1"
    web_port: int = Field(6066, ge=1, le=65535)
    #: Bearer tokens accepted on the /customers/... routes (none: no authentication, and then
    #: the API is served only on a loopback address unless allow_unauthenticated_api).
    api_tokens: list[SecretStr] = []
    #: A file with more tokens, one per line (a mounted secret).
    api_tokens_file: Path | None = None
    allow_unauthenticated_api: bool = False
    #: A bearer token /metrics then asks for (none: /metrics is open).
    metrics_token: SecretStr | None = None
    #: HTTPS on the web port: the certificate (chain, PEM) and its private key (PEM). Both or
    #: neither; with them the port answers HTTPS only (probes too: scheme HTTPS).
    web_tls_certfile: Path | None = None
    web_tls_keyfile: Path | None = None
    data_dir: Path = PROJECT_ROOT / ".data" / "worker"
    topics: TopicNames = TopicNames()
    privacy: PrivacySettings = PrivacySettings()
    delivery: DeliverySettings = DeliverySettings()
    ingest: IngestSettings = Field(default_factory=lambda: IngestSettings())
    max_future_skew_seconds: int = Field(300, ge=0)
    dedup_capacity: int = Field(32, ge=1, le=4096)
    log_level: str = "info"
    #: "text" for people at a terminal; "json": one JSON object per line, for log pipelines.
    log_format: Literal["text", "json"] = "text"
    #: A Kafka client error repeated while a broker is away is logged once, then once per this
    #: many seconds with the count of those held back (stream/worker/quiet_outages.py).
    log_repeat_interval_seconds: float = Field(30.0, gt=0, le=3600)
    scoring: ScoringSettings = ScoringSettings()
    alerts: AlertSettings = AlertSettings()
    expansion: ExpansionSettings = ExpansionSettings()
    kpis: KpiSettings = KpiSettings()
    #: How often consumed offsets are committed; a crash reprocesses at most this much (idempotently).
    commit_interval_seconds: float = Field(2.8, gt=0)
    #: Offsets are also committed once this many events were processed since the last commit.
    commit_every_events: int = Field(25_000, ge=1)
    #: When a changed customer record goes to the state changelog: once per offset commit
    #: ("per_commit": fewer changelog records, less broker work, shorter restarts), or once per
    #: batch ("per_batch": after a crash, fewer events are applied and their scores published again).
    changelog_writes: Literal["per_batch", "per_commit"] = "per_commit"
    #: An input record on a partition its key's murmur2 hash does not give (a producer with
    #: another partitioner) is sent to the right partition ("forward"), or applied where it is.
    misrouted_events: Literal["forward", "process_in_place"] = "forward"
    #: An event of a type the contract does not know (a producer added one): to the dead-letter
    #: topic with reason unknown_type, or counted (healthscore_events_total{outcome="unknown_type"})
    #: and skipped, so a new type upstream does not fill the dead-letter topic and page someone.
    unknown_event_types: Literal["dead_letter", "count_and_skip"] = "dead_letter"
    #: Exit reason codes counted in healthscore_cancellations_total{reason} (others: "other").
    cancellation_reasons: list[Annotated[str, Field(pattern=r"^[a-z0-9_]{1,40}$")]] = Field(
        default_factory=lambda: list(DEFAULT_CANCELLATION_REASONS), max_length=50
    )
    #: Longest a partition's records wait while a co-partitioned input partition has unread records on
    #: the broker and none buffered, so that a backlog is applied in event-time order like the replay
    #: (stream/kafka/event_time.py); 0 merges only what is buffered. A partition read to its end never holds.
    max_task_idle_seconds: float = Field(2.0, ge=0, le=60)
    #: /healthz fails when the apply agent has not finished a batch for this long while records
    #: wait for it (an orchestrator then restarts the pod); a recovery or rebalance does not count.
    agent_stall_seconds: float = Field(300.0, ge=10, le=86400)
    #: How long the group waits for a worker that vanished (crash, SIGKILL) before moving its partitions.
    session_timeout_seconds: float = Field(10.0, ge=6, le=300)
    #: A customer without an event for this long is evicted at the next sweep: its record
    #: deleted (a changelog tombstone) and its Redis keys with it (0: never). In event time.
    state_ttl_days: float = Field(730.0, ge=0)
    #: How often each worker rescans its customers at the current time (inactivity, silence).
    sweep_interval_seconds: float = Field(3600.0, ge=1)
    #: A sweep publishes a customer's score only if its band changed or it moved at least this much.
    sweep_min_score_change: float = Field(1.0, ge=0)
    #: A sweep (the worker's, and `healthscore replay`'s and `backtest`'s) rescores only the customers
    #: that may need it: those with an event since the last sweep and those whose moment came
    #: (scoring/due.py); it publishes what rescoring every customer would. false: every customer at
    #: every sweep (the full scan), for comparison.
    sweep_due_index: bool = True
    #: Event time between sweeps in `healthscore replay` and `backtest` (each costs one rescoring per customer).
    replay_sweep_interval_seconds: float = Field(86400.0, ge=0)
    #: Which scores a sweep writes in `healthscore replay`: "band_changes" (a score that time alone
    #: moved within its band is not written: alerts and band changes are as with every score written,
    #: and the replay runs several times faster) or "as_the_worker" (also every move of
    #: sweep_min_score_change points, as the worker publishes). `backtest` always reads them as the worker.
    replay_sweep_scores: Literal["band_changes", "as_the_worker"] = "band_changes"
    #: How often fleet KPIs and consumer lag are recomputed for /metrics.
    fleet_metrics_interval_seconds: float = Field(60.0, ge=0.5)
    #: Trailing period of the fleet KPIs (churn, retention, NPS, ...).
    fleet_period_days: int = Field(30, ge=1, le=60)
    #: Customers rescored per sweep step before the stream gets its turn again.
    sweep_chunk_size: int = Field(500, ge=1, le=100_000)
    #: Alerts read back from the end of each alerts partition on assignment (and as many remembered
    #: per partition while running), to never publish one twice.
    alert_tail_messages: int = Field(10_000, ge=0)
    #: Most records handed to the agent at once; bigger batches amortise more, smaller ones cut latency.
    batch_max_events: int = Field(2_000, ge=1, le=100_000)
    #: Records buffered between the consumer and the agent (Faust's stream_buffer_maxsize). Fetching a
    #: partition pauses near this, so one fetch (broker_max_poll_records) must stay well below it.
    stream_buffer_events: int = Field(20_000, ge=100, le=1_000_000)
    #: Most records one fetch returns (Faust's broker_max_poll_records).
    fetch_max_records: int = Field(2_000, ge=1, le=100_000)
    #: Longest the broker holds a fetch that finds no new record (Faust fixes 1.5 s). aiokafka has one
    #: fetch per broker in flight: in a backlog, a fetch for partitions already read to their end held
    #: back the next records of all the others for that long.
    fetch_max_wait_seconds: float = Field(0.1, ge=0.01, le=1.5)
    #: Segment size of the state changelog (set when the worker creates it): compaction only
    #: cleans closed segments, and restart time grows with what is left to read back.
    changelog_segment_bytes: int = Field(16 * 1024 * 1024, ge=1024 * 1024)
    #: Compaction runs on the changelog within this many days of a write (max.compaction.lag.ms),
    #: so an erased or evicted customer's older state records are gone in bounded time.
    changelog_max_compaction_lag_days: float = Field(7.0, gt=0, le=365)
    #: Producer batch per partition (Faust's producer_max_batch_size); below the broker's message.max.bytes.
    producer_batch_bytes: int = Field(512 * 1024, ge=16 * 1024, le=1024 * 1024)
    #: How long the producer waits to fill a batch (Faust's producer_linger).
    producer_linger_seconds: float = Field(0.005, ge=0, le=1)
    #: Codec of the producer's batches (scores, alerts, changelog): the broker stores and serves
    #: fewer bytes for some of the worker's CPU (config/healthscore.toml has the figures).
    producer_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    #: How often the latest scores go to Redis: a customer scored twice in between is written once.
    redis_flush_interval_seconds: float = Field(0.5, gt=0, le=60)
    #: While the worker works through a backlog (its batches are full), a flush to Redis starts
    #: this often instead: the scores are late anyway, and most are superseded within seconds.
    redis_backlog_flush_interval_seconds: float = Field(2.0, gt=0, le=300)
    #: Other workers that also read each state partition's changelog (Faust's table_standby_replicas).
    #: With the in-memory store such a copy is never used (a partition that moves is read back from
    #: its changelog's start, and the copy is dropped after each recovery), so 0: it costs only CPU.
    standby_replicas: int = Field(0, ge=0, le=16)
    #: Where the customer records live: "memory" (a dict; a restart reads the whole changelog back)
    #: or "rocksdb" (one RocksDB database per partition under data_dir: memory bounded by its cache,
    #: and a restart reads back only the changelog written since the last offset commit). RocksDB is
    #: the choice for production and for millions of customers (docs/deploy.md).
    state_store: Literal["memory", "rocksdb"] = "memory"
    rocksdb: RocksDbSettings = RocksDbSettings()
    #: Run each event, and the sweep's due-time search, through the Rust kernel (native/,
    #: scoring/kernel.py) where it is built and computes the configured model (no BG/NBD);
    #: `replay` runs all of it there (steps, sweeps, search) when the due index is on;
    #: false: always the Python model.
    native_kernel: bool = True

    @model_validator(mode="before")
    @classmethod
    def _one_bootstrap(cls, data: Any) -> Any:
        """``kafka_bootstrap`` and ``kafka.bootstrap`` are one setting: either sets both; two
        different values are an error rather than one silently winning."""
        if not isinstance(data, dict):
            return data
        kafka = data.get("kafka")
        kafka = dict(kafka) if isinstance(kafka, dict) else (kafka.model_dump() if isinstance(kafka, KafkaSettings) else {})
        old, new = data.get("kafka_bootstrap"), kafka.get("bootstrap")
        if old is not None and new is not None and old != new:
            raise ValueError(
                f"kafka_bootstrap ({old}) and kafka.bootstrap ({new}) disagree: they are one setting, set only one"
                " (HEALTHSCORE_KAFKA_BOOTSTRAP or HEALTHSCORE_KAFKA__BOOTSTRAP)"
            )
        bootstrap = new if new is not None else old
        if bootstrap is None:
            return data
        return {**data, "kafka_bootstrap": bootstrap, "kafka": {**kafka, "bootstrap": bootstrap}}

    @model_validator(mode="after")
    def _api_locked_down(self) -> "Settings":
        if self.api_tokens_file is not None and not self.api_tokens_file.is_file():
            raise ValueError(f"api_tokens_file: {self.api_tokens_file} is not a file")
        short = [where for where, token in self._named_tokens() if len(token) < MIN_TOKEN_CHARACTERS]
        if short:
            raise ValueError(
                f"{', '.join(short)}: bearer tokens must be at least {MIN_TOKEN_CHARACTERS} characters "
                "(random, e.g. `openssl rand -hex 32`): a short one can be guessed"
            )
        if not self.all_api_tokens() and not self.allow_unauthenticated_api and not is_loopback(self.web_host):
            raise ValueError(
                f"web_host {self.web_host!r} is not a loopback address and no api_tokens (or api_tokens_file) are "
                "configured: set tokens, or allow_unauthenticated_api = true to serve customer data to anyone who can reach it"
            )
        return self

    @model_validator(mode="after")
    def _redis_connection_complete(self) -> "Settings":
        url = urlsplit(self.redis_url)
        if url.scheme not in ("redis", "rediss"):
            raise ValueError(f"redis_url must start with redis:// or rediss:// (TLS), not {url.scheme or 'nothing'}://")
        if url.password:
            raise ValueError("redis_url carries a password: move it to redis_password (HEALTHSCORE_REDIS_PASSWORD), a secret never printed")
        tls_set = [name for name in ("redis_tls_cafile", "redis_tls_certfile", "redis_tls_keyfile") if getattr(self, name) is not None]
        if tls_set and url.scheme != "rediss":
            raise ValueError(f"{tls_set[0]} is set but redis_url is not rediss://: TLS settings need a rediss:// URL")
        if self.redis_username is not None and self.redis_password is None:
            raise ValueError("redis_username is set but redis_password is not (HEALTHSCORE_REDIS_PASSWORD): an ACL user needs its password")
        if (self.redis_tls_certfile is None) != (self.redis_tls_keyfile is None):
            raise ValueError("redis_tls_certfile and redis_tls_keyfile go together: set both for a client certificate, or neither")
        for name in tls_set:
            if not getattr(self, name).is_file():
                raise ValueError(f"{name}: {getattr(self, name)} is not a file")
        if self.redis_cluster and ("{" in self.redis_key_prefix or "}" in self.redis_key_prefix):
            raise ValueError("redis_key_prefix must not contain { or } with redis_cluster: the customer id is the hash tag")
        return self

    @model_validator(mode="after")
    def _state_store_consistent(self) -> "Settings":
        if self.state_store == "rocksdb" and self.changelog_writes != "per_commit":
            raise ValueError(
                'state_store = "rocksdb" needs changelog_writes = "per_commit": the local store is written with the '
                "changelog at each offset commit, so that it never holds a change the changelog lacks"
            )
        return self

    @model_validator(mode="after")
    def _web_tls_complete(self) -> "Settings":
        if (self.web_tls_certfile is None) != (self.web_tls_keyfile is None):
            raise ValueError("web_tls_certfile and web_tls_keyfile go together: set both for HTTPS, or neither")
        for name in ("web_tls_certfile", "web_tls_keyfile"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: {path} is not a file")
        return self

    def web_ssl_context(self) -> ssl.SSLContext | None:
        """The web server's TLS context, when HTTPS is configured; an unreadable key or
        certificate stops the start here, naming the setting."""
        if self.web_tls_certfile is None or self.web_tls_keyfile is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.web_tls_certfile, self.web_tls_keyfile)
        except (ssl.SSLError, OSError) as error:
            raise SettingsError(f"web_tls_certfile / web_tls_keyfile cannot be loaded: {error}") from None
        return context

    @property
    def state_ttl_ms(self) -> int:
        return int(self.state_ttl_days * 86_400_000)

    def model_parameters(self) -> ScoringParameters:
        """The scoring parameters with the users' fingerprint key (privacy.hash_key, if set)."""
        key = self.privacy.hash_key
        return self.scoring.parameters(key.get_secret_value().encode() if key is not None else None)

    def _named_tokens(self) -> list[tuple[str, str]]:
        """Every bearer token with where it was set (never the token itself in a message)."""
        named = [(f"api_tokens[{index}]", token.get_secret_value()) for index, token in enumerate(self.api_tokens)]
        if self.api_tokens_file is not None and self.api_tokens_file.is_file():
            lines = self.api_tokens_file.read_text().splitlines()
            named += [(f"api_tokens_file line {number}", line.strip()) for number, line in enumerate(lines, 1) if line.strip()]
        if self.metrics_token is not None:
            named.append(("metrics_token", self.metrics_token.get_secret_value()))
        return named

    def all_api_tokens(self) -> list[str]:
        """The accepted bearer tokens: ``api_tokens`` and the lines of ``api_tokens_file``."""
        return bearer_tokens(self.api_tokens, self.api_tokens_file)

    @model_validator(mode="after")
    def _buffer_holds_a_fetch(self) -> "Settings":
        if self.fetch_max_records * 4 > self.stream_buffer_events:
            raise ValueError(
                f"stream_buffer_events ({self.stream_buffer_events}) must be at least 4 x fetch_max_records"
                f" ({self.fetch_max_records}), or a fetch can fill the buffer and stall delivery"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = Path(os.environ.get("HEALTHSCORE_CONFIG", DEFAULT_CONFIG_FILE))
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=config_file))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SettingsError(Exception):
    """A configuration problem, with every bad key named."""


def load_settings(**overrides: Any) -> Settings:
    config_file = Path(os.environ.get("HEALTHSCORE_CONFIG", DEFAULT_CONFIG_FILE))
    if "HEALTHSCORE_CONFIG" in os.environ and not config_file.is_file():
        raise SettingsError(f"HEALTHSCORE_CONFIG points to {config_file}, which is not a file")
    try:
        return Settings(**overrides)
    except ValidationError as error:
        problems = "\n".join(
            f"  {'.'.join(str(part) for part in issue['loc']) or '(top level)'}: {issue['msg']}"
            for issue in error.errors()
        )
        raise SettingsError(f"invalid configuration ({config_file} and HEALTHSCORE_* variables):\n{problems}") from None


def isolated_environment(tag: str, partitions: int, web_port: int, data_dir: Path) -> dict[str, str]:
    """HEALTHSCORE_* variables for a run that shares the broker and Redis but nothing else:
    its own app id (consumer group, changelog), topics, Redis prefix, web port and data.
    Used by the integration tests and the benchmarks; every topic is covered, new ones too."""
    environment = {
        "HEALTHSCORE_APP_ID": f"healthscore-{tag}",
        "HEALTHSCORE_PARTITIONS": str(partitions),
        "HEALTHSCORE_REDIS_KEY_PREFIX": f"hs-{tag}",
        "HEALTHSCORE_WEB_PORT": str(web_port),
        "HEALTHSCORE_DATA_DIR": str(data_dir),
    }
    defaults = TopicNames()
    for field in TopicNames.name_fields():
        environment[f"HEALTHSCORE_TOPICS__{field.upper()}"] = f"{tag}-{getattr(defaults, field)}"
    return environment
