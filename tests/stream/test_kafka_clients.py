"""Every Kafka client connects from the one [kafka] block: aiokafka's keyword arguments and
Faust's credentials say the same thing, and an OAUTHBEARER token comes from a file or a command."""

from __future__ import annotations

import asyncio
import ssl
import sys
from pathlib import Path

import faust
import pytest

from stream.kafka.clients import KafkaAccessError, OAuthTokenSource, check_access, connection_options, faust_broker_options
from stream.settings import KafkaSettings


def scram(**changes: object) -> KafkaSettings:
    return KafkaSettings(**{  # type: ignore[arg-type]
        "bootstrap": "b-1:9096, b-2:9096", "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "healthscore", "sasl_password": "secret", **changes,
    })


def test_aiokafka_clients_get_tls_and_the_scram_login() -> None:
    options = connection_options(scram(client_id="hs-eu"))
    assert options["bootstrap_servers"] == "b-1:9096, b-2:9096"
    assert options["security_protocol"] == "SASL_SSL" and options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "healthscore" and options["sasl_plain_password"] == "secret"
    assert isinstance(options["ssl_context"], ssl.SSLContext) and options["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert options["client_id"] == "hs-eu"


def test_plaintext_clients_get_no_tls_and_no_login() -> None:
    options = connection_options(KafkaSettings())
    assert options["security_protocol"] == "PLAINTEXT" and options["ssl_context"] is None
    assert "sasl_mechanism" not in options


def test_faust_gets_the_same_connection_as_credentials() -> None:
    options = faust_broker_options(scram())
    assert options["broker"] == ["kafka://b-1:9096", "kafka://b-2:9096"]
    credentials = options["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL" and credentials.mechanism.value == "SCRAM-SHA-512"
    assert credentials.password == "secret" and "secret" not in repr(credentials)
    assert isinstance(faust_broker_options(KafkaSettings(security_protocol="SSL"))["broker_credentials"], faust.SSLCredentials)
    assert faust_broker_options(KafkaSettings())["broker_credentials"] is None


def test_oauthbearer_reads_its_token_from_a_file_each_time(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first-token\n")
    kafka = scram(sasl_mechanism="OAUTHBEARER", sasl_username=None, sasl_password=None, sasl_oauth_token_file=token)
    source = faust_broker_options(kafka)["broker_credentials"].oauth_cb
    assert isinstance(source, OAuthTokenSource)
    assert asyncio.run(source.token()) == "first-token"
    token.write_text("refreshed-token")  # a sidecar rotated it
    assert asyncio.run(source.token()) == "refreshed-token"


def test_oauthbearer_runs_its_token_command_and_a_failing_one_names_the_setting() -> None:
    command = f"{sys.executable} -c \"print('from-command')\""
    kafka = scram(sasl_mechanism="OAUTHBEARER", sasl_username=None, sasl_password=None, sasl_oauth_token_command=command)
    assert asyncio.run(OAuthTokenSource(kafka).token()) == "from-command"
    failing = kafka.model_copy(update={"sasl_oauth_token_command": f"{sys.executable} -c \"raise SystemExit(3)\""})
    with pytest.raises(KafkaAccessError, match="kafka.sasl_oauth_token_command exited with code 3"):
        asyncio.run(OAuthTokenSource(failing).token())


def test_an_unreachable_broker_is_reported_naming_kafka_bootstrap() -> None:
    with pytest.raises(KafkaAccessError, match=r"cannot reach Kafka at 127.0.0.1:1 .*kafka.bootstrap"):
        asyncio.run(check_access(KafkaSettings(bootstrap="127.0.0.1:1")))
    with pytest.raises(KafkaAccessError, match="is not host:port"):
        asyncio.run(check_access(KafkaSettings(bootstrap="no-port")))
