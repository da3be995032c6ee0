"""The Kubernetes manifests (deploy/kubernetes), checked offline: against the API's schemas
(kubernetes-validate, strict: an unknown field fails), and against the project: the image's
user and config path, the probes the worker serves, settings the worker accepts."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from stream.settings import PROJECT_ROOT, load_settings

MANIFESTS = PROJECT_ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"


def documents() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found.extend((path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return found


def by_kind(kind: str) -> dict:
    (doc,) = [doc for _, doc in documents() if doc["kind"] == kind]
    return doc


@pytest.mark.parametrize(("name", "doc"), documents(), ids=[f"{name}:{doc['kind']}" for name, doc in documents()])
def test_each_manifest_is_valid_against_the_kubernetes_api_schema(name: str, doc: dict) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validation_would_catch_a_mistake() -> None:
    broken = yaml.safe_load((MANIFESTS / "deployment.yaml").read_text())
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = broken["spec"]["template"]["spec"]["containers"][0].pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(path.name for path in MANIFESTS.glob("*.yaml") if path.name != "kustomization.yaml")


def test_the_worker_runs_as_the_image_s_user_with_the_probes_it_serves() -> None:
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    uid = re.search(r"^USER (\d+)", dockerfile, re.MULTILINE).group(1)
    assert pod["securityContext"]["runAsNonRoot"] and str(pod["securityContext"]["runAsUser"]) == uid
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] and not container["securityContext"]["allowPrivilegeEscalation"]
    web = (PROJECT_ROOT / "stream" / "worker" / "web.py").read_text()
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" and '"/readyz"' in web
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" and '"/healthz"' in web
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    config_dir = str(Path(re.search(r"HEALTHSCORE_CONFIG=(\S+)", dockerfile).group(1)).parent)
    assert {config_dir, "/var/lib/healthscore", "/tmp"} <= mounts  # every place it writes is a volume


def test_the_config_map_holds_settings_the_worker_accepts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = by_kind("ConfigMap")["data"]["healthscore.toml"]
    (tmp_path / "healthscore.toml").write_text(toml)
    monkeypatch.setenv("HEALTHSCORE_CONFIG", str(tmp_path / "healthscore.toml"))
    settings = load_settings()
    assert settings.topics.replication_factor == 3 and not settings.topics.allow_runtime_creation
    assert settings.log_format == "json"
