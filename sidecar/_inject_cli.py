"""The ``sidecar inject`` command: read Kubernetes YAML (bounded, no aliases), hand every
document to :mod:`sidecar.inject`, write YAML back.

Documents go through PyYAML as data: keys keep their order, values their types, but comments,
quoting styles and anchors are not kept, and empty documents are dropped.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, BinaryIO, TextIO

import yaml
from yaml.composer import Composer
from yaml.nodes import Node

from sidecar import _config_parse
from sidecar._config_parse import LimitError, yaml_error
from sidecar.inject import (
    DEFAULT_CONFIG_MAP,
    DEFAULT_IMAGE,
    Change,
    InjectError,
    InjectOptions,
    describe,
    inject,
    uninject,
)

EXIT_OK = 0
EXIT_INPUT = 2

#: Largest input read (etcd stores objects of at most 1.5 MiB; this is many of them).
MAX_INPUT_BYTES = 16 << 20
#: Most documents in one input.
MAX_DOCUMENTS = 10_000
#: Deepest nesting (CRD schemas nest deeply; pod templates are about 12 levels).
MAX_DEPTH = 100
#: Most entries in one mapping or list.
MAX_ENTRIES = 100_000

_EPILOG = """\
A pod template is skipped when it or its workload has the annotation
meshkit.io/inject: "false", or when it already has a container named meshkit-sidecar.
The sidecar reads /etc/meshkit/sidecar.yaml from the ConfigMap (--config-map, key
sidecar.yaml); its admin.listen must be 0.0.0.0:9901 and inbound.listen port 15006 (or pass
--admin-port / --inbound-port). Comments in the input are not kept.

exit status:
  0  ok
  2  unreadable input, or an object that cannot be injected; one "inject error:" line

examples:
  kubectl kustomize deploy/app | sidecar inject | kubectl apply -f -
  sidecar inject --classic --image registry.example/meshkit-sidecar:0.1.0 app.yaml
  sidecar inject --uninject injected.yaml > app.yaml"""

_Base: Any = _config_parse.Loader


class _ManifestLoader(_Base):  # type: ignore[misc]  # the base is picked at import (libyaml)
    """The config loader's bounds (duplicate keys, huge integers refused), with limits sized
    for manifests, and no aliases at all: Kubernetes objects have no use for them, and
    refusing them rules out exponential expansion."""

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()
        mark = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            raise LimitError(None, None, f"alias *{event.anchor}: YAML aliases are refused", mark)
        if parent is not None and len(parent.value) >= MAX_ENTRIES:
            raise LimitError(None, None, f"more than {MAX_ENTRIES} entries in one collection", mark)
        if self._depth >= MAX_DEPTH:
            raise LimitError(None, None, f"nesting deeper than {MAX_DEPTH} levels", mark)
        self._depth += 1
        try:
            node: Node | None = Composer.compose_node(self, parent, index)
        finally:
            self._depth -= 1
        return node


def read_documents(data: bytes, name: str = "<stdin>") -> list[Any]:
    """The YAML documents in ``data`` (empty ones dropped); :class:`InjectError` naming
    ``name`` and line:column when it is too large, not UTF-8, or not YAML within the limits."""
    if len(data) > MAX_INPUT_BYTES:
        raise InjectError(f"{name}: larger than {MAX_INPUT_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InjectError(f"{name}: not UTF-8 text ({exc.reason})") from None
    loader = _ManifestLoader(text)
    documents: list[Any] = []
    try:
        while loader.check_data():
            if len(documents) >= MAX_DOCUMENTS:
                raise InjectError(f"{name}: more than {MAX_DOCUMENTS} documents")
            document = loader.get_data()
            if document is not None:
                documents.append(document)
    except yaml.YAMLError as exc:
        raise InjectError(str(yaml_error(name, exc))) from None
    finally:
        loader.dispose()
    return documents


def write_documents(documents: list[Any], out: TextIO) -> None:
    """``documents`` as a YAML stream, keys in their original order."""
    yaml.safe_dump_all(
        documents, out, sort_keys=False, default_flow_style=False, allow_unicode=True, width=1 << 16
    )


def process(
    documents: list[Any], options: InjectOptions, *, remove: bool = False
) -> list[tuple[str, Change]]:
    """Inject (or with ``remove``, uninject) every document in place; returns each pod
    template's change with the document's description."""
    changes: list[tuple[str, Change]] = []
    for i, document in enumerate(documents, 1):
        name = describe(document, i)
        try:
            found = uninject(document) if remove else inject(document, options)
        except InjectError as exc:
            raise InjectError(f"{name}: {exc}") from None
        changes.extend((name, change) for change in found)
    return changes


def _runs_to_completion(document: Any) -> bool:
    return isinstance(document, dict) and document.get("kind") in ("Job", "CronJob")


def add_inject_parser(commands: Any) -> None:
    """The ``inject`` subcommand, on the ``sidecar`` command's subparsers."""
    parser = commands.add_parser(
        "inject",
        help="add the sidecar to Kubernetes workloads (YAML in, YAML out)",
        description="""\
Add the meshkit sidecar to every pod template in Kubernetes YAML (Pod, Deployment,
StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job, CronJob, List items): as a
native sidecar (an init container with restartPolicy: Always, Kubernetes >= 1.29) unless
--classic. Idempotent; --uninject takes it out again.""",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "file", nargs="?", default="-", metavar="FILE", help="YAML to read (default: stdin)"
    )
    parser.add_argument("--output", "-o", metavar="FILE", help="write here (default: stdout)")
    parser.add_argument(
        "--image", default=DEFAULT_IMAGE, help=f"sidecar image (default: {DEFAULT_IMAGE})"
    )
    parser.add_argument(
        "--config-map",
        default=DEFAULT_CONFIG_MAP,
        metavar="NAME",
        help=f"ConfigMap with the sidecar's sidecar.yaml (default: {DEFAULT_CONFIG_MAP})",
    )
    parser.add_argument(
        "--certs-secret",
        metavar="NAME",
        help="also mount this Secret (tls.crt, tls.key, ca.crt) at /certs",
    )
    parser.add_argument(
        "--classic",
        action="store_true",
        help="a plain second container (clusters older than 1.29); the app and the sidecar then"
        " start and stop together",
    )
    parser.add_argument(
        "--admin-port",
        type=_port,
        default=9901,
        metavar="PORT",
        help="the config's admin.listen port: probes and metrics (default: 9901)",
    )
    parser.add_argument(
        "--inbound-port",
        type=_port,
        default=15006,
        metavar="PORT",
        help="the config's inbound.listen port (default: 15006)",
    )
    parser.add_argument(
        "--uninject", action="store_true", help="remove what inject added, nothing else"
    )
    parser.add_argument(
        "--quiet", "-q", action="store_true", help="no line per pod template on stderr"
    )


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1..65535 (got {port})")
    return port


def run_inject(args: argparse.Namespace) -> int:
    """Run ``sidecar inject`` with parsed ``args``; returns the exit status."""
    options = InjectOptions(
        image=args.image,
        config_map=args.config_map,
        classic=args.classic,
        certs_secret=args.certs_secret,
        inbound_port=args.inbound_port,
        admin_port=args.admin_port,
    )
    if args.admin_port == args.inbound_port:
        print("inject error: --admin-port and --inbound-port are the same", file=sys.stderr)
        return EXIT_INPUT
    try:
        name = "<stdin>" if args.file == "-" else args.file
        data = _read(sys.stdin.buffer) if args.file == "-" else _read_file(args.file)
        documents = read_documents(data, name)
        changes = process(documents, options, remove=args.uninject)
    except InjectError as exc:
        print(f"inject error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    if not args.quiet:
        for document, change in changes:
            print(f"{document} {change.where}: {change.action}", file=sys.stderr)
    if options.classic and not args.uninject:
        for i, document in enumerate(documents, 1):
            if _runs_to_completion(document):
                print(
                    f"warning: {describe(document, i)}: a classic sidecar keeps a Job's pod"
                    " running after its containers exit; use a native sidecar (no --classic)",
                    file=sys.stderr,
                )
    if args.output is None:
        write_documents(documents, sys.stdout)
    else:
        with open(args.output, "w", encoding="utf-8") as out:
            write_documents(documents, out)
    return EXIT_OK


def _read(stream: BinaryIO) -> bytes:
    return stream.read(MAX_INPUT_BYTES + 1)


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as stream:
            return _read(stream)
    except OSError as exc:
        raise InjectError(f"{path}: cannot read: {exc.strerror or exc}") from None
