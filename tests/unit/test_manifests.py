"""The Kubernetes manifests (deploy/kubernetes), checked offline: against the API's schemas
(kubernetes-validate, strict: an unknown field fails), and against the project: the image's
user and config path, the probes the worker serves, settings the worker accepts."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from stream.settings import PROJECT_ROOT, SettingsError, load_settings

MANIFESTS = PROJECT_ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"


def documents() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found.extend((path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return found


def by_kind(kind: str, name: str | None = None) -> dict:
    (doc,) = [doc for _, doc in documents() if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)]
    return doc


def pod_specs() -> list[tuple[str, dict]]:
    specs = []
    for _, doc in documents():
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            specs.append((doc["metadata"]["name"], doc["spec"]["template"]["spec"]))
    return specs


def stand_in(name: str) -> str:
    """A stand-in value for a secret: the JSON lists as JSON lists."""
    if name == "HEALTHSCORE_DELIVERY__ENDPOINTS":
        return ('[{"name": "crm", "kind": "webhook", "url": "https://crm.example.com/hooks/healthscore", "secret": "whsec_'
                + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY" + '"}]')
    if name.startswith("HEALTHSCORE_INGEST__"):
        return '["' + "x" * 40 + '"]'
    return "x" * 40


def secret_env(spec: dict) -> dict[str, str]:
    """The container's variables that come from a secret, each with a stand-in value."""
    return {
        variable["name"]: stand_in(variable["name"])
        for container in spec["containers"] for variable in container.get("env", []) if "valueFrom" in variable
    }


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
    pod = by_kind("StatefulSet", "healthscore-worker")["spec"]["template"]["spec"]
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
    # The RocksDB store's data directory outlives the pod: a restart reads back only the changelog's tail.
    claims = {claim["metadata"]["name"] for claim in by_kind("StatefulSet", "healthscore-worker")["spec"]["volumeClaimTemplates"]}
    data = next(mount["name"] for mount in container["volumeMounts"] if mount["mountPath"] == "/var/lib/healthscore")
    assert data in claims and data not in {volume["name"] for volume in pod["volumes"]}


def test_the_config_map_holds_settings_the_worker_accepts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = by_kind("ConfigMap")["data"]["healthscore.toml"]
    (tmp_path / "healthscore.toml").write_text(toml)
    monkeypatch.setenv("HEALTHSCORE_CONFIG", str(tmp_path / "healthscore.toml"))
    with pytest.raises(SettingsError, match="kafka.sasl_password is required"):
        load_settings()  # without the secret: refused, never a plaintext client
    worker = by_kind("StatefulSet", "healthscore-worker")["spec"]["template"]["spec"]
    for name, value in secret_env(worker).items():
        monkeypatch.setenv(name, value)
    for variable in worker["containers"][0]["env"]:
        if "value" in variable and variable["name"] != "HEALTHSCORE_API_TOKENS_FILE":  # the mounted file is not here
            monkeypatch.setenv(variable["name"], variable["value"])
    settings = load_settings()
    assert settings.redis_username == "healthscore" and settings.redis_password is not None
    assert settings.kafka.security_protocol == "SASL_SSL" and settings.redis_url.startswith("rediss://")
    assert settings.privacy.hash_key is not None
    assert settings.topics.replication_factor == 3 and not settings.topics.allow_runtime_creation
    assert settings.log_format == "json"
    assert settings.state_store == "rocksdb"


def test_every_secret_is_required_and_no_pod_mounts_a_service_account_token() -> None:
    for name, spec in pod_specs():
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec["containers"]:
            for variable in container.get("env", []):
                reference = variable.get("valueFrom", {}).get("secretKeyRef")
                assert reference is None or "optional" not in reference, (name, variable["name"])


def test_deliver_runs_with_settings_it_accepts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deliver = by_kind("Deployment", "healthscore-deliver")["spec"]["template"]["spec"]
    (container,) = deliver["containers"]
    assert container["args"] == ["deliver"] and container["securityContext"]["readOnlyRootFilesystem"]
    (tmp_path / "healthscore.toml").write_text(by_kind("ConfigMap")["data"]["healthscore.toml"])
    monkeypatch.setenv("HEALTHSCORE_CONFIG", str(tmp_path / "healthscore.toml"))
    for name, value in secret_env(deliver).items():
        monkeypatch.setenv(name, value)
    for variable in container["env"]:
        if "value" in variable:
            monkeypatch.setenv(variable["name"], variable["value"])
    settings = load_settings()
    assert [endpoint.name for endpoint in settings.delivery.endpoints] == ["crm"]
    assert settings.delivery.metrics_port == container["ports"][0]["containerPort"]


def test_ingest_runs_with_settings_it_accepts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ingest = by_kind("Deployment", "healthscore-ingest")["spec"]["template"]["spec"]
    (container,) = ingest["containers"]
    assert container["args"] == ["ingest"] and container["securityContext"]["readOnlyRootFilesystem"]
    (tmp_path / "healthscore.toml").write_text(by_kind("ConfigMap")["data"]["healthscore.toml"])
    monkeypatch.setenv("HEALTHSCORE_CONFIG", str(tmp_path / "healthscore.toml"))
    for name, value in {**secret_env(ingest), **{v["name"]: v["value"] for v in container["env"] if "value" in v}}.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.ingest.host == "0.0.0.0" and len(settings.ingest.stripe_webhook_secrets) == 1
    assert settings.ingest.port == container["ports"][0]["containerPort"] == by_kind("Service", "healthscore-ingest")["spec"]["ports"][0]["port"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_the_network_policies_select_every_pod_and_keep_delivery_off_private_addresses() -> None:
    policies = [doc for _, doc in documents() if doc["kind"] == "NetworkPolicy"]
    selected = {policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for policy in policies}
    components = {doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] for _, doc in documents() if doc["kind"] in ("Deployment", "StatefulSet", "Job")}
    assert selected == components
    (deliver,) = [policy for policy in policies if policy["metadata"]["name"] == "healthscore-deliver"]
    https = [rule for rule in deliver["spec"]["egress"] if "to" in rule]
    assert https and all({"10.0.0.0/8", "169.254.0.0/16", "127.0.0.0/8"} <= set(peer["ipBlock"]["except"]) for rule in https for peer in rule["to"])
