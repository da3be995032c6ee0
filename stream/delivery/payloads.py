"""What an endpoint receives for one alert, and whether it wants it. Pure: no I/O, no clock
(the time a message is sent is passed in)."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import quote

import msgspec
from slack_sdk.models.blocks import ActionsBlock, ButtonElement, ContextBlock, HeaderBlock, MarkdownTextObject, SectionBlock
from standardwebhooks.webhooks import Webhook

from stream.settings import EndpointSettings

#: The Standard Webhooks event type of an alert.
ALERT_RAISED = "healthscore.alert.raised"


class Reason(msgspec.Struct):
    component: str
    change: float


class Alert(msgspec.Struct):
    """What delivery reads of a ``churn-alerts`` message (docs/events.md); the message itself
    is sent as it is."""

    alert_id: str
    customer_id: str
    rule: str
    severity: str
    score: float
    band: str
    churn_risk: float
    previous_score: float | None = None
    reasons: list[Reason] = []
    detail: str = ""
    occurred_at: str = ""
    raised_at: str = ""
    plan: str | None = None
    recommended_action: str | None = None
    action_owner: str | None = None
    action_due_at: str | None = None


_alert = msgspec.json.Decoder(Alert)


def read_alert(raw: bytes) -> Alert:
    """Raises msgspec.DecodeError / ValidationError for a message that is not an alert."""
    return _alert.decode(raw)


def wanted(endpoint: EndpointSettings, alert: Alert) -> bool:
    """The endpoint's filters (an empty list lets everything through)."""
    return (
        (not endpoint.rules or alert.rule in endpoint.rules)
        and (not endpoint.severities or alert.severity in endpoint.severities)
        and (not endpoint.bands or alert.band in endpoint.bands)
        and alert.churn_risk >= endpoint.min_churn_risk
        and (not endpoint.plans or alert.plan in endpoint.plans)
    )


class _Envelope(msgspec.Struct):
    type: str
    timestamp: str
    data: msgspec.Raw


def webhook_body(raw_alert: bytes, sent_at: datetime) -> str:
    """``{type, timestamp, data}``: the alert message as ``data``, byte for byte."""
    return msgspec.json.encode(_Envelope(ALERT_RAISED, sent_at.isoformat(), msgspec.Raw(raw_alert))).decode()


def webhook_headers(secret: str, alert_id: str, sent_at: datetime, body: str) -> dict[str, str]:
    """Standard Webhooks v1 headers, signed by the ``standardwebhooks`` library; ``webhook-id`` is
    the alert id, so a receiver deduplicates across our retries and reprocessing."""
    return {
        "content-type": "application/json",
        "webhook-id": alert_id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": Webhook(secret).sign(alert_id, sent_at, body),
    }


def reasons_text(reasons: list[Reason]) -> str:
    """"payments −18, usage −9": the top changes in points, as a person reads them."""
    return ", ".join(f"{reason.component} {'+' if reason.change > 0 else '−'}{abs(reason.change):.0f}" for reason in reasons) or "no component moved"


# Block Kit's limits (api.slack.com/reference/block-kit): slack_sdk raises past them, so every
# string that comes from outside is cut to fit first.
HEADER_CHARACTERS = 150
TEXT_CHARACTERS = 2000
FALLBACK_CHARACTERS = 3000
URL_CHARACTERS = 3000


def fit(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis where it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def mrkdwn_escaped(text: str) -> str:
    """Slack's escaping of text it parses for markup: ``<!channel>``, ``<https://...|link>``
    and the like from a customer id or a detail come out as the characters they are."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def next_step_text(alert: Alert) -> str:
    """"*Next step* (csm, by 2026-12-08 10:00 UTC)" and the playbook's action, escaped."""
    due = f", by {alert.action_due_at[:16].replace('T', ' ')} UTC" if alert.action_due_at else ""
    owner = mrkdwn_escaped(alert.action_owner or "")
    return f"*Next step* ({owner}{due})\n{mrkdwn_escaped(alert.recommended_action or '')}"


def slack_message(alert: Alert, customer_url_template: str | None) -> dict:
    """A Block Kit message built with slack_sdk's models (which check the limits of each block);
    every customer-supplied string is escaped and cut to those limits."""
    before = f"{alert.previous_score:.0f} → " if alert.previous_score is not None else ""
    customer = mrkdwn_escaped(alert.customer_id)
    band, rule = alert.band.replace("_", " "), alert.rule.replace("_", " ")
    why = mrkdwn_escaped(reasons_text(alert.reasons))
    blocks = [
        # plain_text: Slack parses no markup there, so the id is shown as it is, only cut.
        HeaderBlock(text=fit(f"{alert.customer_id}: {band} ({alert.severity})", HEADER_CHARACTERS)),
        SectionBlock(
            fields=[
                MarkdownTextObject(text=f"*Score*\n{before}{alert.score:.0f}"),
                MarkdownTextObject(text=f"*Churn risk*\n{alert.churn_risk:.0%}"),
                MarkdownTextObject(text=fit(f"*Rule*\n{mrkdwn_escaped(rule)}", TEXT_CHARACTERS)),
                MarkdownTextObject(text=fit(f"*Why*\n{why}", TEXT_CHARACTERS)),
            ]
        ),
    ]
    if alert.detail:
        blocks.append(ContextBlock(elements=[MarkdownTextObject(text=fit(mrkdwn_escaped(alert.detail), TEXT_CHARACTERS))]))
    if alert.recommended_action:
        blocks.append(SectionBlock(text=MarkdownTextObject(text=fit(next_step_text(alert), TEXT_CHARACTERS))))
    if customer_url_template:
        url = customer_url_template.format(customer_id=quote(alert.customer_id, safe=""))
        if len(url) <= URL_CHARACTERS:
            blocks.append(ActionsBlock(elements=[ButtonElement(text="Open the customer", url=url, action_id="open-customer")]))
    text = fit(f"{customer} is {band}: {mrkdwn_escaped(rule)} ({why})", FALLBACK_CHARACTERS)
    return {"text": text, "blocks": [block.to_dict() for block in blocks]}
