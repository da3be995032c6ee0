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


def test_the_documented_token_command_runs_as_written_in_a_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/deploy.md's `curl ... | jq -r .access_token`, against an identity provider on 127.0.0.1
    (its URL the only change), with the client's credentials from the environment."""
    import re
    import threading
    import tomllib
    from base64 import b64encode
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from stream.settings import PROJECT_ROOT

    line = next(line for line in (PROJECT_ROOT / "docs" / "deploy.md").read_text().splitlines() if line.startswith('sasl_oauth_token_command = "curl'))
    command = tomllib.loads(line)["sasl_oauth_token_command"]
    seen: list[tuple[str, bytes]] = []

    class IdentityProvider(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            seen.append((self.headers["Authorization"], self.rfile.read(int(self.headers["Content-Length"]))))
            body = b'{"access_token": "token-from-the-idp", "token_type": "Bearer", "expires_in": 3600}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), IdentityProvider)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        local = re.sub(r"https://idp\.example\.com", f"http://127.0.0.1:{server.server_address[1]}", command)
        monkeypatch.setenv("OAUTH_CLIENT_ID", "healthscore")
        monkeypatch.setenv("OAUTH_CLIENT_SECRET", "s3cret")
        kafka = scram(sasl_mechanism="OAUTHBEARER", sasl_username=None, sasl_password=None, sasl_oauth_token_command=local)
        assert asyncio.run(OAuthTokenSource(kafka).token()) == "token-from-the-idp"
    finally:
        server.shutdown()
    assert seen == [(f"Basic {b64encode(b'healthscore:s3cret').decode()}", b"grant_type=client_credentials")]


def test_a_token_command_given_as_a_list_runs_without_a_shell() -> None:
    kafka = scram(sasl_mechanism="OAUTHBEARER", sasl_username=None, sasl_password=None,
                  sasl_oauth_token_command=[sys.executable, "-c", "import sys; print(sys.argv[1])", "$NOT_EXPANDED | x"])
    assert asyncio.run(OAuthTokenSource(kafka).token()) == "$NOT_EXPANDED | x"
