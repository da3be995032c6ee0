"""E-mail engagement (issue 36): counted per day for the KPIs, whatever order the events
arrive in, never scored and never the customer's activity; through the model, the kernel
and `healthscore kpis`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from scoring import kpis
from scoring.contract import EmailClicked, EmailOpened, EmailSent, EmailUnsubscribed, Event, UsageSession
from scoring.health import ScoringParameters, score_state
from scoring.state import DAY_MS, apply_event, new_state
from stream.cli import main

T0 = 1_790_000_000_000 // DAY_MS * DAY_MS + 12 * 3_600_000


def ev(event_id: str, at: int, data) -> Event:
    return Event(event_id=event_id, type="x", customer_id="acme", occurred_at_ms=at, data=data)


def emails() -> list[Event]:
    events = [ev(f"s{day}", T0 - day * DAY_MS, EmailSent("spring")) for day in (1, 2, 3, 4, 100)]
    events += [ev("o1", T0 - DAY_MS, EmailOpened("spring")), ev("o2", T0 - 2 * DAY_MS, EmailOpened()), ev("c1", T0 - DAY_MS, EmailClicked())]
    return events + [ev("u", T0, EmailUnsubscribed())]


def test_email_kpis_of_a_customer_in_any_order_and_never_in_the_score() -> None:
    forward, backward, without = new_state("acme"), new_state("acme"), new_state("acme")
    for state in (forward, backward, without):
        apply_event(state, ev("use", T0 - 5 * DAY_MS, UsageSession("u", 60)))
    for event in emails():
        apply_event(forward, event)
    for event in reversed(emails()):
        apply_event(backward, event)
    assert forward.email_days == backward.email_days and len(forward.email_days) == 4  # day 100 is past the 90 days
    result = kpis.customer_kpis(forward, T0)
    assert (result.emails_sent_90d, result.email_open_rate, result.email_click_rate, result.email_reactivity) == (4, 50.0, 25.0, 50.0)
    assert result.email_unsubscribed is True
    assert forward.last_event_ms == T0 - 5 * DAY_MS  # not the customer's activity
    parameters = ScoringParameters()
    assert score_state(forward, T0, parameters) == score_state(without, T0, parameters)


def test_email_kpis_of_a_period(tmp_path: Path) -> None:
    start = 1_772_323_200_000  # 2026-03-01
    lines = []
    for customer, sends, opens, clicks, unsubscribes in (("a", 4, 2, 1, 0), ("b", 2, 0, 0, 1), ("c", 0, 0, 0, 0)):
        for kind, count in (("email.sent", sends), ("email.opened", opens), ("email.clicked", clicks), ("email.unsubscribed", unsubscribes)):
            lines += [{"event_id": f"{customer}-{kind}-{n}", "type": kind, "customer_id": customer, "occurred_at": start + (n + 1) * DAY_MS, "data": {}}
                      for n in range(count)]
        lines.append({"event_id": f"{customer}-use", "type": "usage.session", "customer_id": customer, "occurred_at": start + DAY_MS,
                      "data": {"user_id": "u", "duration_seconds": 5}})
    path = tmp_path / "h.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = CliRunner().invoke(main, ["kpis", "--input", str(path), "--from", "2026-03-01", "--to", "2026-03-31"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert (got["email_open_rate"], got["email_click_rate"], got["email_reactivity_rate"]) == (pytest.approx(100 * 2 / 6), pytest.approx(100 / 6), 50.0)
    assert (got["email_unsubscribe_rate"], got["solicitations_per_customer"]) == (50.0, 3.0)
    assert got["new_customers"] == 3  # the usage made them customers; the e-mails alone would not


def test_email_fleet_totals_of_the_period() -> None:
    emailed, quiet = new_state("emailed"), new_state("quiet")
    for event in emails():
        apply_event(emailed, event)
    apply_event(quiet, ev("q", T0, UsageSession("u", 60)))
    fleet = kpis.FleetTotals(at_ms=T0, period_days=30)
    fleet.add(emailed)
    fleet.add(quiet)
    assert fleet.emails == {"sent": 4, "opened": 2, "clicked": 1}
    assert (fleet.customers_emailed, fleet.customers_unsubscribed) == (1, 1)
