"""How every Kafka client of the project connects, from the one ``[kafka]`` settings block.

The worker's Faust app, its alert ledger's consumer, the admin client of ``topics``, the
producers of ``sweep`` and ``generate`` and the consumer of ``watch`` all take their
connection from here, so a secured cluster (TLS, SASL PLAIN/SCRAM/OAUTHBEARER) is set up
once. :func:`check_access` is the start check: it connects as those clients will and turns
what went wrong into one sentence naming the setting to fix, because aiokafka only logs the
cause and then says "Unable to bootstrap". May import: stream.settings, aiokafka, faust.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import faust
from aiokafka.abc import AbstractTokenProvider
from aiokafka.conn import create_conn
from aiokafka.errors import AuthenticationFailedError, KafkaError
from aiokafka.protocol.metadata import MetadataRequest

from stream.settings import KAFKA_SASL_PROTOCOLS, KAFKA_SSL_PROTOCOLS, KafkaSettings

#: How long the start check waits for each broker of the bootstrap list.
CHECK_TIMEOUT_SECONDS = 15.0
#: Longest an OAUTHBEARER token command may run.
TOKEN_COMMAND_TIMEOUT_SECONDS = 30.0


class KafkaAccessError(RuntimeError):
    """The brokers cannot be reached or refuse us; the message names the setting to fix."""


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context of every client, when the protocol has TLS; an unreadable file is an
    error naming its setting."""
    if kafka.security_protocol not in KAFKA_SSL_PROTOCOLS:
        return None
    try:
        context = ssl.create_default_context(cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None)
    except (ssl.SSLError, OSError) as error:
        raise KafkaAccessError(f"kafka.ssl_cafile {kafka.ssl_cafile} cannot be loaded: {error}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = kafka.ssl_check_hostname
    if kafka.ssl_certfile is not None and kafka.ssl_keyfile is not None:
        try:
            context.load_cert_chain(kafka.ssl_certfile, kafka.ssl_keyfile)
        except (ssl.SSLError, OSError) as error:
            raise KafkaAccessError(f"kafka.ssl_certfile / kafka.ssl_keyfile cannot be loaded: {error}") from None
    return context


class OAuthTokenSource(AbstractTokenProvider):
    """An OAUTHBEARER token read from a file or printed by a command, asked for at each new
    connection: a sidecar (or the command) takes care of refreshing it, so MSK IAM, Confluent
    Cloud OAuth or any identity provider plugs in without code here."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._file = kafka.sasl_oauth_token_file
        self._command = kafka.sasl_oauth_token_command

    async def token(self) -> str:
        if self._file is not None:
            try:
                text = self._file.read_text()
            except OSError as error:
                raise KafkaAccessError(f"kafka.sasl_oauth_token_file cannot be read: {error.strerror}") from None
            source = "kafka.sasl_oauth_token_file"
        else:
            text = await self._run_command()
            source = "kafka.sasl_oauth_token_command"
        token = text.strip()
        if not token:
            raise KafkaAccessError(f"{source} gave an empty token")
        return token

    async def _run_command(self) -> str:
        """A string runs in a shell (``/bin/sh -c``: pipes and variables work, as in docs/deploy.md's
        ``curl ... | jq`` example); a list runs as it is, without one."""
        assert self._command is not None
        try:
            if isinstance(self._command, str):
                process = await asyncio.create_subprocess_shell(
                    self._command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
                )
            else:
                process = await asyncio.create_subprocess_exec(
                    *self._command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
                )
            output, _ = await asyncio.wait_for(process.communicate(), TOKEN_COMMAND_TIMEOUT_SECONDS)
        except (OSError, asyncio.TimeoutError) as error:
            raise KafkaAccessError(f"kafka.sasl_oauth_token_command could not run: {error!r}") from None
        if process.returncode != 0:
            raise KafkaAccessError(f"kafka.sasl_oauth_token_command exited with code {process.returncode}")
        return output.decode()


def _sasl_options(kafka: KafkaSettings) -> dict[str, Any]:
    if kafka.security_protocol not in KAFKA_SASL_PROTOCOLS:
        return {}
    if kafka.sasl_mechanism == "OAUTHBEARER":
        return {"sasl_mechanism": "OAUTHBEARER", "sasl_oauth_token_provider": OAuthTokenSource(kafka)}
    return {
        "sasl_mechanism": kafka.sasl_mechanism,
        "sasl_plain_username": kafka.sasl_username,
        "sasl_plain_password": kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
    }


def connection_options(kafka: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client: where, and how to connect and authenticate."""
    return {
        "bootstrap_servers": kafka.bootstrap,
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol,
        "ssl_context": ssl_context(kafka),
        **_sasl_options(kafka),
    }


def faust_broker_options(kafka: KafkaSettings) -> dict[str, Any]:
    """The same connection as keyword arguments of ``faust.App``: its consumer, producer and
    topic creation all take them."""
    context = ssl_context(kafka)
    credentials: Any = None
    if kafka.security_protocol in KAFKA_SASL_PROTOCOLS and kafka.sasl_mechanism == "OAUTHBEARER":
        credentials = faust.OAuthCredentials(oauth_cb=OAuthTokenSource(kafka), ssl_context=context)
    elif kafka.security_protocol in KAFKA_SASL_PROTOCOLS:
        credentials = faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
            ssl_context=context,
            mechanism=kafka.sasl_mechanism,
        )
    elif context is not None:
        credentials = faust.SSLCredentials(context)
    return {
        "broker": [f"kafka://{host.strip()}" for host in kafka.bootstrap.split(",") if host.strip()],
        "broker_client_id": kafka.client_id,
        "broker_credentials": credentials,
    }


def _hosts(bootstrap: str) -> list[tuple[str, int]]:
    hosts = []
    for entry in (part.strip() for part in bootstrap.split(",")):
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit():
            raise KafkaAccessError(f"kafka.bootstrap: {entry!r} is not host:port")
        hosts.append((host.strip("[]"), int(port)))
    return hosts


def _explain(kafka: KafkaSettings, address: str, error: BaseException) -> str:
    """What a failed connection means, in terms of the settings."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return (
            f"the broker at {address} presented a certificate that is not trusted ({error.verify_message}):"
            " set kafka.ssl_cafile to the CA that signed it (kafka.ssl_check_hostname if the name is the problem)"
        )
    if isinstance(error, ssl.SSLError):
        return f"TLS with the broker at {address} failed ({error.reason}): does kafka.security_protocol match its listener?"
    if isinstance(error, KafkaAccessError):
        return str(error)
    if isinstance(error, asyncio.TimeoutError):
        return (
            f"no answer from {address} within {CHECK_TIMEOUT_SECONDS:g} s: check kafka.bootstrap, and"
            f" kafka.security_protocol ({kafka.security_protocol}) against the listener"
        )
    if isinstance(error, KafkaError) and type(error).__name__ != "KafkaConnectionError":
        if kafka.sasl_mechanism == "OAUTHBEARER":
            source = "kafka.sasl_oauth_token_file" if kafka.sasl_oauth_token_file else "kafka.sasl_oauth_token_command"
            return f"the broker at {address} refused the OAUTHBEARER token ({type(error).__name__}): check the token {source} gives"
        return (
            f"the broker at {address} refused authentication as {kafka.sasl_username!r} with {kafka.sasl_mechanism}"
            f" ({type(error).__name__}): check kafka.sasl_username, kafka.sasl_password and kafka.sasl_mechanism"
        )
    if isinstance(error, KafkaError) or (isinstance(error, ConnectionError) and not isinstance(error, ConnectionRefusedError)):
        return (
            f"the broker at {address} closed the connection: does kafka.security_protocol ({kafka.security_protocol}) match"
            " its listener? (a secured cluster wants SASL_SSL or SSL, with kafka.sasl_mechanism and credentials)"
        )
    return f"cannot reach Kafka at {address} ({error}): check kafka.bootstrap (HEALTHSCORE_KAFKA_BOOTSTRAP), or start a local one with `healthscore services start`"


async def check_access(kafka: KafkaSettings) -> None:
    """Connects and authenticates to each bootstrap broker as every client will; raises
    :class:`KafkaAccessError` naming the setting to fix unless one of them accepts us."""
    options = connection_options(kafka)
    del options["bootstrap_servers"]
    problems = []
    for host, port in _hosts(kafka.bootstrap):
        try:
            connection = await asyncio.wait_for(
                create_conn(host, port, request_timeout_ms=int(CHECK_TIMEOUT_SECONDS * 1000), **options), CHECK_TIMEOUT_SECONDS
            )
        except (OSError, KafkaError, asyncio.TimeoutError, KafkaAccessError) as error:
            problems.append(_explain(kafka, f"{host}:{port}", error))
            continue
        try:  # a listener that wants SASL accepts a bare TLS connection, then drops the first request
            metadata = await asyncio.wait_for(connection.send(MetadataRequest([])), CHECK_TIMEOUT_SECONDS)
        except (OSError, KafkaError, asyncio.TimeoutError) as error:
            problems.append(_explain(kafka, f"{host}:{port}", error))
            continue
        finally:
            connection.close()
        if metadata.brokers:
            return
        # aiokafka takes a refused OAUTHBEARER token for a login; the broker then lists nothing.
        problems.append(_explain(kafka, f"{host}:{port}", AuthenticationFailedError("no brokers listed")))
    raise KafkaAccessError("; ".join(problems))
