"""docker-compose.yml stays consistent with the local way of running (no Docker engine here)."""

from __future__ import annotations

import re

import yaml

from stream.settings import PROJECT_ROOT, load_settings

COMPOSE = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_the_stack_has_every_part() -> None:
    assert {"kafka", "redis", "topics", "worker", "generator", "deliver", "prometheus", "grafana"} <= set(SERVICES)


def test_images_are_pinned() -> None:
    for name, service in SERVICES.items():
        if "image" in service:
            image = service["image"]
            assert ":" in image and not image.endswith(":latest"), f"{name} uses an unpinned image {image}"


def test_kafka_image_matches_the_version_resolved_locally() -> None:
    pom = (PROJECT_ROOT / "services" / "kafka" / "pom.xml").read_text()
    local_version = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom).group(1)
    assert SERVICES["kafka"]["image"] == f"apache/kafka:{local_version}"
    assert SERVICES["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_services_wait_for_what_they_need() -> None:
    assert SERVICES["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert SERVICES["worker"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert SERVICES["worker"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert SERVICES["generator"]["depends_on"]["worker"]["condition"] == "service_healthy"
    assert SERVICES["deliver"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    for name in ("kafka", "redis", "worker"):
        assert "healthcheck" in SERVICES[name], name


def test_commands_are_real_subcommands_with_real_options() -> None:
    from click.testing import CliRunner

    from stream.cli import main

    for name in ("topics", "worker", "generator", "deliver"):
        command = SERVICES[name]["command"]
        result = CliRunner().invoke(main, [*command, "--help"])
        assert result.exit_code == 0, f"{name}: {command}: {result.output}"


def test_partitions_and_ports_match_the_local_defaults() -> None:
    settings = load_settings()
    environment = SERVICES["worker"]["environment"]
    assert int(environment["HEALTHSCORE_PARTITIONS"]) == settings.partitions
    assert f"127.0.0.1:{settings.web_port}:6066" in SERVICES["worker"]["ports"]
    assert "127.0.0.1:9092:9092" in SERVICES["kafka"]["ports"]


def test_prometheus_and_grafana_use_the_files_in_config() -> None:
    mounts = [volume.split(":")[0] for name in ("prometheus", "grafana") for volume in SERVICES[name]["volumes"]]
    for mount in mounts:
        assert (PROJECT_ROOT / mount).exists(), mount
    assert "./config/prometheus/rules.yml" in mounts
    assert SERVICES["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    scrape = yaml.safe_load((PROJECT_ROOT / "config/prometheus/prometheus.docker.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["worker:6066"]
