"""Issue 38: the replay on encoded records (``scoring.replay.KernelReplayer``: each step, each
sweep's visit and each due search in the Rust kernel) writes the lines the Python model's
replay writes, byte for byte, and ends with the same records."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from click.testing import CliRunner
from hypothesis import strategies as st

from scoring import kernel
from scoring.alerts import AlertParameters
from scoring.churn import ChurnModel
from scoring.contract import Event, decode_event
from scoring.health import ScoringParameters
from scoring.output import alert_line, score_line
from scoring.replay import AlertLine, AlertRaised, KernelReplayer, Replayer, ScoreChanged, ScoreLine
from scoring.state import DAY_MS, decode_state, encode_state
from stream.cli import main
from stream.commands.generate import EventSynthesizer, write_history
from stream.commands.history import wire_line
from tests.unit.test_due import DIGESTING, HOUR_MS, SENSITIVE
from tests.unit.test_kernel import histories

pytestmark = pytest.mark.skipif(not kernel.available(), reason="the Rust kernel is not built")
END = 1_790_000_000_000


def lines_of(outputs: Iterable[Any], model_version: str) -> list[tuple]:
    """Each output as its line, and for alerts what the fleet budget orders them by."""
    lines: list[tuple] = []
    for item in outputs:
        if isinstance(item, ScoreChanged):
            lines.append((score_line(item.customer_id, item.health, item.trigger_event_id, model_version),))
        elif isinstance(item, AlertRaised):
            alert = item.alert
            lines.append((alert_line(alert, model_version), alert.customer_id, alert.occurred_at_ms, alert.churn_risk))
        elif isinstance(item, ScoreLine):
            lines.append((item.line,))
        else:
            assert isinstance(item, AlertLine)
            lines.append((item.line, item.customer_id, item.occurred_at_ms, item.churn_risk))
    return lines


def both(
    pairs: list[tuple[Event, bytes]], parameters: ScoringParameters, rules: AlertParameters | None, every_ms: int | None,
    min_change: float, ttl_ms: int, until_ms: int | None,
) -> tuple[Replayer, KernelReplayer]:
    """The Python model's replay (due index, Python search) and the kernel's; their lines must be equal."""
    pairs = sorted(pairs, key=lambda pair: (pair[0].occurred_at_ms, pair[0].event_id))
    model = Replayer(parameters, rules, 32, every_ms, min_change, ttl_ms)
    expected = lines_of(model.run([event for event, _ in pairs], until_ms), parameters.model_version)
    native = kernel.build(parameters, rules)
    replayer = KernelReplayer(parameters, rules, 32, every_ms, native, min_change, ttl_ms)
    got = lines_of(replayer.run(pairs, until_ms), parameters.model_version)
    assert got == expected
    assert replayer.records.keys() == model.states.keys()
    for customer_id, state in model.states.items():
        assert replayer.records[customer_id] == encode_state(state), customer_id
    assert (replayer.outcomes, replayer.evicted, replayer.swept, replayer.sweeps) == (model.outcomes, model.evicted, model.swept, model.sweeps)
    at = until_ms or 0
    assert list(replayer.final_scores(at)) == list(model.final_scores(at))
    return model, replayer


CALIBRATED = ChurnModel(0.4, (-3.0, -1.0, 0.5, -0.2, -0.9, -1.1, 1.3, 0.6, -0.35), 45.0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=histories(),
    rules=st.sampled_from([None, AlertParameters(), SENSITIVE, DIGESTING]),
    every_ms=st.sampled_from([None, HOUR_MS, 6 * HOUR_MS, DAY_MS]),
    min_change=st.sampled_from([1.0, 0.25, math.inf]),
    ttl_days=st.sampled_from([0, 20]),
    calibrated=st.booleans(),
)
def test_any_history_gives_the_same_lines_and_records(
    history: list, rules: AlertParameters | None, every_ms: int | None, min_change: float, ttl_days: int, calibrated: bool
) -> None:
    parameters = ScoringParameters(churn_model=CALIBRATED if calibrated else None)
    pairs = [(event, value) for value, event, *_ in history]
    until = max(event.occurred_at_ms for event, _ in pairs) + 150 * DAY_MS  # long after: decay, deadlines, evictions
    both(pairs, parameters, rules, every_ms, min_change, ttl_days * DAY_MS, until)


def generated(customers: int, total: int, days: int, seed: int) -> list[tuple[Event, bytes]]:
    """The generator's mix, each event with its wire JSON as a history file holds it."""
    end = 1_790_000_000_000
    pairs = []
    for item in EventSynthesizer(customers, seed, csm=True).timeline(total, end - days * DAY_MS, end):
        value = msgspec.json.encode(item.value)
        decoded = decode_event(item.customer_id.encode(), value, item.topic, end, 0)
        if isinstance(decoded, Event):
            pairs.append((decoded, value))
    return pairs


@pytest.mark.parametrize("rules", [AlertParameters(), SENSITIVE, DIGESTING], ids=["default", "sensitive", "digesting"])
def test_the_generators_mix_gives_the_same_lines_with_far_fewer_python_objects(rules: AlertParameters) -> None:
    pairs = generated(200, 8_000, 120, seed=11)
    until = max(event.occurred_at_ms for event, _ in pairs) + 60 * DAY_MS
    model, replayer = both(pairs, ScoringParameters(), rules, DAY_MS, 1.0, 0, until)
    assert replayer.in_python == 0 and not replayer.states  # every step and visit in the kernel, no record decoded
    assert model.swept > 100


def test_events_written_from_csv_rows_read_as_their_lines() -> None:
    """A CSV history has no wire JSON: ``wire_line`` writes the contract's, which the kernel reads."""
    pairs = generated(30, 600, 60, seed=3)
    rewritten = [(event, wire_line(event)) for event, _ in pairs]
    until = max(event.occurred_at_ms for event, _ in pairs) + 30 * DAY_MS
    _, replayer = both(rewritten, ScoringParameters(), AlertParameters(), DAY_MS, 1.0, 0, until)
    assert replayer.in_python == 0


def test_what_the_kernel_cannot_read_goes_through_the_model() -> None:
    """A record beyond the kernel's integers (and so every later step and visit of that
    customer) and a payload it does not read are taken by the Python model: the same lines."""
    pairs = generated(20, 400, 40, seed=7)
    until = max(event.occurred_at_ms for event, _ in pairs) + 40 * DAY_MS
    rules = SENSITIVE
    parameters = ScoringParameters()
    first_half, second_half = pairs[: len(pairs) // 2], pairs[len(pairs) // 2 :]
    model, replayer = both(first_half, parameters, rules, DAY_MS, 1.0, 0, None)
    customer = next(iter(model.states))
    model.states[customer].events_applied = 2**63
    replayer.records[customer] = encode_state(model.states[customer])
    assert decode_state(replayer.records[customer]).events_applied == 2**63
    unreadable = [(event, b"{}" if index % 50 == 0 else value) for index, (event, value) in enumerate(second_half)]
    expected = lines_of(model.run([event for event, _ in second_half], until), parameters.model_version)
    got = lines_of(replayer.run(unreadable, until), parameters.model_version)
    assert got == expected
    assert replayer.in_python > len(second_half) // 50
    for customer_id, state in model.states.items():
        assert replayer.records[customer_id] == encode_state(state), customer_id


@pytest.mark.parametrize("budget", ["0", "40"], ids=["no_fleet_budget", "fleet_budget"])
def test_the_replay_command_writes_the_same_bytes_through_the_kernel(tmp_path: Path, budget: str) -> None:
    """`healthscore replay` in the kernel (score lines straight to the output buffer, alerts
    through the fleet's alert budget) writes byte for byte what it writes with
    native_kernel = false, more than a megabyte of it, with --as-of's final lines."""
    history = tmp_path / "history.jsonl"
    write_history(str(history), str(tmp_path / "labels.csv"), customers=150, events=6000, start_ms=END - 90 * DAY_MS, end_ms=END, seed=4)
    outputs = {}
    for native in ("true", "false"):
        env = {"HEALTHSCORE_NATIVE_KERNEL": native, "HEALTHSCORE_ALERTS__MAX_ALERTS_PER_DAY": budget}
        result = CliRunner().invoke(main, ["replay", "--input", str(history), "--as-of", str(END + 20 * DAY_MS)], env=env)
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stderr.strip().splitlines()[-1])
        assert summary["steps"] == ("Rust kernel" if native == "true" else "Python model")
        assert summary["kernel_fallbacks"] == 0
        outputs[native] = (result.stdout_bytes, {key: value for key, value in summary.items() if key not in ("seconds", "events_per_second", "steps", "due_search", "kernel_fallbacks")})
    assert outputs["true"] == outputs["false"]
    lines = outputs["true"][0].splitlines()
    assert len(outputs["true"][0]) > 1 << 20 and sum(b'"kind":"alert"' in line for line in lines) > 20
    assert sum(b'"kind":"final"' in line for line in lines) == 150
