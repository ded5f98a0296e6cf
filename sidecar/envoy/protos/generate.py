"""Rebuild ``envoy_api.binpb``: the Envoy API descriptors the sidecar uses, from ``xds-protos``.

Usage (a developer tool, needs the package index; never run by the sidecar)::

    python -m sidecar.envoy.protos.generate [--wheel PATH] [--out DIR]

The ``xds-protos`` wheel is downloaded with ``pip download --no-deps`` into a temporary
directory and read as a zip file; it is never installed, because installing it replaces
``google``/``opentelemetry`` proto modules other packages own. Each ``*_pb2.py`` passes its
serialized ``FileDescriptorProto`` to ``AddSerializedFile(b'...')``: that literal is read
with ``ast`` (the code is never executed). The output is a ``FileDescriptorSet`` holding the
dependency closure of :data:`ROOTS`, dependencies before dependents, without
``google/protobuf/*.proto``: the well-known types come from the installed protobuf at run time.
``envoy_api.txt`` beside it records the wheel it was built from and the files it holds.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from google.protobuf import descriptor_pb2  # type: ignore[import-untyped]

ROOTS: tuple[str, ...] = (
    "envoy/service/discovery/v3/ads.proto",
    "envoy/service/discovery/v3/discovery.proto",
    "envoy/config/listener/v3/listener.proto",
    "envoy/config/route/v3/route.proto",
    "envoy/config/cluster/v3/cluster.proto",
    "envoy/config/endpoint/v3/endpoint.proto",
    "envoy/config/bootstrap/v3/bootstrap.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/filters/http/grpc_stats/v3/config.proto",
    "envoy/extensions/filters/http/health_check/v3/health_check.proto",
    "envoy/extensions/filters/http/api_key_auth/v3/api_key_auth.proto",
    "envoy/extensions/filters/http/rbac/v3/rbac.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/transport_sockets/tls/v3/secret.proto",
    "envoy/extensions/transport_sockets/tls/v3/cert.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
    "envoy/config/trace/v3/opentelemetry.proto",
    "envoy/extensions/access_loggers/stream/v3/stream.proto",
    "envoy/extensions/access_loggers/file/v3/file.proto",
    "envoy/admin/v3/clusters.proto",
    "envoy/admin/v3/config_dump.proto",
    "envoy/extensions/retry/host/previous_hosts/v3/previous_hosts.proto",
    "envoy/extensions/load_balancing_policies/pick_first/v3/pick_first.proto",
)
"""The proto files asked for; everything they import comes along."""

WELL_KNOWN_PREFIX = "google/protobuf/"
HERE = Path(__file__).resolve().parent
OUTPUT = "envoy_api.binpb"
MANIFEST = "envoy_api.txt"


def download_wheel(directory: Path) -> Path:
    """``pip download`` the newest ``xds-protos`` wheel (no dependencies) into ``directory``."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
            str(directory),
            "xds-protos",
        ],
        check=True,
    )
    wheels = sorted(directory.glob("xds_protos-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one xds-protos wheel in {directory}, found {wheels}")
    return wheels[0]


def serialized_file(source: str) -> bytes | None:
    """The bytes literal a generated ``*_pb2.py`` passes to ``AddSerializedFile``, if any."""
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "AddSerializedFile"
            and len(node.args) == 1
        ):
            value = ast.literal_eval(node.args[0])
            if isinstance(value, bytes):
                return value
    return None


def read_wheel(wheel: Path) -> tuple[str, dict[str, bytes]]:
    """The wheel's version and ``{proto file name: serialized FileDescriptorProto}``."""
    files: dict[str, bytes] = {}
    version = "unknown"
    with zipfile.ZipFile(wheel) as archive:
        for entry in archive.namelist():
            if entry.endswith(".dist-info/METADATA"):
                for line in archive.read(entry).decode().splitlines():
                    if line.startswith("Version:"):
                        version = line.split(":", 1)[1].strip()
            elif entry.endswith("_pb2.py"):
                data = serialized_file(archive.read(entry).decode("utf-8"))
                if data is not None:
                    proto = descriptor_pb2.FileDescriptorProto.FromString(data)
                    files[proto.name] = data
    return version, files


def closure(files: Mapping[str, bytes], roots: Iterable[str]) -> list[str]:
    """``roots`` and what they import, dependencies first; well-known types left out."""
    ordered: list[str] = []
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in done or name.startswith(WELL_KNOWN_PREFIX):
            return
        if name in path:
            raise SystemExit(f"import cycle: {' -> '.join((*path, name))}")
        if name not in files:
            raise SystemExit(f"{name} (imported by {path[-1] if path else 'ROOTS'}) not in wheel")
        for dependency in descriptor_pb2.FileDescriptorProto.FromString(files[name]).dependency:
            visit(dependency, (*path, name))
        done.add(name)
        ordered.append(name)

    for root in roots:
        visit(root, ())
    return ordered


def build(wheel: Path, out: Path) -> tuple[str, int, int]:
    """Write the descriptor set and its manifest; return (version, file count, bytes)."""
    version, files = read_wheel(wheel)
    names = closure(files, ROOTS)
    file_set = descriptor_pb2.FileDescriptorSet()
    for name in names:
        file_set.file.add().MergeFromString(files[name])
    data = file_set.SerializeToString(deterministic=True)
    (out / OUTPUT).write_bytes(data)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    manifest = [
        f"# {OUTPUT}: built by sidecar/envoy/protos/generate.py",
        f"# from {wheel.name} (xds-protos {version}, sha256 {digest})",
        f"# {len(names)} files, {len(data)} bytes; well-known types come from protobuf",
        *names,
    ]
    (out / MANIFEST).write_text("\n".join(manifest) + "\n")
    return version, len(names), len(data)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--wheel", type=Path, help="an xds-protos wheel already downloaded")
    parser.add_argument("--out", type=Path, default=HERE, help="output directory")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download_wheel(Path(tmp))
        version, count, size = build(wheel, args.out)
    print(f"xds-protos {version}: {count} files, {size} bytes -> {args.out / OUTPUT}")


if __name__ == "__main__":
    main()
