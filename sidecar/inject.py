"""``sidecar inject``: add the meshkit sidecar to the pod templates of Kubernetes objects, or
take it out again (``uninject``).

Every pod template is found: Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet,
ReplicationController, Job, CronJob (``spec.jobTemplate.spec.template``), and the items of a
``List`` (``kind: List`` or ``*List``). A template is skipped when it opts out
(``meshkit.io/inject: "false"`` on the workload or on the template) or already has a container
named ``meshkit-sidecar``. What injection adds:

- the sidecar container: a *native sidecar* (first init container, ``restartPolicy: Always``,
  Kubernetes >= 1.29) by default, so it starts (startup probe on ``/live``, which answers once
  the listeners are bound) before the app and stops after it; with ``classic``, the first
  plain container, with a postStart hook waiting for ``/live`` (the kubelet starts the app
  after it) and a preStop sleep keeping it up while the app drains, plus the
  ``kubectl.kubernetes.io/default-container`` annotation naming the app's container;
- its ports (inbound, admin), probes (startup ``/live``, readiness ``/ready``, liveness
  ``/live``), config volume (a ConfigMap), a ``/tmp`` emptyDir, optionally a certificate Secret;
- the annotation ``meshkit.io/injected: "true"``, and ``meshkit.io/injected-created`` naming
  the fields injection had to create, so :func:`uninject` restores the original exactly.

Nothing else changes: the objects are plain data (dicts keep their key order), and
``inject(uninject(x)) == x`` for an injected ``x``. Pure functions; reading and writing YAML is
in :mod:`sidecar._inject_cli`.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

#: The annotation a workload or pod template sets to ``"false"`` to stay out.
INJECT_ANNOTATION = "meshkit.io/inject"
#: The annotation inject sets on the pod templates it changed.
INJECTED_ANNOTATION = "meshkit.io/injected"
#: Which of the template's fields inject created (comma-separated), for uninject.
CREATED_ANNOTATION = "meshkit.io/injected-created"
#: The sidecar container's name (also how a hand-written sidecar is recognized).
CONTAINER_NAME = "meshkit-sidecar"
#: The image when none is given: the one ``deploy/base`` names.
DEFAULT_IMAGE = "meshkit/sidecar:0.1.0"
#: The ConfigMap holding ``sidecar.yaml`` when none is given.
DEFAULT_CONFIG_MAP = "meshkit-sidecar"
CONFIG_DIR = "/etc/meshkit"
CONFIG_FILE = "sidecar.yaml"
CERTS_DIR = "/certs"
VOLUME_CONFIG = "meshkit-sidecar-config"
VOLUME_TMP = "meshkit-sidecar-tmp"
VOLUME_CERTS = "meshkit-sidecar-certs"
_VOLUMES = (VOLUME_CONFIG, VOLUME_TMP, VOLUME_CERTS)
#: Which container ``kubectl logs`` / ``exec`` pick when none is named.
DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"
#: How long a classic sidecar keeps forwarding after pod deletion starts (its preStop): the
#: app's own preStop and shutdown fit in it.
CLASSIC_HOLD_SECONDS = 20
#: Kinds whose pod template is ``spec.template``.
TEMPLATE_KINDS = (
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "ReplicationController",
    "Job",
)


class InjectError(ValueError):
    """An object that cannot be injected as it is; the message names where."""


@dataclass(frozen=True)
class InjectOptions:
    """What the injected sidecar looks like. The ports must match the sidecar config in the
    ConfigMap: ``inbound.listen`` on ``inbound_port``, ``admin.listen`` on
    ``0.0.0.0:<admin_port>`` (the kubelet probes the pod IP)."""

    image: str = DEFAULT_IMAGE
    config_map: str = DEFAULT_CONFIG_MAP
    classic: bool = False
    certs_secret: str | None = None
    inbound_port: int = 15006
    admin_port: int = 9901


@dataclass(frozen=True)
class Change:
    """One pod template looked at: where, and what happened (``injected``, ``removed``,
    ``opted out``, ``already injected``, ``not injected``)."""

    where: str
    action: str


def sidecar_container(options: InjectOptions) -> dict[str, Any]:
    """The sidecar container inject adds."""
    admin = {"path": "/live", "port": "meshkit-admin"}
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": options.image,
        "args": ["run", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}"],
    }
    if not options.classic:
        # a native sidecar: started before the app containers, stopped after them
        container["restartPolicy"] = "Always"
    else:
        # Listed first: the kubelet starts the next container only once postStart returns,
        # so the app starts after the sidecar listens; preStop keeps the sidecar forwarding
        # while the app drains (both get SIGTERM at once otherwise).
        container["lifecycle"] = {
            "postStart": {
                "exec": {"command": ["python", "-c", wait_live_script(options.admin_port)]}
            },
            "preStop": {"exec": {"command": ["sleep", str(CLASSIC_HOLD_SECONDS)]}},
        }
    container["ports"] = [
        {"name": "meshkit-inbound", "containerPort": options.inbound_port, "protocol": "TCP"},
        {"name": "meshkit-admin", "containerPort": options.admin_port, "protocol": "TCP"},
    ]
    # /live answers once the listeners are bound: the app starts after that (native sidecar).
    container["startupProbe"] = {"httpGet": dict(admin), "periodSeconds": 1, "failureThreshold": 30}
    # three misses 5 s apart before the pod leaves the Services: one slow answer does not flap
    container["readinessProbe"] = {
        "httpGet": {"path": "/ready", "port": "meshkit-admin"},
        "periodSeconds": 5,
        "failureThreshold": 3,
    }
    container["livenessProbe"] = {
        "httpGet": dict(admin),
        "periodSeconds": 10,
        "failureThreshold": 3,
    }
    container["resources"] = {
        "requests": {"cpu": "100m", "memory": "160Mi"},
        "limits": {"cpu": "1", "memory": "320Mi"},
    }
    container["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    mounts: list[dict[str, Any]] = [
        {"name": VOLUME_CONFIG, "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": VOLUME_TMP, "mountPath": "/tmp"},
    ]
    if options.certs_secret is not None:
        mounts.append({"name": VOLUME_CERTS, "mountPath": CERTS_DIR, "readOnly": True})
    container["volumeMounts"] = mounts
    return container


def wait_live_script(admin_port: int) -> str:
    """The classic sidecar's postStart hook: Python (the image has no curl) polling
    ``/live`` on loopback, 60 s at most; a failing hook restarts the container."""
    return f"""\
import time, urllib.request
deadline = time.monotonic() + 60
while True:
    try:
        urllib.request.urlopen("http://127.0.0.1:{admin_port}/live", timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            raise SystemExit("meshkit sidecar not live after 60s")
        time.sleep(0.2)
"""


def sidecar_volumes(options: InjectOptions) -> list[dict[str, Any]]:
    """The pod volumes inject adds."""
    volumes: list[dict[str, Any]] = [
        {"name": VOLUME_CONFIG, "configMap": {"name": options.config_map}},
        {"name": VOLUME_TMP, "emptyDir": {"sizeLimit": "16Mi"}},
    ]
    if options.certs_secret is not None:
        volumes.append(
            # 0444: only the sidecar container mounts it, and without the pod's fsGroup a 0440
            # file would be unreadable by the sidecar's non-root user
            {
                "name": VOLUME_CERTS,
                "secret": {"secretName": options.certs_secret, "defaultMode": 292},
            }
        )
    return volumes


def inject(obj: Any, options: InjectOptions, where: str = "") -> list[Change]:
    """Add the sidecar to every pod template in ``obj`` (changed in place); returns what
    was done to each template found. :class:`InjectError` for a malformed template."""
    changes = []
    for at, template, workload in _templates(obj, where):
        try:
            action = _inject_template(template, workload, options)
        except InjectError as exc:
            raise InjectError(f"{at}.{exc}" if at else str(exc)) from None
        changes.append(Change(at or "pod", action))
    return changes


def uninject(obj: Any, where: str = "") -> list[Change]:
    """Remove exactly what :func:`inject` added from every pod template in ``obj`` (in place);
    hand-written sidecars (no ``meshkit.io/injected`` annotation) stay."""
    return [Change(at or "pod", _uninject_template(t)) for at, t, _ in _templates(obj, where)]


def describe(obj: Any, index: int) -> str:
    """``document 3 (Deployment echo)``: how messages name a document."""
    if isinstance(obj, dict):
        metadata = obj.get("metadata")
        name = metadata.get("name") if isinstance(metadata, dict) else None
        kind = obj.get("kind")
        if isinstance(kind, str):
            return f"document {index} ({kind}{' ' + name if isinstance(name, str) else ''})"
    return f"document {index}"


# --------------------------------------------------------------------------- finding templates


def _templates(obj: Any, where: str) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, pod template, workload) for each pod template in ``obj``; a Pod is its own
    template (``metadata`` + ``spec``)."""
    if not isinstance(obj, dict):
        return
    kind = obj.get("kind")
    if not isinstance(kind, str):
        return
    if kind.endswith("List") and "items" in obj:
        items = _typed(obj, "items", list, where)
        for i, item in enumerate(items):
            yield from _templates(item, f"{where}.items[{i}]" if where else f"items[{i}]")
        return
    path: tuple[str, ...]
    if kind == "Pod":
        path = ()
    elif kind in TEMPLATE_KINDS:
        path = ("spec", "template")
    elif kind == "CronJob":
        path = ("spec", "jobTemplate", "spec", "template")
    else:
        return
    node: dict[str, Any] = obj
    walked = where
    for key in path:
        node = _typed(node, key, dict, walked)
        walked = f"{walked}.{key}" if walked else key
    yield walked, node, obj


def _typed(node: MutableMapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = node.get(key)
    if not isinstance(value, kind):
        name = "a mapping" if kind is dict else "a list"
        path = f"{where}.{key}" if where else key
        raise InjectError(f"{path}: must be {name} (got {type(value).__name__})")
    return value


def _annotations(obj: dict[str, Any]) -> dict[str, Any]:
    metadata = obj.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    return annotations if isinstance(annotations, dict) else {}


def _opted_out(*objs: dict[str, Any]) -> bool:
    return any(str(_annotations(o).get(INJECT_ANNOTATION, "")).lower() == "false" for o in objs)


def _names(items: Any) -> set[Any]:
    if not isinstance(items, list):
        return set()
    return {c.get("name") for c in items if isinstance(c, dict)}


# --------------------------------------------------------------------------- inject / uninject


def _inject_template(
    template: dict[str, Any], workload: dict[str, Any], options: InjectOptions
) -> str:
    if _opted_out(workload, template):
        return "opted out"
    spec = _typed(template, "spec", dict, "spec")
    containers = _typed(spec, "containers", list, "spec")
    if CONTAINER_NAME in _names(containers) | _names(spec.get("initContainers")):
        return "already injected"
    for key in ("initContainers", "volumes"):
        if key in spec and not isinstance(spec[key], list):
            _typed(spec, key, list, "spec")
    clashing = _names(spec.get("volumes")) & set(_VOLUMES)
    if clashing:
        raise InjectError(f"spec.volumes: already has a volume named {sorted(clashing)[0]!r}")
    if "metadata" in template:
        _typed(template, "metadata", dict, "")
        if "annotations" in template["metadata"]:
            _typed(template["metadata"], "annotations", dict, "metadata")

    created = []
    if "metadata" not in template:
        created.append("metadata")
        template["metadata"] = {}
    metadata = template["metadata"]
    if "annotations" not in metadata:
        created.append("annotations")
        metadata["annotations"] = {}
    container = sidecar_container(options)
    if options.classic:
        annotations = metadata["annotations"]
        if DEFAULT_CONTAINER_ANNOTATION not in annotations and containers:
            # the sidecar goes first: kubectl logs/exec keep picking the app by default
            first = containers[0].get("name") if isinstance(containers[0], dict) else None
            if isinstance(first, str):
                created.append("default-container")
                annotations[DEFAULT_CONTAINER_ANNOTATION] = first
        containers.insert(0, container)
    else:
        if "initContainers" not in spec:
            created.append("initContainers")
            spec["initContainers"] = []
        # first: init containers after it (migrations...) can already call out through it
        spec["initContainers"].insert(0, container)
    if "volumes" not in spec:
        created.append("volumes")
        spec["volumes"] = []
    spec["volumes"].extend(sidecar_volumes(options))
    annotations = metadata["annotations"]
    annotations[INJECTED_ANNOTATION] = "true"
    if created:
        annotations[CREATED_ANNOTATION] = ",".join(created)
    else:  # a stale one from an injection whose container was deleted since
        annotations.pop(CREATED_ANNOTATION, None)
    return "injected"


def _uninject_template(template: dict[str, Any]) -> str:
    annotations = _annotations(template)
    if annotations.get(INJECTED_ANNOTATION) != "true":
        return "not injected"
    created = str(annotations.get(CREATED_ANNOTATION, "")).split(",")
    spec = template.get("spec")
    if isinstance(spec, dict):
        for key in ("initContainers", "containers"):
            items = spec.get(key)
            if isinstance(items, list):
                items[:] = [c for c in items if not _named(c, CONTAINER_NAME)]
                if not items and key in created:
                    del spec[key]
        volumes = spec.get("volumes")
        if isinstance(volumes, list):
            volumes[:] = [v for v in volumes if not any(_named(v, n) for n in _VOLUMES)]
            if not volumes and "volumes" in created:
                del spec["volumes"]
    annotations.pop(INJECTED_ANNOTATION, None)
    annotations.pop(CREATED_ANNOTATION, None)
    if "default-container" in created:
        annotations.pop(DEFAULT_CONTAINER_ANNOTATION, None)
    metadata = template["metadata"]
    if not annotations and "annotations" in created:
        del metadata["annotations"]
    if not metadata and "metadata" in created:
        del template["metadata"]
    return "removed"


def _named(item: Any, name: str) -> bool:
    return isinstance(item, dict) and item.get("name") == name
