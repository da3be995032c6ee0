"""Dashboards and alert rules proven against a real Prometheus (Debian's), scraping a real worker."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from stream.settings import PROJECT_ROOT
from tests.integration.conftest import (
    Namespace,
    WorkerProcess,
    free_port,
    healthscore,
    make_namespace,
    wait_for,
)

pytestmark = pytest.mark.integration

PROMETHEUS_DIR = PROJECT_ROOT / "config" / "prometheus"
DASHBOARDS = sorted((PROJECT_ROOT / "config" / "grafana" / "dashboards").glob("*.json"))


def promtool(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: run scripts/setup.sh (Debian's prometheus package)", pytrace=False)
    return subprocess.run(["promtool", *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus.docker.yml"])
def test_promtool_check_config(config: str) -> None:
    result = promtool("check", "config", config)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "11 rules found" in result.stdout


def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", "rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def dashboard_expressions() -> list[tuple[str, str, str]]:
    found = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                found.append((dashboard["uid"], panel["title"], target["expr"]))
    return found


def test_dashboards_have_fixed_uids_and_provisioning() -> None:
    uids = [json.loads(path.read_text())["uid"] for path in DASHBOARDS]
    assert sorted(uids) == ["healthscore-customer-health", "healthscore-pipeline"]
    titles = {json.loads(path.read_text())["title"] for path in DASHBOARDS}
    assert titles == {"Customer health", "Pipeline"}
    datasource = (PROJECT_ROOT / "config/grafana/provisioning/datasources/prometheus.yml").read_text()
    assert "uid: healthscore-prometheus" in datasource
    assert all(panel["datasource"]["uid"] == "healthscore-prometheus" for path in DASHBOARDS for panel in json.loads(path.read_text())["panels"])


class Prometheus:
    def __init__(self, scrape_port: int, directory: Path) -> None:
        self.port = free_port()
        config = directory / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {PROMETHEUS_DIR / 'rules.yml'}\n"
            "scrape_configs:\n  - job_name: healthscore\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{scrape_port}']\n"
        )
        self.log = open(directory / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        wait_for(self._ready, timeout=30, message="Prometheus to be ready")

    def _ready(self) -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1).status == 200
        except OSError:
            return False

    def query(self, expression: str) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            return json.loads(error.read())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture
def fed_worker(services: None, tmp_path: Path) -> Iterator[tuple[Namespace, WorkerProcess]]:
    namespace = make_namespace(tmp_path)
    namespace.env["HEALTHSCORE_FLEET_METRICS_INTERVAL_SECONDS"] = "1"
    namespace.env["HEALTHSCORE_KPIS__FLEET_ACQUISITION_SPEND"] = "1000"  # the LTV/CAC panel's series
    worker = WorkerProcess(namespace, tmp_path / "worker.log")
    worker.start()
    try:
        healthscore(namespace, "generate", "--customers", "60", "--rate", "150", "--duration", "6", "--history-days", "40", "--seed", "3")
        healthscore(namespace, "sweep")
        yield namespace, worker
    finally:
        worker.stop()


def test_every_dashboard_query_returns_series_from_a_real_prometheus(fed_worker, tmp_path: Path) -> None:
    namespace, worker = fed_worker
    prometheus = Prometheus(namespace.settings.web_port, tmp_path)
    try:
        wait_for(lambda: prometheus.query('up{job="healthscore"} == 1')["data"]["result"], timeout=30, message="a scrape")
        # Rates over any window need two samples: wait until Prometheus holds three scrapes.
        wait_for(lambda: prometheus.query('count_over_time(up{job="healthscore"}[5m]) >= 3')["data"]["result"], timeout=60, message="three scrapes")
        failures = {}
        for uid, title, expression in dashboard_expressions():
            answer = prometheus.query(expression)
            if answer.get("status") != "success":
                failures[f"{uid} / {title}"] = f"invalid: {answer.get('error')}"
            elif not answer["data"]["result"]:
                failures[f"{uid} / {title}"] = f"no series: {expression}"
        assert not failures, json.dumps(failures, indent=2)
        assert len(dashboard_expressions()) >= 25
        # The fleet gauges really describe the fleet the generator made.
        active = prometheus.query('sum(healthscore_fleet_customers{state="total"})')["data"]["result"][0]["value"][1]
        assert float(active) == 60
    finally:
        prometheus.stop()


ALLOWED_LABELS = {"topic", "outcome", "reason", "rule", "severity", "band", "state", "purchases", "survey", "category", "action", "version", "model_version", "kernel", "le", "status", "window", "kind"}


def test_no_metric_label_grows_with_the_number_of_customers(fed_worker) -> None:
    namespace, worker = fed_worker
    exposition = urllib.request.urlopen(worker.metrics_url, timeout=5).read().decode()
    values: dict[str, set[str]] = {}
    for line in exposition.splitlines():
        if line.startswith("#") or "{" not in line:
            continue
        for name, value in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line.partition("{")[2].rpartition("}")[0]):
            values.setdefault(name, set()).add(value)
    assert set(values) <= ALLOWED_LABELS, set(values) - ALLOWED_LABELS
    customer_like = {value for found in values.values() for value in found if value.startswith("cust-")}
    assert not customer_like
    # 60 customers are in the fleet; no label has anywhere near that many values.
    assert all(len(found) <= 20 for name, found in values.items() if name != "le"), {name: len(found) for name, found in values.items()}
    assert all(value == "+Inf" or float(value) >= 0 for value in values["le"])  # histogram buckets: fixed, numeric
    for line in exposition.splitlines():
        if line.startswith("healthscore_") and not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            assert re.fullmatch(r"healthscore_[a-z0-9_]+", name), name
