"""``sidecar inject``: every workload kind gets the sidecar (native or classic), opt-outs and
injected templates are left alone, nothing unrelated changes, ``--uninject`` restores the
input exactly, the output passes ``kubernetes-validate --strict`` for each supported
Kubernetes version, and hostile or malformed input is refused with exit status 2."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar import _inject_cli
from sidecar.inject import (
    CONTAINER_NAME,
    CREATED_ANNOTATION,
    DEFAULT_IMAGE,
    INJECTED_ANNOTATION,
    InjectError,
    InjectOptions,
    inject,
    sidecar_container,
    uninject,
)
from tests.unit.test_deploy import CLASSIC_VERSIONS, DEPLOY, validate

#: Native sidecars need Kubernetes 1.29 (beta, on by default).
INJECT_NATIVE_VERSIONS = tuple(f"1.{minor}.0" for minor in range(29, 38))

NATIVE = InjectOptions()
CLASSIC = InjectOptions(classic=True)


def pod_spec() -> dict[str, Any]:
    return {
        "containers": [
            {
                "name": "web",
                "image": "example/web:1.0",
                "ports": [{"containerPort": 8080}],
                "env": [{"name": "MODE", "value": "on"}],
            }
        ],
        "nodeSelector": {"kubernetes.io/os": "linux"},
    }


def template(**metadata: Any) -> dict[str, Any]:
    return {"metadata": {"labels": {"app": "web"}, **metadata}, "spec": pod_spec()}


def workload(kind: str) -> dict[str, Any]:
    """A minimal valid object of ``kind`` with one pod template."""
    meta = {"name": "web", "labels": {"app": "web"}}
    selector = {"matchLabels": {"app": "web"}}
    if kind == "Pod":
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec()}
    if kind == "ReplicationController":
        spec: dict[str, Any] = {"selector": {"app": "web"}, "template": template()}
        return {"apiVersion": "v1", "kind": kind, "metadata": meta, "spec": spec}
    if kind == "Job":
        job = template()
        job["spec"]["restartPolicy"] = "Never"
        return {"apiVersion": "batch/v1", "kind": kind, "metadata": meta, "spec": {"template": job}}
    if kind == "CronJob":
        job = template()
        job["spec"]["restartPolicy"] = "OnFailure"
        return {
            "apiVersion": "batch/v1",
            "kind": kind,
            "metadata": meta,
            "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": job}}},
        }
    spec = {"selector": selector, "template": template()}
    if kind == "StatefulSet":
        spec["serviceName"] = "web"
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": meta, "spec": spec}


KINDS = ("Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob")
ALL_KINDS = (*KINDS, "ReplicationController")


def pod_template_of(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "Pod":
        return obj
    if obj["kind"] == "CronJob":
        found: dict[str, Any] = obj["spec"]["jobTemplate"]["spec"]["template"]
        return found
    found = obj["spec"]["template"]
    return found


def unrelated() -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "meshkit-sidecar"},
            "data": {"sidecar.yaml": "admin: {listen: 0.0.0.0:9901}\n", "z": "yes", "a": "010"},
        },
    ]


# --------------------------------------------------------------------------- the pure part


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_native_sidecar_is_the_first_init_container(kind: str) -> None:
    obj = workload(kind)
    original = copy.deepcopy(obj)
    (change,) = inject(obj, NATIVE)
    assert change.action == "injected"
    pod = pod_template_of(obj)
    (sidecar,) = pod["spec"]["initContainers"]
    assert sidecar == sidecar_container(NATIVE)
    assert sidecar["name"] == CONTAINER_NAME and sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == DEFAULT_IMAGE
    # the app containers are untouched
    assert pod["spec"]["containers"] == pod_template_of(original)["spec"]["containers"]
    assert pod["metadata"]["annotations"][INJECTED_ANNOTATION] == "true"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    config = volumes["meshkit-sidecar-config"]["configMap"]["name"]
    assert config == "meshkit-sidecar"
    mounts = {m["name"] for m in sidecar["volumeMounts"]}
    assert mounts == set(volumes)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_classic_sidecar_comes_first_and_holds_the_app(kind: str) -> None:
    obj = workload(kind)
    options = InjectOptions(classic=True, certs_secret="web-mtls", config_map="web-mesh")
    inject(obj, options)
    pod = pod_template_of(obj)
    spec = pod["spec"]
    assert "initContainers" not in spec
    assert [c["name"] for c in spec["containers"]] == [CONTAINER_NAME, "web"]
    # kubectl logs/exec still default to the app
    assert pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == "web"
    sidecar = spec["containers"][0]
    assert "restartPolicy" not in sidecar
    command = sidecar["lifecycle"]["postStart"]["exec"]["command"]
    assert command[:2] == ["python", "-c"] and "127.0.0.1:9901/live" in command[2]
    compile(command[2], "postStart", "exec")
    assert sidecar["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "20"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["meshkit-sidecar-certs"]["secret"]["secretName"] == "web-mtls"
    assert volumes["meshkit-sidecar-config"]["configMap"]["name"] == "web-mesh"
    assert {"name": "meshkit-sidecar-certs", "mountPath": "/certs", "readOnly": True} in sidecar[
        "volumeMounts"
    ]


def test_existing_init_containers_run_after_the_sidecar() -> None:
    obj = workload("Deployment")
    spec = pod_template_of(obj)["spec"]
    spec["initContainers"] = [{"name": "migrate", "image": "example/migrate:1"}]
    spec["volumes"] = [{"name": "data", "emptyDir": {}}]
    inject(obj, NATIVE)
    assert [c["name"] for c in spec["initContainers"]] == [CONTAINER_NAME, "migrate"]
    assert spec["volumes"][0]["name"] == "data"
    # nothing had to be created but the annotation map
    assert pod_template_of(obj)["metadata"]["annotations"][CREATED_ANNOTATION] == "annotations"


@pytest.mark.parametrize("options", [NATIVE, CLASSIC], ids=["native", "classic"])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_inject_is_idempotent_and_uninject_restores(kind: str, options: InjectOptions) -> None:
    original = workload(kind)
    once = copy.deepcopy(original)
    inject(once, options)
    twice = copy.deepcopy(once)
    (change,) = inject(twice, options)
    assert change.action == "already injected"
    assert twice == once
    (removed,) = uninject(once)
    assert removed.action == "removed"
    assert once == original
    # key order too: what inject did not add is where it was
    assert list(pod_template_of(once)) == list(pod_template_of(original))
    assert list(pod_template_of(once)["spec"]) == list(pod_template_of(original)["spec"])


def test_uninject_keeps_fields_it_did_not_create() -> None:
    obj = workload("Deployment")
    pod = pod_template_of(obj)
    pod["metadata"]["annotations"] = {}
    pod["spec"]["volumes"] = []
    original = copy.deepcopy(obj)
    inject(obj, NATIVE)
    uninject(obj)
    assert obj == original  # the empty map and list stay: the input had them


def test_default_container_annotation_of_the_input_is_kept() -> None:
    obj = workload("Deployment")
    pod_template_of(obj)["metadata"]["annotations"] = {
        "kubectl.kubernetes.io/default-container": "other"
    }
    original = copy.deepcopy(obj)
    inject(obj, CLASSIC)
    annotations = pod_template_of(obj)["metadata"]["annotations"]
    assert annotations["kubectl.kubernetes.io/default-container"] == "other"
    assert annotations[CREATED_ANNOTATION] == "volumes"
    uninject(obj)
    assert obj == original


def test_pod_without_metadata_round_trips() -> None:
    obj = workload("Deployment")
    del obj["spec"]["template"]["metadata"]
    original = copy.deepcopy(obj)
    inject(obj, NATIVE)
    created = obj["spec"]["template"]["metadata"]["annotations"][CREATED_ANNOTATION]
    assert created == "metadata,annotations,initContainers,volumes"
    uninject(obj)
    assert obj == original


@pytest.mark.parametrize("where", ["workload", "template"])
@pytest.mark.parametrize("value", ["false", "False"])
def test_opt_out_is_respected(where: str, value: str) -> None:
    obj = workload("Deployment")
    holder = obj if where == "workload" else pod_template_of(obj)
    holder["metadata"]["annotations"] = {"meshkit.io/inject": value}
    original = copy.deepcopy(obj)
    (change,) = inject(obj, NATIVE)
    assert change.action == "opted out"
    assert obj == original


def test_hand_written_sidecar_is_left_alone() -> None:
    """deploy/base's Deployment has its sidecar written in: neither inject nor uninject
    touches it."""
    base = yaml.safe_load((DEPLOY / "base" / "deployment.yaml").read_text())
    original = copy.deepcopy(base)
    assert [c.action for c in inject(base, NATIVE)] == ["already injected"]
    assert [c.action for c in uninject(base)] == ["not injected"]
    assert base == original


def test_lists_are_walked() -> None:
    items = [workload(kind) for kind in KINDS] + unrelated()
    obj = {"apiVersion": "v1", "kind": "List", "items": copy.deepcopy(items)}
    changes = inject(obj, NATIVE)
    assert [c.action for c in changes] == ["injected"] * len(KINDS)
    assert changes[0].where == "items[0]" and changes[1].where == "items[1].spec.template"
    assert obj["items"][len(KINDS) :] == unrelated()
    uninject(obj)
    assert obj["items"] == items


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda o: o["spec"]["template"]["spec"].update(containers=None), "containers: must be"),
        (lambda o: o["spec"].update(template=[]), "spec.template: must be a mapping"),
        (lambda o: o["spec"]["template"]["spec"].update(volumes={}), "volumes: must be a list"),
        (
            lambda o: o["spec"]["template"]["spec"].update(
                volumes=[{"name": "meshkit-sidecar-tmp", "emptyDir": {}}]
            ),
            "already has a volume named 'meshkit-sidecar-tmp'",
        ),
        (
            lambda o: o["spec"]["template"]["metadata"].update(annotations=["x"]),
            "metadata.annotations: must be a mapping",
        ),
    ],
)
def test_malformed_templates_are_refused_naming_where(mutate: Any, message: str) -> None:
    obj = workload("Deployment")
    mutate(obj)
    with pytest.raises(InjectError, match=message):
        inject(obj, NATIVE)


# Arbitrary extra fields on the pod template: uninject(inject(x)) == x.
_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5))
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
_keys = st.text(max_size=8).filter(lambda k: k not in ("containers", "initContainers", "volumes"))


@settings(max_examples=60, deadline=None)
@given(
    extra_spec=st.dictionaries(_keys, _values, max_size=4),
    extra_meta=st.dictionaries(st.text(max_size=8), _values, max_size=3),
    annotations=st.none() | st.dictionaries(st.text(max_size=10), st.text(max_size=5), max_size=3),
    classic=st.booleans(),
)
def test_round_trip_with_arbitrary_fields(
    extra_spec: dict[str, Any],
    extra_meta: dict[str, Any],
    annotations: dict[str, str] | None,
    classic: bool,
) -> None:
    obj = workload("Deployment")
    pod = pod_template_of(obj)
    pod["spec"].update(extra_spec)
    pod["metadata"].update({k: v for k, v in extra_meta.items() if k != "annotations"})
    if annotations is not None:
        pod["metadata"]["annotations"] = {
            k: v for k, v in annotations.items() if not k.startswith("meshkit.io/")
        }
    original = copy.deepcopy(obj)
    inject(obj, InjectOptions(classic=classic))
    injected = copy.deepcopy(obj)
    inject(obj, InjectOptions(classic=classic))
    assert obj == injected
    uninject(obj)
    assert obj == original


# --------------------------------------------------------------------------- agreement with deploy/


def test_injected_sidecar_matches_the_base_deployment() -> None:
    """The sidecar inject adds and the one deploy/base writes by hand agree: image, args,
    ports, probes, resources; and the ports are the ones deploy/base/sidecar.yaml listens on."""
    base = yaml.safe_load((DEPLOY / "base" / "deployment.yaml").read_text())
    (written,) = base["spec"]["template"]["spec"]["initContainers"]
    injected = sidecar_container(NATIVE)
    for key in ("args", "restartPolicy", "resources"):
        assert injected[key] == written[key], key

    def ports(container: dict[str, Any]) -> dict[str, int]:
        return {p["name"]: p["containerPort"] for p in container["ports"]}

    def probe(container: dict[str, Any], name: str) -> tuple[Any, ...]:
        spec = dict(container[name])
        http = spec.pop("httpGet")
        return http["path"], ports(container)[http["port"]], spec

    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probe(injected, name) == probe(written, name), name
    config = yaml.safe_load((DEPLOY / "base" / "sidecar.yaml").read_text())
    assert ports(injected) == {
        "meshkit-inbound": int(config["inbound"]["listen"].rsplit(":", 1)[1]),
        "meshkit-admin": int(config["admin"]["listen"].rsplit(":", 1)[1]),
    }
    assert sorted(ports(injected).values()) == sorted(ports(written).values())
    kustomization = yaml.safe_load((DEPLOY / "base" / "kustomization.yaml").read_text())
    (image,) = [i for i in kustomization["images"] if i["name"] == "meshkit/sidecar"]
    assert f"{image['name']}:{image['newTag']}" == DEFAULT_IMAGE


# --------------------------------------------------------------------------- schemas


@pytest.fixture(scope="module")
def injected_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("injected")
    files = {}
    for name, options in (("native", NATIVE), ("classic", CLASSIC)):
        documents = [workload(kind) for kind in ALL_KINDS] + unrelated()
        documents.append({"apiVersion": "v1", "kind": "List", "items": [workload("Deployment")]})
        options = InjectOptions(classic=options.classic, certs_secret="web-mtls")
        _inject_cli.process(documents, options)
        # the validator has no schema for List: its items are checked as documents
        documents.extend(documents.pop()["items"])
        files[name] = directory / f"{name}.yaml"
        with open(files[name], "w") as out:
            _inject_cli.write_documents(documents, out)
    return files


@pytest.mark.parametrize("version", CLASSIC_VERSIONS)
def test_injected_output_validates_strictly(injected_files: dict[str, Path], version: str) -> None:
    files = [injected_files["classic"]]
    if version in INJECT_NATIVE_VERSIONS:
        files.append(injected_files["native"])
    validate(files, version)


# --------------------------------------------------------------------------- reading YAML


def test_reading_keeps_documents_in_order_and_drops_empty_ones() -> None:
    text = "---\n# a comment\n---\nkind: A\nb: 1\na: 2\n---\n---\nkind: B\n"
    documents = _inject_cli.read_documents(text.encode())
    assert documents == [{"kind": "A", "b": 1, "a": 2}, {"kind": "B"}]
    assert list(documents[0]) == ["kind", "b", "a"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"a: &x [1]\nb: *x\n", "<stdin>:2:4: refused: alias *x: YAML aliases are refused"),
        (b"a: 1\na: 2\n", "duplicate key 'a'"),
        (b"a: [\n", "<stdin>:2:1: YAML syntax error"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[" * 200, "nesting deeper than 100 levels"),
        (b"a: " + b"9" * 200 + b"\n", "an integer of 200 characters"),
    ],
)
def test_hostile_or_broken_yaml_is_refused(text: bytes, message: str) -> None:
    with pytest.raises(InjectError) as caught:
        _inject_cli.read_documents(text)
    assert message in str(caught.value)


def test_oversized_input_is_refused_before_parsing() -> None:
    with pytest.raises(InjectError, match="larger than"):
        _inject_cli.read_documents(b"#" * (_inject_cli.MAX_INPUT_BYTES + 1))


# --------------------------------------------------------------------------- the command


SIDECAR = str(Path(sys.executable).with_name("sidecar"))


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.upper().startswith("MESHKIT_")}
    return subprocess.run(
        [SIDECAR, "inject", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )


def test_command_injects_stdin_and_uninjects_a_file(tmp_path: Path) -> None:
    documents = [workload("Deployment"), *unrelated(), workload("CronJob")]
    text = yaml.safe_dump_all(documents, sort_keys=False)
    result = run("--image", "registry.example/meshkit:1.2", stdin=text)
    assert result.returncode == 0, result.stderr
    out = list(yaml.safe_load_all(result.stdout))
    assert out[1:3] == unrelated()
    for obj in (out[0], out[3]):
        (sidecar,) = pod_template_of(obj)["spec"]["initContainers"]
        assert sidecar["image"] == "registry.example/meshkit:1.2"
    assert "document 1 (Deployment web) spec.template: injected" in result.stderr
    injected = tmp_path / "injected.yaml"
    injected.write_text(result.stdout)
    again = run("-q", str(injected))
    assert again.returncode == 0 and again.stderr == ""
    assert again.stdout == result.stdout  # idempotent, byte for byte
    restored = tmp_path / "restored.yaml"
    back = run("--uninject", "-q", "-o", str(restored), str(injected))
    assert back.returncode == 0, back.stderr
    assert list(yaml.safe_load_all(restored.read_text())) == documents
    assert restored.read_text() == text


def test_command_warns_about_classic_sidecars_in_jobs() -> None:
    result = run("--classic", stdin=yaml.safe_dump(workload("Job")))
    assert result.returncode == 0
    assert "warning: document 1 (Job web): a classic sidecar keeps" in result.stderr


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        ((), "a: &x 1\nb: *x\n", "inject error: <stdin>:2:4: refused: alias *x"),
        (
            (),
            "kind: Deployment\nmetadata: {name: web}\nspec: {template: {spec: {containers: 3}}}\n",
            "inject error: document 1 (Deployment web): spec.template.spec.containers: must be a"
            " list (got int)",
        ),
        (("/nonexistent/app.yaml",), "", "inject error: /nonexistent/app.yaml: cannot read"),
        (("--admin-port", "15006"), "", "inject error: --admin-port and --inbound-port"),
    ],
)
def test_command_errors_exit_2(args: tuple[str, ...], stdin: str, message: str) -> None:
    result = run(*args, stdin=stdin)
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_port_flag_is_a_usage_error() -> None:
    result = run("--admin-port", "70000")
    assert result.returncode == 2
    assert "port must be 1..65535" in result.stderr
