"""The command line: help on every subcommand, and clear errors instead of tracebacks."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from stream.cli import main

SUBCOMMANDS = ["worker", "services", "topics", "generate", "watch", "sweep", "replay", "backtest", "fit-bgnbd", "version"]


def test_every_subcommand_is_listed_and_explains_itself() -> None:
    overview = CliRunner().invoke(main, ["--help"])
    assert overview.exit_code == 0
    for name in SUBCOMMANDS:
        assert name in overview.output
        result = CliRunner().invoke(main, [name, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output and len(result.output) > 150, name


def test_version_says_how_the_model_runs() -> None:
    import scoring.compiled
    from scoring.health import MODEL_REVISION

    result = CliRunner().invoke(main, ["version"])
    assert result.exit_code == 0
    assert result.output.startswith("healthscore ")
    assert f"model revision {MODEL_REVISION}, {scoring.compiled.status}" in result.output


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("command", [["topics"], ["sweep"], ["watch", "--limit", "1"], ["generate", "--duration", "1", "--rate", "2"]])
def test_an_unreachable_broker_is_a_clear_error(command: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTHSCORE_KAFKA_BOOTSTRAP", f"127.0.0.1:{unused_port()}")
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 1
    assert "cannot reach Kafka at 127.0.0.1:" in result.output and "healthscore services start" in result.output
    assert "Traceback" not in result.output


def test_a_bad_configuration_stops_every_command_with_the_key_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTHSCORE_PARTITIONS", "many")
    result = CliRunner().invoke(main, ["topics"])
    assert result.exit_code == 1 and "partitions" in result.output and "invalid configuration" in result.output


def test_generate_with_a_fixed_end_writes_the_same_history_every_time(tmp_path: Path) -> None:
    """The history a measurement was made on can be written again byte for byte (docs/alerts.md)."""
    files = []
    for run in ("a", "b"):
        output = tmp_path / f"{run}.jsonl"
        result = CliRunner().invoke(main, ["generate", "--customers", "20", "--events", "300", "--history-days", "30", "--end", "2026-11-22", "--output", str(output)])
        assert result.exit_code == 0, result.output
        files.append(output.read_bytes())
    assert files[0] == files[1]
    last = json.loads(files[0].splitlines()[-1])
    assert last["occurred_at"] == 1_795_305_600_000  # 2026-11-22T00:00:00Z


def test_end_goes_with_output() -> None:
    result = CliRunner().invoke(main, ["generate", "--end", "2026-11-22"])
    assert result.exit_code == 2 and "--end goes with --output" in result.output


def test_deliver_without_endpoints_refuses_to_start_rather_than_consume_alerts_for_nobody() -> None:
    from click.testing import CliRunner

    from stream.cli import main

    result = CliRunner().invoke(main, ["deliver"])
    assert result.exit_code != 0 and "no [[delivery.endpoints]] configured" in result.output


@pytest.mark.parametrize("at", ["2031-01-01T00:00:00Z", "4102444799999"])
def test_a_sweep_in_the_future_is_refused_before_anything_is_sent(at: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo in --at would evict every customer silent for state_ttl_days at that time."""
    monkeypatch.setenv("HEALTHSCORE_KAFKA_BOOTSTRAP", f"127.0.0.1:{unused_port()}")  # nothing listens: not even tried
    result = CliRunner().invoke(main, ["sweep", "--at", at])
    assert result.exit_code == 2, result.output
    assert "max_future_skew_seconds" in result.output and "--at" in result.output
    assert "cannot reach Kafka" not in result.output


@pytest.mark.parametrize(("args", "hint"), [(["erase", "x" * 257], "CUSTOMER_IDS"), (["erase", "acme", "--reason", "r" * 257], "--reason")])
def test_erase_refuses_what_cannot_be_a_customer_or_a_reason(args: list[str], hint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTHSCORE_PRIVACY__HASH_KEY", "a-test-hash-key-0123456789abcdef")
    monkeypatch.setenv("HEALTHSCORE_KAFKA_BOOTSTRAP", f"127.0.0.1:{unused_port()}")  # refused before any Kafka call
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and hint in result.output and "256 characters" in result.output


def test_generate_with_csm_adds_the_companys_side_and_leaves_the_default_mix_as_it_was(tmp_path: Path) -> None:
    """--with-csm emits every event type of the relationship and outreach, validly; without it
    a seed gives byte for byte the events it gave before the option existed (digest of the
    same 3,000 events taken from the code of commit c72a860)."""
    import hashlib
    from collections import Counter

    import msgspec

    from scoring.contract import Event, decode_event
    from stream.commands.generate import EventSynthesizer

    end = 1_790_000_000_000
    default = hashlib.sha256()
    for generated in EventSynthesizer(50, seed=7).timeline(3000, end - 30 * 86_400_000, end):
        default.update(msgspec.json.encode(generated.value))
    assert default.hexdigest() == "d96f9775e0405c9cd59e37122a9cb12cfb69668bf0cf75888cec9756249bc79e"
    types: Counter = Counter()
    for generated in EventSynthesizer(50, seed=7, csm=True).timeline(3000, end - 30 * 86_400_000, end):
        event = decode_event(generated.customer_id.encode(), msgspec.json.encode(generated.value), generated.topic, end, 300_000)
        assert isinstance(event, Event), event
        types[generated.value["type"]] += 1
    assert {"csm.touchpoint", "csm.pulse", "survey.sent", "email.sent", "email.opened", "email.clicked"} <= set(types)
    output = tmp_path / "csm.jsonl"
    result = CliRunner().invoke(main, ["generate", "--customers", "20", "--events", "500", "--end", "2026-11-22", "--output", str(output), "--with-csm"])
    assert result.exit_code == 0, result.output
    assert b'"csm.touchpoint"' in output.read_bytes()
