"""Settings: defaults from config/, environment overrides, and errors that name the key."""

from __future__ import annotations

import pytest

from stream.settings import SettingsError, load_settings


def test_defaults_come_from_the_config_file() -> None:
    settings = load_settings()
    assert settings.topics.purchases == "purchases"
    assert settings.partitions == 8
    assert settings.scoring.parameters().weights["usage"] == 0.30


def test_environment_overrides_nested_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTHSCORE_TOPICS__PURCHASES", "orders")
    monkeypatch.setenv("HEALTHSCORE_SCORING__HEALTHY_MIN", "75")
    settings = load_settings()
    assert settings.topics.purchases == "orders"
    assert settings.topics.usage == "product-usage"
    assert settings.scoring.healthy_min == 75


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(Exception):
        settings.partitions = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("variable", "value", "named_key"),
    [
        ("HEALTHSCORE_PARTITIONS", "zero", "partitions"),
        ("HEALTHSCORE_PARTITIONS", "0", "partitions"),
        ("HEALTHSCORE_SCORING__WEIGHTS", '{"usgae": 1}', "scoring.weights"),
        ("HEALTHSCORE_SCORING__WEIGHTS", '{"usage": -1, "payments": 1}', "scoring.weights"),
        ("HEALTHSCORE_SCORING__AT_RISK_MIN", "80", "scoring"),
        ("HEALTHSCORE_WEB_PORT", "70000", "web_port"),
        ("HEALTHSCORE_PRODUCER_COMPRESSION", "brotli", "producer_compression"),
        ("HEALTHSCORE_NO_SUCH_KEY", "1", None),
    ],
)
def test_bad_values_fail_with_the_key_named(monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named_key: str | None) -> None:
    monkeypatch.setenv(variable, value)
    if named_key is None:
        load_settings()  # unknown environment variables are ignored: they may belong to other tools
        return
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert f"  {named_key}" in str(error.value)


def test_a_missing_config_file_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("HEALTHSCORE_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(SettingsError, match="not a file"):
        load_settings()


def test_an_unknown_key_in_the_config_file_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    config = tmp_path / "healthscore.toml"
    config.write_text('partitons = 4\n')
    monkeypatch.setenv("HEALTHSCORE_CONFIG", str(config))
    with pytest.raises(SettingsError, match="partitons"):
        load_settings()


@pytest.mark.parametrize(
    ("variable", "value", "named_key"),
    [
        ("HEALTHSCORE_SCORING__BGNBD", '{"r": 0.2, "alpha": 4, "a": 0.8}', "scoring.bgnbd.b"),
        ("HEALTHSCORE_SCORING__BGNBD", '{"r": -1, "alpha": 4, "a": 0.8, "b": 2}', "scoring.bgnbd.r"),
        ("HEALTHSCORE_SCORING__BGNBD", '{"r": 1, "alpha": 4, "a": 0.8, "b": 2, "time_unit": "month"}', "scoring.bgnbd.time_unit"),
        ("HEALTHSCORE_SCORING__SEGMENTS", '{"enterprise": {"weights": {"usage": -2}}}', "scoring.segments.enterprise.weights"),
        ("HEALTHSCORE_SCORING__USAGE_HALF_LIFE_DAYS", "0", "scoring.usage_half_life_days"),
    ],
)
def test_scoring_model_settings_are_validated(monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named_key: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert f"  {named_key}" in str(error.value)


def test_fitted_parameters_and_segments_reach_the_scoring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTHSCORE_SCORING__BGNBD", '{"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426, "time_unit": "week"}')
    monkeypatch.setenv("HEALTHSCORE_SCORING__SEGMENTS", '{"enterprise": {"weights": {"usage": 1, "payments": 1}}}')
    parameters = load_settings().scoring.parameters()
    assert parameters.bgnbd.r == 0.243 and parameters.bgnbd_time_unit_days == 7.0
    assert parameters.weights_for("enterprise") == {"usage": 1, "payments": 1}
    assert parameters.weights_for(None) == parameters.weights
    monkeypatch.delenv("HEALTHSCORE_SCORING__BGNBD")
    assert parameters.model_version != load_settings().scoring.parameters().model_version


def test_a_buffer_smaller_than_four_fetches_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTHSCORE_FETCH_MAX_RECORDS", "5000")
    monkeypatch.setenv("HEALTHSCORE_STREAM_BUFFER_EVENTS", "10000")
    with pytest.raises(SettingsError, match="stream_buffer_events"):
        load_settings()


def test_throughput_settings_have_their_defaults() -> None:
    settings = load_settings()
    assert settings.batch_max_events == 2000
    assert settings.producer_compression == "none"
    assert settings.stream_buffer_events >= 4 * settings.fetch_max_records
    assert settings.changelog_writes == "per_commit"
    assert settings.commit_every_events == 25_000


@pytest.mark.parametrize("value", ["per_event", "always", ""])
def test_an_unknown_changelog_mode_is_refused_naming_the_key(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("HEALTHSCORE_CHANGELOG_WRITES", value)
    with pytest.raises(SettingsError, match="changelog_writes"):
        load_settings()
