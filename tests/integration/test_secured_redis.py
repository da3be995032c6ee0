"""Redis as it runs in production: TLS only (a CA and server certificate made by openssl),
an ACL user with exactly the permissions docs/deploy.md lists, and a Redis Cluster of three
nodes. The worker's scores land and the API answers from them; a wrong password or an
untrusted certificate stops the start naming the setting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import redis

from stream.sinks.redis_connection import CLUSTER_ACL_EXTRA, WORKER_ACL
from tests.integration.conftest import (
    PROJECT_ROOT,
    Certificates,
    Namespace,
    WorkerProcess,
    event,
    free_port,
    get_json,
    kcat_produce,
    make_certificates,
    make_namespace,
    wait_for,
)

PASSWORD = "redis-Secr3t-pw"
ADMIN_PASSWORD = "admin-Secr3t"


def acl_file(directory: Path, extra: str = "") -> Path:
    """The worker's user with the documented rules (docs/deploy.md) (for every test prefix), and an admin for the test's own checks."""
    path = directory / "users.acl"
    rules = WORKER_ACL.replace("PREFIX", "hs-*")
    path.write_text(
        "user default off\n"
        f"user healthscore {rules} {extra} >{PASSWORD}\n"
        f"user admin on ~* &* +@all >{ADMIN_PASSWORD}\n"
    )
    return path


def start_redis_server(directory: Path, *arguments: str) -> subprocess.Popen:
    directory.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(directory), *arguments],
        stdout=open(directory / "redis.log", "ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )


@dataclass
class TlsRedis:
    port: int
    certificates: Certificates

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            "HEALTHSCORE_REDIS_URL": f"rediss://127.0.0.1:{self.port}/0",
            "HEALTHSCORE_REDIS_USERNAME": "healthscore",
            "HEALTHSCORE_REDIS_PASSWORD": PASSWORD,
            "HEALTHSCORE_REDIS_TLS_CAFILE": str(self.certificates.ca),
        }
        env.update({f"HEALTHSCORE_{key.upper()}": value for key, value in overrides.items()})
        return env

    def admin(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, ssl=True, ssl_ca_certs=str(self.certificates.ca),
                           username="admin", password=ADMIN_PASSWORD, decode_responses=True)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    directory = tmp_path_factory.mktemp("tls-redis")
    certificates = make_certificates(directory / "certificates")
    server = TlsRedis(free_port(), certificates)
    process = start_redis_server(
        directory, "--port", "0", "--tls-port", str(server.port), "--tls-cert-file", str(certificates.server_certificate),
        "--tls-key-file", str(certificates.server_key), "--tls-ca-cert-file", str(certificates.ca), "--tls-auth-clients", "no",
        "--aclfile", str(acl_file(directory)),
    )
    wait_for(lambda: _answers(server.admin), timeout=15, message="Redis with TLS")
    yield server
    process.terminate()
    process.wait(timeout=10)


def _answers(client_factory) -> bool:
    try:
        return bool(client_factory().ping())
    except (redis.RedisError, OSError):
        return False


def start_worker_with(namespace: Namespace, env: dict[str, str], log: Path) -> WorkerProcess:
    namespace.env.update(env)
    worker = WorkerProcess(namespace, log)
    worker.start()
    return worker


def customer_health(namespace: Namespace, customer: str) -> dict | None:
    port = namespace.env["HEALTHSCORE_WEB_PORT"]
    try:
        return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/customers/{customer}/health", timeout=5).read())
    except urllib.error.HTTPError:
        return None


def produce_scores(namespace: Namespace, customers: list[str]) -> None:
    kcat_produce(namespace.topic("usage"), [(c, event(f"{c}-1", "usage.session", c, 1, {"user_id": "u", "duration_seconds": 60})) for c in customers])


def test_scores_land_in_redis_over_tls_as_an_acl_user_with_the_documented_rules(services: None, tls_redis: TlsRedis, tmp_path: Path) -> None:
    namespace = make_namespace(tmp_path)
    namespace.env["HEALTHSCORE_FLEET_METRICS_INTERVAL_SECONDS"] = "1"  # the customers' KPIs too, within the documented ACL
    worker = start_worker_with(namespace, tls_redis.env(), tmp_path / "worker.log")
    try:
        produce_scores(namespace, ["acme", "globex"])
        found = wait_for(lambda: customer_health(namespace, "globex"), timeout=60, message="globex's score through TLS", explain=worker.log_tail)
        assert found["band"] in ("healthy", "at_risk", "critical")
        port = namespace.env["HEALTHSCORE_WEB_PORT"]
        kpis = wait_for(lambda: (lambda r: r[1] if r[0] == 200 else None)(get_json(f"http://127.0.0.1:{port}/customers/globex/kpis")),
                        timeout=30, message="globex's KPIs through the ACL user", explain=worker.log_tail)
        assert kpis["customer_id"] == "globex" and "as_of" in kpis
        prefix = namespace.env["HEALTHSCORE_REDIS_KEY_PREFIX"]
        admin = tls_redis.admin()
        assert admin.hget(f"{prefix}:customer:acme", "band")
        assert admin.zscore(f"{prefix}:scores", "acme") is not None
        assert "NOPERM" not in worker.log_path.read_text() and "Redis write failed" not in worker.log_path.read_text()
    finally:
        worker.stop()
    assert PASSWORD not in worker.log_path.read_text()


def run_worker_expecting_failure(namespace: Namespace, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", "worker"], cwd=PROJECT_ROOT, env={**os.environ, **namespace.env, **env},
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    "overrides, named",
    [({"redis_password": "wrong-pw-xyz"}, "redis_password"), ({"redis_tls_cafile": "OTHER"}, "redis_tls_cafile"),
     ({"redis_url": "REDIS_PLAIN"}, "rediss://")],
    ids=["wrong-password", "wrong-ca", "plain-client-on-tls-port"],
)
def test_refused_redis_credentials_stop_the_start_naming_the_setting(
    services: None, tls_redis: TlsRedis, tmp_path: Path, overrides: dict[str, str], named: str
) -> None:
    if overrides.get("redis_tls_cafile") == "OTHER":
        overrides = {"redis_tls_cafile": str(tls_redis.certificates.other_ca)}
    env = tls_redis.env(**overrides)
    if overrides.get("redis_url") == "REDIS_PLAIN":
        env = {**env, "HEALTHSCORE_REDIS_URL": f"redis://127.0.0.1:{tls_redis.port}/0"}
        env.pop("HEALTHSCORE_REDIS_TLS_CAFILE")
    result = run_worker_expecting_failure(make_namespace(tmp_path), env)
    assert result.returncode != 0
    assert named in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "wrong-pw-xyz" not in result.stderr + result.stdout


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """Three masters sharing the 16384 slots, each with the worker's ACL user (and the cluster extras)."""
    directory = tmp_path_factory.mktemp("redis-cluster")
    users = acl_file(directory, CLUSTER_ACL_EXTRA)
    ports = [free_port() for _ in range(3)]
    processes = [
        start_redis_server(directory / str(port), "--port", str(port), "--cluster-enabled", "yes", "--cluster-port", str(free_port()), "--aclfile", str(users),
                           "--cluster-config-file", str(directory / str(port) / "nodes.conf"), "--masteruser", "admin", "--masterauth", ADMIN_PASSWORD)
        for port in ports
    ]
    for port in ports:
        wait_for(lambda: _answers(lambda: redis.Redis(port=port, username="admin", password=ADMIN_PASSWORD)), timeout=15, message=f"Redis {port}")
    subprocess.run(
        ["redis-cli", "--user", "admin", "--pass", ADMIN_PASSWORD, "--no-auth-warning", "--cluster", "create",
         *[f"127.0.0.1:{port}" for port in ports], "--cluster-replicas", "0", "--cluster-yes"],
        check=True, capture_output=True, timeout=60,
    )
    node = redis.Redis(port=ports[0], username="admin", password=ADMIN_PASSWORD, decode_responses=True)
    wait_for(lambda: node.cluster("info")["cluster_state"] == "ok", timeout=30, message="the cluster's slots assigned")
    yield ports
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        process.wait(timeout=10)


def test_a_redis_cluster_gets_each_customer_in_one_slot_and_the_api_reads_it(services: None, redis_cluster: list[int], tmp_path: Path) -> None:
    namespace = make_namespace(tmp_path)
    namespace.env["HEALTHSCORE_FLEET_METRICS_INTERVAL_SECONDS"] = "1"  # the customers' KPIs into the cluster too
    env = {"HEALTHSCORE_REDIS_URL": f"redis://127.0.0.1:{redis_cluster[0]}/0", "HEALTHSCORE_REDIS_CLUSTER": "true",
           "HEALTHSCORE_REDIS_USERNAME": "healthscore", "HEALTHSCORE_REDIS_PASSWORD": PASSWORD}
    worker = start_worker_with(namespace, env, tmp_path / "worker.log")
    customers = [f"cust-{number}" for number in range(40)]
    try:
        produce_scores(namespace, customers)
        kcat_produce(namespace.topic("payments"), [("cust-0", event("c0-sub", "subscription.updated", "cust-0", 0.6, {"mrr": 80.0})),
                                                   ("cust-0", event("c0-cancel", "subscription.cancelled", "cust-0", 0.5, {}))])
        wait_for(lambda: all(customer_health(namespace, c) for c in customers), timeout=60, message="40 scores in the cluster", explain=worker.log_tail)
        assert wait_for(lambda: (customer_health(namespace, "cust-0") or {}).get("recent_alerts"), timeout=30, message="cust-0's alert")
        port = namespace.env["HEALTHSCORE_WEB_PORT"]
        ranked = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/customers/at-risk?limit=100", timeout=5).read())
        assert ranked["count"] == 39 and "cust-0" not in {entry["customer_id"] for entry in ranked["customers"]}  # cancelled: not at risk
        everyone = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/customers/at-risk?limit=100&include_cancelled=true", timeout=5).read())
        assert everyone["count"] == 40 and everyone["customers"][-1]["customer_id"] == "cust-0" and all(entry["band"] for entry in everyone["customers"])
        churned = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/customers/churned?since=1970-01-01", timeout=5).read())
        assert [entry["customer_id"] for entry in churned["customers"]] == ["cust-0"]
        kpis = wait_for(lambda: (lambda r: r[1] if r[0] == 200 else None)(get_json(f"http://127.0.0.1:{port}/customers/cust-0/kpis")),
                        timeout=30, message="cust-0's KPIs from the cluster", explain=worker.log_tail)
        assert kpis["mrr"] == 80.0
    finally:
        worker.stop()
    cluster = redis.RedisCluster(host="127.0.0.1", port=redis_cluster[0], username="admin", password=ADMIN_PASSWORD, decode_responses=True)
    prefix = namespace.env["HEALTHSCORE_REDIS_KEY_PREFIX"]
    # The keys the worker wrote, as each node holds them (not slots the test computes).
    node_of: dict[str, str] = {}
    for node in cluster.get_primaries():
        for key in cluster.keys(f"{prefix}:*", target_nodes=node):
            node_of[key] = node.name
    nodes_by_customer = {c: {node for key, node in node_of.items() if key.endswith(f"{{{c}}}")} for c in customers}
    assert all(len(nodes) == 1 for nodes in nodes_by_customer.values()), nodes_by_customer  # each customer's keys on one node
    assert {f"{prefix}:customer:{{cust-0}}", f"{prefix}:alerts:{{cust-0}}"} <= set(node_of)
    assert len(set().union(*nodes_by_customer.values())) == len(cluster.get_primaries()) == 3  # spread over the cluster
    assert cluster.llen(f"{prefix}:alerts:{{cust-0}}") >= 1
    assert "Redis write failed" not in worker.log_path.read_text()
