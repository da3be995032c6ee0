"""The worker's settings reach the Faust app it builds (no broker needed to build one)."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from pathlib import Path

import faust
import pytest

from stream.worker.app import build_app
from stream.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_a_killed_workers_partitions_move_after_ten_seconds_by_default() -> None:
    """bench/failover.py: every customer scored again 11.0-11.9 s after a SIGKILL at 10 s."""
    assert Settings().session_timeout_seconds == 10.0
    assert build_app(Settings()).conf.broker_session_timeout == 10.0


def test_no_standby_replicas_by_default() -> None:
    """With the in-memory store a standby copy is never used, and reading another worker's
    changelog cost each of two workers a share of its CPU (bench/throughput.py scaling)."""
    assert Settings().standby_replicas == 0
    assert build_app(Settings()).conf.table_standby_replicas == 0


@pytest.mark.parametrize(
    ("setting", "value", "faust_setting", "expected"),
    [
        ("standby_replicas", 1, "table_standby_replicas", 1),
        ("stream_buffer_events", 40_000, "stream_buffer_maxsize", 40_000),
        ("fetch_max_records", 500, "broker_max_poll_records", 500),
        ("producer_batch_bytes", 65_536, "producer_max_batch_size", 65_536),
        ("producer_linger_seconds", 0.02, "producer_linger", 0.02),
        ("producer_compression", "zstd", "producer_compression_type", "zstd"),
        ("producer_compression", "none", "producer_compression_type", None),
        ("commit_interval_seconds", 1.5, "broker_commit_interval", 1.5),
        ("commit_every_events", 5_000, "broker_commit_every", 5_000),
        ("session_timeout_seconds", 30.0, "broker_session_timeout", 30.0),
    ],
)
def test_a_setting_reaches_faust(setting: str, value: object, faust_setting: str, expected: object) -> None:
    app = build_app(Settings(**{setting: value}))
    assert getattr(app.conf, faust_setting) == expected


def test_scores_go_to_redis_at_the_configured_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    intervals: dict[str, float] = {}
    register_timer = faust.App.timer

    def recording_timer(self: faust.App, interval: float, **options: object):  # type: ignore[no-untyped-def]
        register = register_timer(self, interval, **options)

        def recorded(job):  # type: ignore[no-untyped-def]
            intervals[job.__name__] = interval
            return register(job)

        return recorded

    monkeypatch.setattr(faust.App, "timer", recording_timer)
    build_app(Settings(redis_flush_interval_seconds=2.0))
    assert intervals["flush_cache"] == 2.0
    assert Settings().redis_flush_interval_seconds == 0.5


def test_the_worker_runs_the_rust_kernel_where_it_can_and_says_which_model_runs(caplog: pytest.LogCaptureFixture) -> None:
    from scoring import kernel
    from scoring.bgnbd import BgNbdParameters
    from stream.processing.events import native_kernel_for

    settings = Settings()
    parameters, rules = settings.scoring.parameters(), settings.alerts.parameters()
    assert settings.native_kernel is True
    with caplog.at_level("INFO", logger="healthscore.worker"):
        assert native_kernel_for(settings.model_copy(update={"native_kernel": False}), parameters, rules) is None
        bgnbd = dataclasses.replace(parameters, bgnbd=BgNbdParameters(r=0.24, alpha=4.4, a=0.79, b=2.4))
        assert native_kernel_for(settings, bgnbd, rules) is None
        chosen = native_kernel_for(settings, parameters, rules)
    assert (chosen is not None) == kernel.available()
    assert [record.getMessage() for record in caplog.records] == [
        "Each event goes through the Python model (native_kernel = false)",
        "Each event goes through the Python model (the Rust kernel does not compute BG/NBD yet)"
        if kernel.available()
        else "Each event goes through the Python model (the Rust kernel is not built)",
        "Each event goes through the Rust kernel" if kernel.available() else "Each event goes through the Python model (the Rust kernel is not built)",
    ]


def test_the_fetch_wait_reaches_aiokafka_instead_of_fausts_fixed_one_and_a_half_seconds() -> None:
    """aiokafka sends one fetch per broker at a time: while partitions read to their end wait in
    one, every other partition waits too (stream/kafka/batching.py, FetchTunedConsumerThread)."""

    async def fetch_wait_ms(settings: Settings) -> int:
        app = build_app(settings)
        consumer = app.consumer._thread._create_worker_consumer(app.transport)  # type: ignore[attr-defined]
        try:
            return consumer._fetch_max_wait_ms
        finally:
            await consumer._client.close()

    assert asyncio.run(fetch_wait_ms(Settings())) == 100
    assert asyncio.run(fetch_wait_ms(Settings(fetch_max_wait_seconds=0.25))) == 250


@pytest.mark.parametrize(("writes", "hooked"), [("per_commit", True), ("per_batch", False)])
def test_changelog_records_wait_for_the_commit_only_when_configured(writes: str, hooked: bool) -> None:
    """Per commit (the default) the consumer writes them just before it commits offsets; per batch the agent does."""
    assert Settings().changelog_writes == "per_commit"
    consumer_class = build_app(Settings(changelog_writes=writes)).transport.Consumer
    assert (consumer_class.before_commit is not None) == hooked


def test_a_worker_on_the_in_memory_store_does_not_load_rocksdb() -> None:
    """Its library is about 7 MB of resident memory (stream/state/rocks.py); a fresh interpreter,
    since other tests here load it."""
    code = (
        "import sys\n"
        "from stream.settings import Settings\n"
        "from stream.worker.app import build_app\n"
        "build_app(Settings(state_store='memory'))\n"
        "print('rocksdict' in sys.modules)\n"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert loaded.stdout.strip() == "False", loaded.stderr
