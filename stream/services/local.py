"""Starts and stops the real services on this machine: Apache Kafka (KRaft) and Redis.

No Docker: Kafka runs from its Maven Central jars (resolved by services/kafka/pom.xml),
Redis from Debian's ``redis-server``. Everything binds to 127.0.0.1 and keeps its
files under ``.data/``. Starting is idempotent: a service that already answers is
left alone, and two processes starting one at once take turns (``one_start_at_a_time``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from stream.settings import PROJECT_ROOT

KAFKA_DIR = PROJECT_ROOT / "services" / "kafka"
KAFKA_LIBS = KAFKA_DIR / "target" / "libs"


class ServiceError(RuntimeError):
    pass


@dataclass(frozen=True)
class ServicePaths:
    root: Path

    @property
    def kafka(self) -> Path:
        return self.root / "kafka"

    @property
    def redis(self) -> Path:
        return self.root / "redis"


@dataclass(frozen=True)
class SecuredListener:
    """A broker secured as a managed cluster is, for the tests of our clients: its one client
    listener is SASL_SSL (TLS with ``keystore_pem``: a PKCS#8 key and its certificate chain;
    SCRAM-SHA-512 and PLAIN logins for ``users``; OAUTHBEARER with unsigned tokens), and
    there is no PLAINTEXT one. The controller keeps a loopback listener of its own."""

    keystore_pem: Path
    cafile: Path  # the CA that signed it
    users: dict[str, str]  # name -> password; "admin" is the broker's own login

    def properties(self, port: int) -> list[str]:
        secure = "listener.name.secure"
        plain_users = " ".join(f'user_{name}="{password}"' for name, password in self.users.items())
        return [
            f"advertised.listeners=SECURE://127.0.0.1:{port}",
            "listener.security.protocol.map=SECURE:SASL_SSL,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=SECURE",
            "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
            f"{secure}.sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN,OAUTHBEARER",
            f'{secure}.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="{self.users["admin"]}";',
            f'{secure}.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="{self.users["admin"]}" {plain_users};',
            f'{secure}.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required unsecuredLoginStringClaim_sub="admin";',
            f"{secure}.ssl.keystore.type=PEM",
            f"{secure}.ssl.keystore.location={self.keystore_pem}",
            f"{secure}.ssl.truststore.type=PEM",  # the broker's own inter-broker client checks it too
            f"{secure}.ssl.truststore.location={self.cafile}",
        ]

    def scram_arguments(self) -> list[str]:
        """``kafka-storage format`` arguments that create the SCRAM users with the cluster."""
        arguments = []
        for name, password in self.users.items():
            arguments += ["--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]"]
        return arguments

    def client_options(self) -> dict:
        import ssl

        return {
            "security_protocol": "SASL_SSL",
            "ssl_context": ssl.create_default_context(cafile=str(self.cafile)),
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": "admin",
            "sasl_plain_password": self.users["admin"],
        }


def default_paths() -> ServicePaths:
    return ServicePaths(Path(os.environ.get("HEALTHSCORE_SERVICES_DIR", PROJECT_ROOT / ".data" / "services")))


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _wait_until(predicate, timeout: float, what: str, log_file: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    hint = f"; see {log_file}" if log_file else ""
    raise ServiceError(f"{what} did not come up within {timeout:.0f} s{hint}")


def resolve_kafka_jars(echo=print) -> None:
    """Downloads the broker's jars with Maven once; later starts reuse them."""
    if KAFKA_LIBS.is_dir() and any(KAFKA_LIBS.glob("kafka_2.13-*.jar")):
        return
    if shutil.which("mvn") is None:
        raise ServiceError("Maven (mvn) is needed to fetch Apache Kafka; run scripts/setup.sh")
    echo("Resolving Apache Kafka from Maven Central (first run only)...")
    subprocess.run(
        ["mvn", "-q", "-B", "-f", str(KAFKA_DIR / "pom.xml"), "dependency:copy-dependencies", f"-DoutputDirectory={KAFKA_LIBS}"],
        check=True,
    )


#: The broker's JVM: a fixed 1 GB heap and, as Kafka's documentation advises for G1, 16 MB
#: regions. With the default 1 MB regions a produce request of 512 KB or more (the worker's
#: producer batches reach 512 KB) is a "humongous" object, allocated outside the young
#: generation. The broker's GC threads took 0.01-0.16 of a core in each phase of
#: bench/throughput.py's scaling runs, 0.00-0.01 with 16 MB regions (2026-11-30).
BROKER_JVM_OPTIONS = ("-Xms1g", "-Xmx1g", "-XX:+UseG1GC", "-XX:G1HeapRegionSize=16m")


def _kafka_java(main: str, *args: str, log_dir: Path, jvm_options: tuple[str, ...] = ()) -> list[str]:
    """A Kafka class run with the project's jars; ``jvm_options`` for the broker only (the
    storage tool that formats its directory runs for a second and needs no 1 GB heap)."""
    return [
        "java",
        *jvm_options,
        "-cp",
        f"{KAFKA_LIBS}/*",
        f"-Dkafka.logs.dir={log_dir}",
        f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.properties'}",
        main,
        *args,
    ]


def _kafka_properties(data_dir: Path, port: int, controller_port: int, secured: SecuredListener | None = None) -> str:
    listener = "SECURE" if secured else "PLAINTEXT"
    listeners = secured.properties(port) if secured else [
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name=PLAINTEXT",
    ]
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}",
            f"listeners={listener}://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            "controller.listener.names=CONTROLLER",
            *listeners,
            f"log.dirs={data_dir}",
            "num.partitions=8",
            "auto.create.topics.enable=false",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=8",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "log.retention.hours=168",
            "",
        ]
    )


@contextmanager
def one_start_at_a_time(directory: Path) -> Iterator[None]:
    """Two processes starting the same service at once (two test processes, two shells): the
    second waits for the first to finish, then finds the service answering, instead of
    formatting a data directory the first is using. The lock goes with the process."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".start.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def start_kafka(
    paths: ServicePaths, port: int = 9092, controller_port: int = 9093, echo=print, secured: SecuredListener | None = None
) -> bool:
    """Returns True if it started a broker, False if one already answered. With ``secured``,
    ``port`` is its SASL_SSL listener and there is no PLAINTEXT one."""
    with one_start_at_a_time(paths.kafka):
        return _start_kafka(paths, port, controller_port, echo, secured)


def _start_kafka(paths: ServicePaths, port: int, controller_port: int, echo, secured: SecuredListener | None) -> bool:  # type: ignore[no-untyped-def]
    if port_answers("127.0.0.1", port):
        echo(f"Kafka already answers on 127.0.0.1:{port}")
        return False
    resolve_kafka_jars(echo)
    directory = paths.kafka
    data_dir = directory / "data"
    log_dir = directory / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    properties = directory / "server.properties"
    properties.write_text(_kafka_properties(data_dir, port, controller_port, secured))
    if not (data_dir / "meta.properties").exists():
        cluster_id = subprocess.run(
            _kafka_java("kafka.tools.StorageTool", "random-uuid", log_dir=log_dir),
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        subprocess.run(
            _kafka_java(
                "kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id, "-c", str(properties),
                *(secured.scram_arguments() if secured else []), log_dir=log_dir,
            ),
            check=True,
            capture_output=True,
        )
    stdout = open(log_dir / "stdout.log", "ab")
    process = subprocess.Popen(
        _kafka_java("kafka.Kafka", str(properties), log_dir=log_dir, jvm_options=BROKER_JVM_OPTIONS),
        stdout=stdout,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    (directory / "kafka.pid").write_text(str(process.pid))
    echo(f"Starting Kafka (pid {process.pid}) on 127.0.0.1:{port}...")

    def ready() -> bool:
        if process.poll() is not None:
            raise ServiceError(f"Kafka exited with code {process.returncode}; see {log_dir}")
        return _kafka_metadata_answers(port, secured.client_options() if secured else {})

    _wait_until(ready, 90, "Kafka", log_dir / "server.log")
    echo("Kafka is up")
    return True


def _kafka_metadata_answers(port: int, client_options: dict | None = None) -> bool:
    """The broker is ready when a metadata request lists it (not only when the port opens)."""
    if not port_answers("127.0.0.1", port):
        return False
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    async def probe() -> bool:
        client = AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=3000, **(client_options or {}))
        try:
            await client.start()
            await client.list_topics()
            return True
        except Exception:
            return False
        finally:
            await client.close()

    return asyncio.run(probe())


def start_redis(paths: ServicePaths, port: int = 6379, echo=print) -> bool:
    """Returns True if it started Redis, False if it already answered."""
    with one_start_at_a_time(paths.redis):
        return _start_redis(paths, port, echo)


def _start_redis(paths: ServicePaths, port: int, echo) -> bool:  # type: ignore[no-untyped-def]
    if port_answers("127.0.0.1", port):
        echo(f"Redis already answers on 127.0.0.1:{port}")
        return False
    server = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if server is None:
        raise ServiceError("redis-server is not installed; run scripts/setup.sh (apt-get install redis-server)")
    directory = paths.redis
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            server,
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "yes",
            "--dir", str(directory),
            "--pidfile", str(directory / "redis.pid"),
            "--logfile", str(directory / "redis.log"),
        ],
        check=True,
    )
    _wait_until(lambda: port_answers("127.0.0.1", port), 15, "Redis", directory / "redis.log")
    echo(f"Redis is up on 127.0.0.1:{port}")
    return True


def _stop_pidfile(pidfile: Path, name: str, echo=print, timeout: float = 30) -> None:
    if not pidfile.exists():
        echo(f"{name}: not started by this project")
        return
    pid = int(pidfile.read_text().strip())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pidfile.unlink(missing_ok=True)
        echo(f"{name}: was not running")
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)
    echo(f"{name}: stopped")


def stop_all(paths: ServicePaths, echo=print) -> None:
    _stop_pidfile(paths.kafka / "kafka.pid", "Kafka", echo)
    _stop_pidfile(paths.redis / "redis.pid", "Redis", echo)


def status(kafka_port: int = 9092, redis_port: int = 6379) -> dict[str, bool]:
    return {"kafka": port_answers("127.0.0.1", kafka_port), "redis": port_answers("127.0.0.1", redis_port)}
