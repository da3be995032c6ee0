"""healthscore replay: determinism, order independence, CSV input, rejects, sweeps in event time."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from stream.cli import main
from stream.commands.generate import write_history

DAY_MS = 86_400_000
END_MS = 1_790_000_000_000
START_MS = END_MS - 60 * DAY_MS


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("history") / "events.jsonl"
    write_history(str(path), str(path) + ".labels.csv", customers=80, events=6000, start_ms=START_MS, end_ms=END_MS, seed=4)
    return path


def replay(*args: str) -> tuple[list[dict], dict]:
    result = CliRunner().invoke(main, ["replay", *args])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line]
    summary = json.loads(result.stderr.strip().splitlines()[-1])
    return lines, summary


def test_replay_writes_scores_alerts_and_final_scores(history: Path) -> None:
    as_of = "2026-09-01T00:00:00Z"
    lines, summary = replay("--input", str(history), "--as-of", as_of)
    kinds = {line["kind"] for line in lines}
    assert kinds == {"score", "alert", "final"}
    finals = [line for line in lines if line["kind"] == "final"]
    assert len(finals) == summary["final_scores"] == summary["customers"]
    assert all(f["as_of"] == "2026-09-01T00:00:00.000Z" and f["band"] in {"healthy", "at_risk", "critical"} for f in finals)
    # Nothing after --as-of was applied.
    assert max(line["as_of"] for line in lines if line["kind"] == "score") <= "2026-09-01T00:00:00.000Z"
    assert summary["applied"] < summary["events"]
    sweep_scores = [line for line in lines if line["kind"] == "score" and line["trigger_event_id"] is None]
    assert sweep_scores and summary["sweeps"] > 0


def test_the_same_input_gives_the_same_output(history: Path) -> None:
    first, _ = replay("--input", str(history), "--as-of", "2026-09-10T00:00:00Z")
    second, _ = replay("--input", str(history), "--as-of", "2026-09-10T00:00:00Z")
    assert first == second


def test_file_order_does_not_matter(history: Path, tmp_path: Path) -> None:
    shuffled = tmp_path / "shuffled.jsonl"
    lines = history.read_bytes().splitlines()
    random.Random(1).shuffle(lines)
    shuffled.write_bytes(b"\n".join(lines) + b"\n")
    original, _ = replay("--input", str(history), "--as-of", "2026-09-10T00:00:00Z")
    reordered, _ = replay("--input", str(shuffled), "--as-of", "2026-09-10T00:00:00Z")
    assert original == reordered


def test_bad_lines_are_reported_not_lost_and_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    good = {"event_id": "e1", "type": "usage.session", "customer_id": "a", "occurred_at": START_MS, "data": {"user_id": "u", "duration_seconds": 5}}
    path.write_text("\n".join([json.dumps(good), "{broken", json.dumps({**good, "event_id": "e2", "type": "nope"})]) + "\n")
    rejects = tmp_path / "rejects.jsonl"
    result = CliRunner().invoke(main, ["replay", "--input", str(path), "--rejects", str(rejects)])
    assert result.exit_code == 0, result.output
    assert "2 of 3 lines rejected (first: line 2: not_json" in result.stderr
    reported = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in reported] == [(2, "not_json"), (3, "unknown_type")]
    assert json.loads(result.stderr.strip().splitlines()[-1])["applied"] == 1


def test_a_purchase_csv_works_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(
        "customer_id,occurred_at,amount\n"
        "shop-1,2026-06-01,20.00\n"
        "shop-1,2026-06-20 14:30:00,35.50\n"
        "shop-2,2026-06-02T10:00:00+02:00,12\n"
        "shop-2,not-a-date,12\n"
    )
    lines, summary = replay("--input", str(path), "--as-of", "2026-07-01", "--sweep-every", "0")
    finals = {line["customer_id"]: line for line in lines if line["kind"] == "final"}
    assert set(finals) == {"shop-1", "shop-2"}
    # bought more recently (both held below healthy: two and one days of evidence)
    assert finals["shop-1"]["churn_risk"] < finals["shop-2"]["churn_risk"]
    assert finals["shop-1"]["confidence"] > finals["shop-2"]["confidence"]
    assert summary["rejected"] == 1 and summary["applied"] == 3


def test_csv_rows_in_another_order_give_the_same_result(tmp_path: Path) -> None:
    rows = [f"c{i % 7},2026-06-{1 + i % 28:02d},{i}.5" for i in range(60)]
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("customer_id,occurred_at,amount\n" + "\n".join(rows) + "\n")
    random.Random(2).shuffle(rows)
    b.write_text("customer_id,occurred_at,amount\n" + "\n".join(rows) + "\n")
    assert replay("--input", str(a), "--as-of", "2026-07-01")[0] == replay("--input", str(b), "--as-of", "2026-07-01")[0]


def test_a_bad_as_of_is_a_clear_error(history: Path) -> None:
    result = CliRunner().invoke(main, ["replay", "--input", str(history), "--as-of", "someday"])
    assert result.exit_code == 2 and "--as-of" in result.output


@pytest.mark.parametrize(
    ("silent_ms", "period_ms", "due"),
    [
        (0, DAY_MS, False),
        (DAY_MS - 1, DAY_MS, False),
        (DAY_MS, DAY_MS, True),
        (5 * DAY_MS, DAY_MS, True),
        (3_600_000, 3_600_000, True),
        (3_599_999, 3_600_000, False),
    ],
)
def test_a_sweep_rescores_only_customers_silent_for_a_period(silent_ms: int, period_ms: int, due: bool) -> None:
    from scoring.pipeline import due_for_sweep
    from scoring.state import new_state

    state = new_state("acme")
    state.last_event_ms = END_MS
    assert due_for_sweep(state, END_MS + silent_ms, period_ms) is due


def test_sweep_scores_come_only_from_silent_customers(history: Path) -> None:
    """Every score the sweep publishes (no trigger event) is at least a day after that customer's previous event."""
    lines, _ = replay("--input", str(history))
    last_event: dict[str, int] = {}
    from scoring.contract import parse_timestamp_ms

    swept = 0
    for line in lines:
        if line["kind"] != "score":
            continue
        at = parse_timestamp_ms(line["as_of"], "as_of")
        if line["trigger_event_id"] is None:
            swept += 1
            assert at - last_event[line["customer_id"]] >= DAY_MS
        else:
            last_event[line["customer_id"]] = at
    assert swept > 0


def test_the_replay_evicts_customers_silent_for_the_state_ttl_as_the_worker_sweep_does() -> None:
    from scoring.contract import Event, UsageSession
    from scoring.health import ScoringParameters
    from scoring.pipeline import expired
    from scoring.replay import Replayer
    from scoring.state import DAY_MS, new_state

    state = new_state("c")
    state.last_event_ms = 10 * DAY_MS
    assert not expired(state, 39 * DAY_MS, 30 * DAY_MS) and expired(state, 40 * DAY_MS, 30 * DAY_MS)
    assert not expired(state, 10**15, 0)  # 0: never
    replayer = Replayer(ScoringParameters(), None, 32, DAY_MS, state_ttl_ms=30 * DAY_MS)
    events = [
        Event("a1", "usage.session", "quiet", 1 * DAY_MS, UsageSession("u", 60)),
        Event("b1", "usage.session", "busy", 1 * DAY_MS, UsageSession("u", 60)),
        *[Event(f"b{day}", "usage.session", "busy", day * DAY_MS, UsageSession("u", 60)) for day in range(5, 60, 5)],
    ]
    list(replayer.run(events))
    assert set(replayer.states) == {"busy"} and replayer.evicted == 1
