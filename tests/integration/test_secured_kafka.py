"""A secured cluster, as managed Kafka is: a broker whose only client listener is SASL_SSL
(SCRAM-SHA-512, PLAIN and OAUTHBEARER logins; a CA and broker certificate made by openssl
here), and no PLAINTEXT access. The worker, `topics`, `generate`, `watch` and `sweep` work
through it from the [kafka] settings alone; a wrong password, a wrong CA or a plaintext
client stop with one sentence naming the setting, and exit non-zero; the alert ledger with
refused credentials holds its alerts back instead of sending them unchecked."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from pydantic import SecretStr

from stream import metrics
from stream.kafka.clients import connection_options
from stream.services.local import SecuredListener, ServicePaths, start_kafka
from stream.settings import isolated_environment
from stream.sinks.alert_ledger import AlertLedger
from tests.helpers import run_cli as shared_run_cli
from tests.integration.conftest import (
    Certificates,
    Namespace,
    WorkerProcess,
    free_port,
    make_certificates,
    make_namespace,
    stop_broker,
    wait_for,
)

PASSWORD = "hs-Secr3t-pw"
WRONG_PASSWORD = "not-the-Secr3t"


@dataclass
class SecuredBroker:
    paths: ServicePaths
    port: int
    certificates: Certificates

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self, **overrides: str) -> dict[str, str]:
        """The [kafka] settings of a client of this cluster, as environment variables."""
        env = {
            "HEALTHSCORE_KAFKA__BOOTSTRAP": self.bootstrap,
            "HEALTHSCORE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "HEALTHSCORE_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
            "HEALTHSCORE_KAFKA__SASL_USERNAME": "healthscore",
            "HEALTHSCORE_KAFKA__SASL_PASSWORD": PASSWORD,
            "HEALTHSCORE_KAFKA__SSL_CAFILE": str(self.certificates.ca),
        }
        env.update({f"HEALTHSCORE_KAFKA__{key.upper()}": value for key, value in overrides.items()})
        return {key: value for key, value in env.items() if value}

    def kcat(self, *args: str, payload: bytes | None = None) -> subprocess.CompletedProcess:
        """kcat (librdkafka) as a producer or consumer of this cluster would run it. With PLAIN
        over TLS: Debian's librdkafka 2.0.2 fails SCRAM with this broker (Kafka 4.1) where
        aiokafka and the broker's own clients succeed, so the user's password is checked by PLAIN."""
        result = subprocess.run(
            ["kcat", "-b", self.bootstrap, "-X", "security.protocol=SASL_SSL", "-X", "sasl.mechanisms=PLAIN",
             "-X", "sasl.username=healthscore", "-X", f"sasl.password={PASSWORD}", "-X", f"ssl.ca.location={self.certificates.ca}",
             *args],
            input=payload, capture_output=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr.decode()
        return result


@pytest.fixture(scope="module")
def secured_broker(services: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBroker]:
    directory = tmp_path_factory.mktemp("secured")
    certificates = make_certificates(directory / "certificates")
    broker = SecuredBroker(ServicePaths(directory / "services"), free_port(), certificates)
    listener = SecuredListener(certificates.keystore, certificates.ca, {"admin": "admin-Secr3t", "healthscore": PASSWORD})
    start_kafka(broker.paths, port=broker.port, controller_port=free_port(), echo=lambda _: None, secured=listener)
    yield broker
    stop_broker(broker.paths)


def secured_namespace(broker: SecuredBroker, tmp_path: Path, partitions: int = 4) -> Namespace:
    """A namespace of its own on the secured broker; its topics are made by `healthscore topics`."""
    return make_namespace(tmp_path, partitions, extra_env=broker.env(), create_topics=False)


def run_cli(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """A command against the secured broker: without the shared broker's
    HEALTHSCORE_KAFKA_BOOTSTRAP, which would contradict kafka.bootstrap."""
    return shared_run_cli(env, *args, timeout=timeout, drop=("HEALTHSCORE_KAFKA_BOOTSTRAP",))


def swept_customers(worker: WorkerProcess) -> float:
    text = urllib.request.urlopen(worker.metrics_url, timeout=5).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("healthscore_sweep_customers_total"))


def test_the_worker_and_every_command_work_through_sasl_ssl(secured_broker: SecuredBroker, tmp_path: Path) -> None:
    namespace = secured_namespace(secured_broker, tmp_path)
    created = run_cli(namespace.env, "topics")
    assert created.returncode == 0, created.stderr
    checked = run_cli(namespace.env, "topics", "--check")
    assert checked.returncode == 0, checked.stdout + checked.stderr

    worker = WorkerProcess(namespace, tmp_path / "worker.log")
    worker.start()
    try:
        generated = run_cli(namespace.env, "generate", "--customers", "20", "--rate", "200", "--duration", "1")
        assert generated.returncode == 0, generated.stderr
        # kcat (librdkafka) is a producer of the same cluster, as a user's would be.
        event = {"event_id": "kcat-1", "type": "usage.session", "customer_id": "kcat-customer",
                 "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "data": {"user_id": "u", "duration_seconds": 60}}
        secured_broker.kcat("-P", "-t", namespace.topic("usage"), "-K", "\t", "-X", "partitioner=murmur2_random",
                            payload=b"kcat-customer\t" + json.dumps(event).encode() + b"\n")

        def scored() -> list[str]:
            watched = run_cli(namespace.env, "watch", "--from-beginning", "--idle-timeout", "3")
            assert watched.returncode == 0, watched.stderr
            return watched.stdout.splitlines() if "kcat-customer" in watched.stdout else []

        lines = wait_for(scored, timeout=90, interval=2, message="scores through SASL_SSL", explain=worker.log_tail)
        assert len({line.split()[0] for line in lines}) >= 10  # the generator's customers too

        swept = run_cli(namespace.env, "sweep")
        assert swept.returncode == 0 and "Sweep requested on 4 partition(s)" in swept.stdout, swept.stderr
        wait_for(lambda: swept_customers(worker) >= 21, timeout=60, message="the sweep through SASL_SSL", explain=worker.log_tail)
    finally:
        worker.stop()
    assert PASSWORD not in worker.log_path.read_text()


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"sasl_password": WRONG_PASSWORD}, "kafka.sasl_password"),
        ({"ssl_cafile": "OTHER_CA"}, "kafka.ssl_cafile"),
        ({"security_protocol": "PLAINTEXT", "sasl_mechanism": "", "sasl_username": "", "sasl_password": "", "ssl_cafile": ""}, "kafka.security_protocol"),
    ],
    ids=["wrong-password", "wrong-ca", "plaintext-client"],
)
def test_a_refused_connection_stops_the_worker_at_start_naming_the_setting(
    secured_broker: SecuredBroker, tmp_path: Path, overrides: dict[str, str], named: str
) -> None:
    if overrides.get("ssl_cafile") == "OTHER_CA":
        overrides = {"ssl_cafile": str(secured_broker.certificates.other_ca)}
    env = {**isolated_environment("refused", 4, free_port(), tmp_path / "data"), **secured_broker.env(**overrides)}
    started = run_cli(env, "worker", timeout=60)
    assert started.returncode != 0
    assert named in started.stderr, started.stderr
    assert "Traceback" not in started.stderr
    assert WRONG_PASSWORD not in started.stderr + started.stdout and PASSWORD not in started.stderr + started.stdout


@pytest.mark.parametrize("command", [["topics"], ["topics", "--check"], ["sweep"], ["watch", "--idle-timeout", "1"],
                                     ["generate", "--duration", "0.5"]], ids=lambda c: " ".join(c))
def test_every_command_with_a_wrong_password_says_which_setting_to_fix(secured_broker: SecuredBroker, tmp_path: Path, command: list[str]) -> None:
    env = {**isolated_environment("refused", 4, free_port(), tmp_path / "data"), **secured_broker.env(sasl_password=WRONG_PASSWORD)}
    result = run_cli(env, *command)
    assert result.returncode != 0
    assert "kafka.sasl_password" in result.stderr, result.stderr
    assert WRONG_PASSWORD not in result.stderr + result.stdout


def unsigned_token(subject: str) -> str:
    """An OAUTHBEARER token the broker's default (unsecured) validator accepts: a JWT with no signature."""

    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    now = int(time.time())
    return f"{part({'alg': 'none'})}.{part({'sub': subject, 'iat': now, 'exp': now + 3600})}."


def test_oauthbearer_takes_its_token_from_a_file_or_a_command(secured_broker: SecuredBroker, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(unsigned_token("healthscore") + "\n")
    names = {key: value for key, value in secured_namespace(secured_broker, tmp_path).env.items() if not key.startswith("HEALTHSCORE_KAFKA__")}
    oauth = {"sasl_mechanism": "OAUTHBEARER", "sasl_username": "", "sasl_password": ""}
    from_file = run_cli({**names, **secured_broker.env(**oauth, sasl_oauth_token_file=str(token))}, "topics")
    assert from_file.returncode == 0, from_file.stderr
    from_command = run_cli({**names, **secured_broker.env(**oauth, sasl_oauth_token_command=f"cat {token}")}, "topics", "--check")
    assert from_command.returncode == 0, from_command.stdout + from_command.stderr
    refused = run_cli({**names, **secured_broker.env(**oauth, sasl_oauth_token_command="echo not-a-token")}, "topics", "--check")
    assert refused.returncode != 0 and "kafka.sasl_oauth_token_command" in refused.stderr, refused.stderr


def test_the_alert_ledger_with_refused_credentials_holds_alerts_back(secured_broker: SecuredBroker, tmp_path: Path) -> None:
    namespace = secured_namespace(secured_broker, tmp_path)
    assert run_cli(namespace.env, "topics").returncode == 0
    settings = namespace.settings
    refused = settings.kafka.model_copy(update={"sasl_password": SecretStr(WRONG_PASSWORD)})
    ledger = AlertLedger(connection_options(refused), settings.topics.alerts, 100)
    ledger.retry_seconds = 0.2

    async def check(ledger: AlertLedger) -> bool | None:
        try:
            return await asyncio.wait_for(ledger.is_published(0, "an-alert"), 5)
        except asyncio.TimeoutError:
            return None  # still waiting: the alert is not sent

    waiting_before = metrics.ALERTS_WAITING_FOR_LEDGER._value.get()

    async def refused_run() -> tuple[bool | None, float]:
        task = asyncio.create_task(check(ledger))
        for _ in range(100):  # until the gauge says the alert waits (at most 5 s)
            if metrics.ALERTS_WAITING_FOR_LEDGER._value.get() == waiting_before + 1:
                break
            await asyncio.sleep(0.05)
        waiting = metrics.ALERTS_WAITING_FOR_LEDGER._value.get()
        return await task, waiting

    answer, waiting = asyncio.run(refused_run())
    assert answer is None  # neither "published" nor "not published, send it": it waits
    assert waiting == waiting_before + 1
    accepted = AlertLedger(connection_options(settings.kafka), settings.topics.alerts, 100)
    assert asyncio.run(check(accepted)) is False  # the same check with the right password answers at once
