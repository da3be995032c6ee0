"""`healthscore kpis`: the fleet's KPIs over one period of a history file, by the articles'
definitions (scoring.period; docs/model.md, "KPIs of a period")."""

from __future__ import annotations

import json
import math
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from scoring.period import Period, PeriodKpis
from stream.commands.history import read_history
from stream.settings import Settings

#: The table's sections, in the order they are shown.
SECTIONS = (
    ("Customers", ("customers_at_start", "customers_at_end", "new_customers", "lost_customers", "returning_customers",
                   "retention_rate", "churn_rate", "customer_lifetime_periods", "acquisition_rate", "activation_rate")),
    ("Purchases", ("repurchase_rate", "repurchase_rate_per_customer", "loyal_customer_rate", "average_basket",
                   "average_spend_per_customer", "upsell_rate", "upsell_rate_per_customer", "checkout_abandonment_rate")),
    ("Value", ("ltv", "cac", "ltv_to_cac", "mrr_start", "mrr_end", "mrr_growth_rate", "mrr_new", "mrr_expansion",
               "mrr_contraction", "mrr_churned")),
    ("Voice of the customer", ("nps", "csat", "ces", "customer_loyalty_index", "customer_secure_rate", "participation_rate",
                                "survey_response_rate", "csat_by_touchpoint")),
    ("E-mail", ("email_open_rate", "email_click_rate", "email_reactivity_rate", "email_unsubscribe_rate", "solicitations_per_customer")),
    ("Support and usage", ("mean_time_to_resolution_hours", "dau", "wau", "mau", "stickiness")),
)


def day_start_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp() * 1000)


def period_kpis(settings: Settings, input_path: Path, first: date, last: date, spend: float | None,
                echo: Callable[[str], None]) -> dict:
    """The KPIs of [first, last] (whole UTC days) with the period and where the spend came from."""
    history = read_history(input_path)
    if history.rejected:
        echo(f"{len(history.rejected)} of {history.read} lines rejected and left out (`healthscore replay --rejects FILE` shows them)")
    source = "--acquisition-spend"
    if spend is None:
        spend = settings.kpis.spend_within(first, last)
        source = "config [[kpis.acquisition_spend]]" if spend is not None else "none"
    period = Period(day_start_ms(first), day_start_ms(last + timedelta(days=1)), spend, settings.scoring.survey_response_days)
    by_customer: dict[str, list] = {}
    for event in history.events:
        by_customer.setdefault(event.customer_id, []).append(event)
    totals = PeriodKpis(period)
    for events in by_customer.values():
        totals.add(events)
    result = totals.result()
    return {"from": first.isoformat(), "to": last.isoformat(), "acquisition_spend": spend, "acquisition_spend_from": source,
            "events": len(history.events), **result}


def as_table(result: dict) -> str:
    lines = [f"KPIs from {result['from']} to {result['to']} ({result['events']} events)"]
    for title, keys in SECTIONS:
        lines.append("")
        lines.append(title)
        for key in keys:
            lines.append(f"  {key:<32} {_shown(result[key])}")
    return "\n".join(lines)


def _shown(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):  # csat_by_touchpoint
        return ", ".join(f"{name} {figures['csat']:.1f} % ({figures['answers']})" for name, figures in value.items())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:,.2f}" if isinstance(value, float) else f"{value:,}"


def as_json(result: dict) -> str:
    return json.dumps(result)
