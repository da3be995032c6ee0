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
        ("HEALTHSCORE_ALERTS__PURCHASE_LAPSE_MIN_PURCHASES", "1", "alerts.purchase_lapse_min_purchases"),
        ("HEALTHSCORE_ALERTS__ACTIONS", '[{"rule": "silense", "action": "call", "owner": "csm", "due_hours": 24}]', "alerts.actions"),
        ("HEALTHSCORE_ALERTS__ACTIONS", '[{"rule": "silence", "action": "call", "owner": "csm", "due_hours": 0}]', "alerts.actions"),
        ("HEALTHSCORE_CANCELLATION_REASONS", '["price", "Too Expensive!"]', "cancellation_reasons"),
        ("HEALTHSCORE_SCORING__HEALTHY_MIN_ACTIVE_DAYS", "-1", "scoring.healthy_min_active_days"),
        ("HEALTHSCORE_EXPANSION__MIN_CONFIDENCE", "1.5", "expansion.min_confidence"),
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


def test_the_api_is_not_served_beyond_loopback_without_tokens(tmp_path) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(web_host="0.0.0.0")
    assert "api_tokens" in str(refused.value) and "allow_unauthenticated_api" in str(refused.value)
    assert load_settings(web_host="0.0.0.0", allow_unauthenticated_api=True).all_api_tokens() == []
    assert load_settings(web_host="::1").all_api_tokens() == []  # loopback: fine without tokens
    tokens = tmp_path / "tokens"
    long = "x" * 24
    tokens.write_text(f"file-token-1-{long}\n\nfile-token-2-{long}\n")
    settings = load_settings(web_host="0.0.0.0", api_tokens=[f"setting-token-{long}"], api_tokens_file=str(tokens))
    assert settings.all_api_tokens() == [f"setting-token-{long}", f"file-token-1-{long}", f"file-token-2-{long}"]
    assert "setting-token" not in repr(settings) and "setting-token" not in str(settings.model_dump())


@pytest.mark.parametrize(("overrides", "named"), [
    ({"api_tokens": ["a"]}, "api_tokens[0]"),
    ({"api_tokens": ["y" * 32, "short-token"]}, "api_tokens[1]"),
    ({"metrics_token": "metrics-31-characters-long-xxxx"}, "metrics_token"),
])
def test_a_bearer_token_shorter_than_32_characters_is_refused_without_showing_it(overrides: dict, named: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(**overrides)
    assert named in str(refused.value) and "at least 32 characters" in str(refused.value)
    assert "short-token" not in str(refused.value) and "metrics-31" not in str(refused.value)


def test_a_short_token_in_the_tokens_file_is_refused_naming_its_line(tmp_path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("z" * 40 + "\n\ntoo-short\n")
    with pytest.raises(SettingsError, match="api_tokens_file line 3"):
        load_settings(api_tokens_file=str(tokens))


def test_a_missing_tokens_file_is_an_error_naming_it(tmp_path) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(api_tokens_file=str(tmp_path / "missing"))
    assert "api_tokens_file" in str(refused.value) and "missing" in str(refused.value)


def test_https_needs_both_files_and_a_key_that_loads(tmp_path) -> None:
    with pytest.raises(SettingsError, match="web_tls_certfile and web_tls_keyfile go together"):
        load_settings(web_tls_certfile=tmp_path / "cert.pem")
    (tmp_path / "cert.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    with pytest.raises(SettingsError, match="web_tls_keyfile: .*missing.pem is not a file"):
        load_settings(web_tls_certfile=tmp_path / "cert.pem", web_tls_keyfile=tmp_path / "missing.pem")
    settings = load_settings(web_tls_certfile=tmp_path / "cert.pem", web_tls_keyfile=tmp_path / "key.pem")
    with pytest.raises(SettingsError, match="web_tls_certfile / web_tls_keyfile cannot be loaded"):
        settings.web_ssl_context()
    assert load_settings().web_ssl_context() is None


def test_kafka_bootstrap_and_kafka_dot_bootstrap_are_one_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEALTHSCORE_KAFKA_BOOTSTRAP", "old-style:9092")
    assert load_settings().kafka.bootstrap == "old-style:9092"
    monkeypatch.delenv("HEALTHSCORE_KAFKA_BOOTSTRAP")
    monkeypatch.setenv("HEALTHSCORE_KAFKA__BOOTSTRAP", "b-1:9096,b-2:9096")
    assert load_settings().kafka_bootstrap == "b-1:9096,b-2:9096"
    monkeypatch.setenv("HEALTHSCORE_KAFKA_BOOTSTRAP", "elsewhere:9092")
    with pytest.raises(SettingsError, match="kafka_bootstrap .* and kafka.bootstrap .* disagree"):
        load_settings()


SCRAM = {
    "HEALTHSCORE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
    "HEALTHSCORE_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
    "HEALTHSCORE_KAFKA__SASL_USERNAME": "healthscore",
    "HEALTHSCORE_KAFKA__SASL_PASSWORD": "pa55-word-never-shown",
}


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"HEALTHSCORE_KAFKA__SASL_MECHANISM": None}, "kafka.sasl_mechanism is required"),
        ({"HEALTHSCORE_KAFKA__SASL_PASSWORD": None}, "HEALTHSCORE_KAFKA__SASL_PASSWORD"),
        ({"HEALTHSCORE_KAFKA__SECURITY_PROTOCOL": "SSL"}, "kafka.sasl_mechanism is set but kafka.security_protocol is SSL"),
        ({"HEALTHSCORE_KAFKA__SECURITY_PROTOCOL": "PLAINTEXT", "HEALTHSCORE_KAFKA__SASL_MECHANISM": None,
          "HEALTHSCORE_KAFKA__SASL_USERNAME": None}, "kafka.sasl_password is set but kafka.security_protocol is PLAINTEXT"),
        ({"HEALTHSCORE_KAFKA__SSL_CAFILE": "/nowhere/ca.pem"}, "kafka.ssl_cafile: /nowhere/ca.pem is not a file"),
        ({"HEALTHSCORE_KAFKA__SSL_KEYFILE": "/nowhere/client.key"}, "kafka.ssl_certfile and kafka.ssl_keyfile go together"),
        ({"HEALTHSCORE_KAFKA__SASL_MECHANISM": "OAUTHBEARER"}, "kafka.sasl_oauth_token_file or kafka.sasl_oauth_token_command"),
        ({"HEALTHSCORE_KAFKA__SECURITY_PROTOCOL": "SASL_TLS"}, "kafka.security_protocol"),
    ],
)
def test_kafka_security_settings_that_cannot_work_are_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, changes: dict[str, str | None], named: str
) -> None:
    for key, value in {**SCRAM, **changes}.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert named in str(raised.value)
    assert "pa55-word-never-shown" not in str(raised.value)


def test_the_kafka_password_is_a_secret_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in SCRAM.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == "pa55-word-never-shown"
    assert "pa55-word-never-shown" not in repr(settings) + str(settings) + settings.model_dump_json()


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"HEALTHSCORE_REDIS_URL": "redis://:hunter2-pw@redis:6379/0"}, "redis_url carries a password: move it to redis_password"),
        ({"HEALTHSCORE_REDIS_URL": "http://redis:6379"}, "redis_url must start with redis:// or rediss://"),
        ({"HEALTHSCORE_REDIS_TLS_CAFILE": "/etc/hosts"}, "redis_tls_cafile is set but redis_url is not rediss://"),
        ({"HEALTHSCORE_REDIS_URL": "rediss://redis:6380/0", "HEALTHSCORE_REDIS_TLS_CAFILE": "/nowhere.pem"}, "redis_tls_cafile: /nowhere.pem is not a file"),
        ({"HEALTHSCORE_REDIS_URL": "rediss://redis:6380/0", "HEALTHSCORE_REDIS_TLS_KEYFILE": "/etc/hosts"}, "redis_tls_certfile and redis_tls_keyfile go together"),
        ({"HEALTHSCORE_REDIS_CLUSTER": "true", "HEALTHSCORE_REDIS_KEY_PREFIX": "{hs}"}, "must not contain { or }"),
    ],
)
def test_redis_connection_settings_that_cannot_work_are_refused(monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], named: str) -> None:
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert named in str(raised.value)
    assert "hunter2-pw" not in str(raised.value)


def test_the_docs_list_the_redis_acl_the_tests_run_the_worker_with() -> None:
    from pathlib import Path

    from stream.sinks.redis_connection import CLUSTER_ACL_EXTRA, WORKER_ACL

    readme = (Path(__file__).resolve().parents[2] / "docs" / "deploy.md").read_text()
    assert f"ACL SETUSER healthscore >PASSWORD {WORKER_ACL.replace('PREFIX', 'healthscore')}" in readme
    assert f"ACL SETUSER healthscore {CLUSTER_ACL_EXTRA}" in readme


@pytest.mark.parametrize(("overrides", "named"), [
    ({"agent_stall_seconds": 0}, "agent_stall_seconds"),
    ({"agent_stall_seconds": 10**9}, "agent_stall_seconds"),
    ({"changelog_max_compaction_lag_days": -1}, "changelog_max_compaction_lag_days"),
    ({"changelog_max_compaction_lag_days": 10**6}, "changelog_max_compaction_lag_days"),
    ({"privacy": {"erasure_quarantine_days": -1}}, "erasure_quarantine_days"),
    ({"privacy": {"erasure_quarantine_days": 1e9}}, "erasure_quarantine_days"),
    ({"kafka": {"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER", "sasl_oauth_token_command": []}}, "needs a program"),
    ({"kafka": {"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER", "sasl_oauth_token_command": ["", "x"]}}, "needs a program"),
    ({"kafka": {"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER", "sasl_oauth_token_command": "  "}}, "is empty"),
])
def test_the_new_settings_refuse_values_that_make_no_sense(overrides: dict, named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings(**overrides)


def test_the_shipped_playbook_is_the_default_one() -> None:
    from scoring.alerts import AlertParameters

    # config/healthscore.toml writes the defaults out for people to edit: they must be the same.
    assert load_settings().alerts.parameters() == AlertParameters()
