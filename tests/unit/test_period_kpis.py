"""`healthscore kpis`: the articles' worked examples, each through the formula and through
the command on a history built to have that answer; the definitions issue 36 fixed
(retention never above 100 %, resolution times windowed, MRR growth of existing customers);
every rate within its range whatever the history."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scoring import kpis
from scoring.contract import EVENT_TYPES, decode_event
from scoring.period import Period, PeriodKpis
from stream.cli import main
from stream.commands.kpis import day_start_ms

DAY = 86_400_000
FROM, TO = date(2026, 3, 1), date(2026, 3, 31)
START = day_start_ms(FROM)


class History:
    """Events in the wire contract's shape, written as JSON Lines."""

    def __init__(self) -> None:
        self.lines: list[dict] = []

    def add(self, customer: str, day: int, event_type: str, **data: object) -> None:
        """An event ``day`` days after the period's first day (negative: before it), at noon."""
        at = START + day * DAY + 12 * 3_600_000
        self.lines.append({"event_id": f"e{len(self.lines)}", "type": event_type, "customer_id": customer, "occurred_at": at, "data": data})

    def session(self, customer: str, day: int, user: str = "u1") -> None:
        self.add(customer, day, "usage.session", user_id=user, duration_seconds=60)

    def run(self, tmp_path: Path, first: date = FROM, last: date = TO, *extra: str) -> dict:
        path = tmp_path / "history.jsonl"
        path.write_text("".join(json.dumps(line) + "\n" for line in self.lines))
        result = CliRunner().invoke(main, ["kpis", "--input", str(path), "--from", first.isoformat(), "--to", last.isoformat(), *extra])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)


def test_retention_and_churn_of_the_articles(tmp_path: Path) -> None:
    """1,000 customers at the start, 50 lost, 100 new: 1,050 at the end, retention 95 %, churn 5 %."""
    history = History()
    for index in range(1000):
        history.session(f"c{index}", -10)
        if index >= 50:
            history.session(f"c{index}", 10)
    for index in range(100):
        history.session(f"n{index}", 5)
    result = history.run(tmp_path)
    assert (result["customers_at_start"], result["new_customers"], result["customers_at_end"], result["lost_customers"]) == (1000, 100, 1050, 50)
    assert result["retention_rate"] == kpis.retention_rate(1000, 1050, 100) == 95.0
    assert result["churn_rate"] == kpis.churn_rate(50, 1000) == 5.0
    assert result["customer_lifetime_periods"] == kpis.customer_lifetime(5.0) == 20.0
    assert result["acquisition_rate"] == 10.0


def test_retention_never_passes_100_percent_with_a_returning_customer(tmp_path: Path) -> None:
    """The dashboard's (end − new) / start gave 200 % here: one steady customer, one back after a gap."""
    history = History()
    history.session("steady", -5)
    history.session("steady", 5)
    history.session("returning", -60)  # a customer once, silent through the window before the period
    history.session("returning", 5)
    result = history.run(tmp_path)
    assert (result["customers_at_start"], result["customers_at_end"], result["returning_customers"]) == (1, 2, 1)
    assert result["retention_rate"] == 100.0 and result["churn_rate"] == 0.0
    assert result["customer_lifetime_periods"] is None  # no churn: unbounded, not a number


def test_ltv_and_ltv_to_cac_of_the_articles(tmp_path: Path) -> None:
    """50 € a purchase, 3 purchases a year, 5 years (20 % churn a year): LTV 750 €; CAC 250 €: LTV/CAC 3."""
    history = History()
    for index in range(5):
        history.session(f"c{index}", -100)
        if index:
            for day in (10, 150, 300):
                history.add(f"c{index}", day, "purchase.completed", order_id=f"o{index}-{day}", amount=50, currency="EUR")
    history.add("newcomer", 20, "purchase.completed", order_id="n1", amount=50, currency="EUR")
    history.add("newcomer", 120, "purchase.completed", order_id="n2", amount=50, currency="EUR")
    history.add("newcomer", 220, "purchase.completed", order_id="n3", amount=50, currency="EUR")
    year = (date(2026, 3, 1), date(2027, 2, 28))
    result = history.run(tmp_path, *year, "--acquisition-spend", "250")
    assert result["churn_rate"] == 20.0 and result["average_basket"] == 50.0
    assert result["ltv"] == kpis.lifetime_value(50.0, 3.0, 5.0) == 750.0
    assert result["cac"] == 250.0 and result["ltv_to_cac"] == kpis.ltv_to_cac(750.0, 250.0) == 3.0
    assert result["activation_rate"] == 100.0 and result["repurchase_rate"] == 100.0
    assert history.run(tmp_path, *year)["cac"] is None  # no spend anywhere: null, never a guess


@pytest.mark.parametrize(
    ("survey", "answers", "key", "expected", "formula"),
    [
        ("nps", [10] * 5 + [8] * 3 + [3] * 2, "nps", 30.0, lambda a: kpis.net_promoter_score(a)),
        ("csat", [5, 4, 3, 2, 1, 5, 4, 4], "csat", 62.5, lambda a: kpis.csat(a)),
        ("ces", [7, 6, 5], "ces", 6.0, lambda a: kpis.customer_effort_score(a)),
        ("cli", [1, 2, 3, 4, 5, 6], "customer_loyalty_index", 50.0, lambda a: kpis.customer_loyalty_index(a)),
        ("cli", [1], "customer_loyalty_index", 100.0, lambda a: kpis.customer_loyalty_index(a)),
        ("cli", [6], "customer_loyalty_index", 0.0, lambda a: kpis.customer_loyalty_index(a)),
    ],
)
def test_survey_kpis_of_the_articles(tmp_path: Path, survey: str, answers: list[int], key: str, expected: float, formula) -> None:
    history = History()
    for index, answer in enumerate(answers):
        history.add(f"c{index}", 3, "survey.answered", survey=survey, score=answer)
    history.session("quiet", 3)
    result = history.run(tmp_path)
    assert result[key] == pytest.approx(expected) and formula(answers) == pytest.approx(expected)
    assert result["participation_rate"] == pytest.approx(len(answers) / (len(answers) + 1) * 100)


def test_csat_is_tied_to_the_touchpoint_it_rates(tmp_path: Path) -> None:
    history = History()
    for index, (touchpoint, score) in enumerate([("support_ticket", 5), ("support_ticket", 2), ("onboarding", 4), (None, 1)]):
        data = {"survey": "csat", "score": score, **({"touchpoint": touchpoint} if touchpoint else {})}
        history.add(f"c{index}", 3, "survey.answered", **data)
    result = history.run(tmp_path)
    assert result["csat"] == 50.0
    assert result["csat_by_touchpoint"] == {"support_ticket": {"csat": 50.0, "answers": 2}, "onboarding": {"csat": 100.0, "answers": 1}}


def test_customer_secure_rate(tmp_path: Path) -> None:
    history = History()
    for customer, replies in (("sure", (1, 1, 1)), ("unsure", (1, 0, 1)), ("partial", (1, 1, None))):
        for question, reply in zip(("satisfied", "buy_again", "recommend"), replies):
            if reply is not None:
                history.add(customer, 2, "survey.answered", survey="csi", score=reply, question=question)
    assert history.run(tmp_path)["customer_secure_rate"] == 50.0  # partial has no status yet


def test_survey_response_rate_of_the_surveys_sent(tmp_path: Path) -> None:
    history = History()
    history.add("prompt", 2, "survey.sent", survey="nps")
    history.add("prompt", 4, "survey.answered", survey="nps", score=9)
    history.add("late", 2, "survey.sent", survey="csat")
    history.add("late", 20, "survey.answered", survey="csat", score=5)  # after its 14 days: missed
    history.add("silent", 3, "survey.sent", survey="csi")
    history.add("pending", 25, "survey.sent", survey="nps")  # its deadline is after the period: neither
    result = history.run(tmp_path)
    assert result["survey_response_rate"] == pytest.approx(100 / 3)
    assert result["participation_rate"] == pytest.approx(100.0)  # every active customer answered something


def test_resolution_time_counts_only_tickets_resolved_in_the_period(tmp_path: Path) -> None:
    history = History()
    history.add("acme", -300, "ticket.opened", ticket_id="old", priority="normal")
    history.add("acme", -297, "ticket.resolved", ticket_id="old")  # 72 h, 297 days before the period
    history.add("acme", 4, "ticket.opened", ticket_id="t1", priority="high")
    history.add("acme", 5, "ticket.resolved", ticket_id="t1")
    history.add("acme", 6, "ticket.opened", ticket_id="t2", priority="low")
    history.add("acme", 8, "ticket.resolved", ticket_id="t2")
    assert history.run(tmp_path)["mean_time_to_resolution_hours"] == 36.0


def test_mrr_growth_is_of_existing_customers_with_new_revenue_apart(tmp_path: Path) -> None:
    history = History()
    history.add("grows", -20, "subscription.updated", mrr=100)
    history.add("grows", 10, "subscription.updated", mrr=120)
    history.add("shrinks", -20, "subscription.updated", mrr=100)
    history.add("shrinks", 10, "subscription.updated", mrr=90)
    history.add("leaves", -20, "subscription.updated", mrr=50)
    history.add("leaves", 10, "subscription.cancelled", reason="price")
    history.add("joins", 10, "subscription.updated", mrr=500)
    result = history.run(tmp_path)
    assert (result["mrr_start"], result["mrr_end"]) == (250.0, 710.0)
    assert result["mrr_growth_rate"] == pytest.approx((210 - 250) / 250 * 100)  # the newcomer's 500 left out
    assert (result["mrr_new"], result["mrr_expansion"], result["mrr_contraction"], result["mrr_churned"]) == (500.0, 20.0, 10.0, 50.0)
    assert (result["customers_at_start"], result["lost_customers"], result["new_customers"]) == (3, 1, 1)


def test_active_users_and_stickiness_at_the_periods_end(tmp_path: Path) -> None:
    history = History()
    history.session("acme", 30, "u1")  # the last day
    history.session("acme", 26, "u2")
    history.session("acme", 2, "u3")
    history.session("beta", 30, "u1")  # another customer's u1 is another user
    result = history.run(tmp_path)
    assert (result["dau"], result["wau"], result["mau"], result["stickiness"]) == (2, 3, 4, 0.5)


def test_the_config_supplies_the_spend_of_the_period(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    base = (Path(__file__).resolve().parents[2] / "config" / "healthscore.toml").read_text()
    config.write_text(base + '\n[[kpis.acquisition_spend]]\nstart = 2026-03-01\nend = 2026-03-31\namount = 300.0\n'
                      '\n[[kpis.acquisition_spend]]\nstart = 2026-04-01\nend = 2026-04-30\namount = 999.0\n')
    monkeypatch.setenv("HEALTHSCORE_CONFIG", str(config))
    history = History()
    for index in range(3):
        history.session(f"n{index}", 4)
    result = history.run(tmp_path)
    assert (result["acquisition_spend"], result["cac"], result["acquisition_spend_from"]) == (300.0, 100.0, "config [[kpis.acquisition_spend]]")
    assert history.run(tmp_path, FROM, TO, "--acquisition-spend", "30")["cac"] == 10.0


def test_a_period_ending_before_it_starts_is_refused(tmp_path: Path) -> None:
    history = History()
    history.session("acme", 1)
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps(history.lines[0]) + "\n")
    result = CliRunner().invoke(main, ["kpis", "--input", str(path), "--from", "2026-03-10", "--to", "2026-03-01"])
    assert result.exit_code != 0 and "--to" in result.output


def test_the_table_shows_every_key(tmp_path: Path) -> None:
    history = History()
    history.session("acme", 1)
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps(history.lines[0]) + "\n")
    shown = CliRunner().invoke(main, ["kpis", "--input", str(path), "--from", "2026-03-01", "--to", "2026-03-31", "--format", "table"])
    assert shown.exit_code == 0, shown.output
    keys = PeriodKpis(Period(START, START + DAY)).result()
    assert all(f"  {key} " in shown.output for key in keys)


EVENT_KINDS = sorted(EVENT_TYPES)
RATES = ("retention_rate", "churn_rate", "repurchase_rate", "repurchase_rate_per_customer", "loyal_customer_rate", "upsell_rate",
         "upsell_rate_per_customer", "checkout_abandonment_rate", "activation_rate", "csat", "customer_loyalty_index",
         "customer_secure_rate", "participation_rate", "survey_response_rate")


@st.composite
def raw_event(draw: st.DrawFn, index: int) -> bytes:
    kind = draw(st.sampled_from(["usage.session", "purchase.completed", "checkout.abandoned", "subscription.updated",
                                 "subscription.cancelled", "survey.answered", "ticket.opened", "ticket.resolved"]))
    data: dict = {
        "usage.session": {"user_id": draw(st.sampled_from(["u1", "u2"])), "duration_seconds": 5},
        "purchase.completed": {"order_id": "o", "amount": draw(st.integers(0, 500)), "currency": "EUR",
                               "items": [{"sku": "s", "quantity": 1, "unit_price": 1, "category": draw(st.sampled_from(["a", "b"]))}]},
        "checkout.abandoned": {},
        "subscription.updated": {"mrr": draw(st.integers(0, 300))},
        "subscription.cancelled": {},
        "survey.answered": {"survey": "csat", "score": draw(st.integers(1, 5))},
        "ticket.opened": {"ticket_id": "t", "priority": "low"},
        "ticket.resolved": {"ticket_id": "t"},
    }[kind]
    at = START + draw(st.integers(-90, 60)) * DAY
    customer = draw(st.sampled_from(["a", "b", "c", "d"]))
    return json.dumps({"event_id": f"e{index}", "type": kind, "customer_id": customer, "occurred_at": at, "data": data}).encode()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_every_rate_stays_in_its_range(data: st.DataObject) -> None:
    count = data.draw(st.integers(1, 40))
    totals = PeriodKpis(Period(START, START + 31 * DAY, data.draw(st.sampled_from([None, 0.0, 100.0]))))
    by_customer: dict[str, list] = {}
    for index in range(count):
        raw = data.draw(raw_event(index))
        body = json.loads(raw)
        topic = EVENT_TYPES[body["type"]][0]
        event = decode_event(body["customer_id"].encode(), raw, topic, START + 365 * DAY, 0)
        by_customer.setdefault(event.customer_id, []).append(event)
    for events in by_customer.values():
        totals.add(events)
    result = totals.result()
    for key in RATES:
        assert result[key] is None or 0.0 <= result[key] <= 100.0, (key, result[key])
    assert result["nps"] is None or -100.0 <= result["nps"] <= 100.0
    assert result["retention_rate"] is None or result["retention_rate"] + result["churn_rate"] == pytest.approx(100.0)
    assert result["customers_at_end"] >= result["customers_at_start"] - result["lost_customers"] >= 0
    assert result["stickiness"] is None or 0.0 <= result["stickiness"] <= 1.0
    assert result["acquisition_rate"] is None or result["acquisition_rate"] >= 0.0  # new / at start: above 100 % when the base more than doubles


@pytest.mark.parametrize(
    ("extra", "named"),
    [(["--from", "2026-03-01", "--to", "9999-12-31"], "--to"), (["--from", "1970-01-01", "--to", "2026-03-01"], "--from"),
     (["--from", "2026-03-01", "--to", "2026-03-31", "--acquisition-spend", "nan"], "--acquisition-spend"),
     (["--from", "2026-03-01", "--to", "2026-03-31", "--acquisition-spend", "-1"], "--acquisition-spend"),
     (["--from", "", "--to", "2026-03-31"], "--from")],
)
def test_odd_periods_and_spends_are_refused_naming_the_option(tmp_path: Path, extra: list[str], named: str) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps({"event_id": "e", "type": "usage.session", "customer_id": "a", "occurred_at": START,
                                "data": {"user_id": "u", "duration_seconds": 5}}) + "\n")
    result = CliRunner().invoke(main, ["kpis", "--input", str(path), *extra])
    assert result.exit_code == 2 and named in result.output and "Traceback" not in result.output
