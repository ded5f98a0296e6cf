"""The meshkit sidecar as a benchmark target: command line, config file, port discovery.

Contract the harness assumes of ``sidecar run --config FILE`` (adjust here when it changes):

- the config is the YAML of ``sidecar.config``; ``sidecar validate --config FILE`` accepts it;
  it always names its ``data_plane`` (``python``: the grpc.aio relay, ``envoy``: an Envoy child
  process driven over xDS), since a config without one silently takes Envoy when a binary is
  found; the sidecar prints ``data_plane=NAME`` and the harness checks it got what it asked;
- one worker: listeners on ``127.0.0.1:0``, and the sidecar logs a line
  ``listening outbound=127.0.0.1:PORT`` (stdout or stderr; other ``key=host:port`` pairs such as
  ``admin=`` may share the line);
- ``workers: N > 1``: the config refuses port 0 (each worker would get its own port), so the
  harness reserves a port with a bound, non-listening ``SO_REUSEPORT`` socket it keeps open
  (no probe-then-bind race: nobody else can take the port meanwhile, and a socket that does not
  listen gets no connections), gives that port to the sidecar, whose workers bind it with
  ``SO_REUSEPORT`` (grpcio's default), and waits until the port accepts connections;
- SIGTERM stops it, with its worker processes (they are in its process group and are counted
  in CPU and RSS as its descendants). The Envoy plane's Envoy runs in its own session but is
  the sidecar's child: counted as a descendant too, stopped by the sidecar (and killed with it,
  ``PR_SET_PDEATHSIG``). The harness sets ``drain_delay: 0s`` so a stop takes no 5 s pause.

When ``sidecar run --help`` fails or lacks ``--config``, when ``validate`` rejects the config, or
when the process exits during start-up, the target is reported unavailable with the reason.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

LISTENING = re.compile(r"listening\b[^\n]*\boutbound=(?P<host>[\w.:\[\]-]+?):(?P<port>\d+)\b")
ADMIN = re.compile(r"listening\b[^\n]*\badmin=(?P<host>[\w.:\[\]-]+?):(?P<port>\d+)\b")
DATA_PLANE = re.compile(r"^data_plane=(?P<name>\w+)", re.MULTILINE)
#: Stop quickly: no pause before the listeners close, calls in flight get a second.
FAST_DRAIN = {"drain_delay": "0s", "grace_period": "1s"}


def base_command() -> list[str]:
    """The ``sidecar`` console script of this interpreter, else its ``main`` run via ``-c``."""
    script = Path(sys.executable).with_name("sidecar")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from sidecar.cli import main; sys.exit(main())"]


def unavailable_reason(cwd: str | None = None) -> str | None:
    """Why ``sidecar run`` cannot be benchmarked, or ``None`` when it looks runnable."""
    try:
        out = subprocess.run(
            [*base_command(), "run", "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=cwd,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`sidecar run --help` could not run: {exc}"
    text = out.stdout + out.stderr
    if out.returncode != 0:
        last = text.strip().splitlines()[-1] if text.strip() else f"exit {out.returncode}"
        return f"`sidecar run` subcommand missing ({last})"
    if "--config" not in text:
        return "`sidecar run` subcommand missing (`sidecar run --help` does not mention --config)"
    return None


def config(
    backends: list[tuple[str, int]],
    *,
    workers: int = 1,
    outbound_port: int = 0,
    admin_port: int = 0,
    kinds: bool = False,
    data_plane: str = "python",
) -> dict[str, Any]:
    """Outbound on 127.0.0.1, every path to one round-robin cluster over ``backends``.

    ``kinds``: routes declaring the RPC kind of the bench methods (``/bench.Echo/Unary`` is
    unary, ``/bench.Echo/Stream`` server streaming), so the sidecar takes its hinted paths.
    ``data_plane``: ``python`` or ``envoy`` (``workers`` is then Envoy's ``--concurrency``).
    """
    routes: list[dict[str, Any]] = []
    if kinds:
        routes = [
            {"prefix": "/bench.Echo/Unary", "cluster": "backend", "kind": "unary_unary"},
            {"prefix": "/bench.Echo/Stream", "cluster": "backend", "kind": "unary_stream"},
        ]
    routes.append({"prefix": "/", "cluster": "backend"})
    target = "static:///" + ",".join(f"{host}:{port}" for host, port in backends)
    doc: dict[str, Any] = {
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "outbound": {
            "listen": f"127.0.0.1:{outbound_port}",
            "routes": routes,
        },
        "clusters": {"backend": {"target": target, "lb_policy": "round_robin"}},
        "drain": dict(FAST_DRAIN),
        "log_level": "warning",
        "data_plane": data_plane,
    }
    if workers != 1:
        doc["workers"] = workers
    return doc


def write_config(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def validate_error(config_path: Path, cwd: str | None = None) -> str | None:
    """``sidecar validate``'s complaint about the generated config, ``None`` when accepted."""
    try:
        out = subprocess.run(
            [*base_command(), "validate", "--config", str(config_path)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=cwd,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`sidecar validate` could not run: {exc}"
    if out.returncode == 0:
        return None
    return "config rejected: " + " | ".join(out.stderr.strip().splitlines()[-3:])


def reserve_port(*, shared: bool = True) -> socket.socket:
    """A bound, non-listening socket on 127.0.0.1:0; keep it open while in use.

    ``shared``: ``SO_REUSEPORT``, for a port every worker binds (grpc sets ``SO_REUSEPORT`` on
    its listeners). Otherwise ``SO_REUSEADDR``, for a port one process binds with
    ``SO_REUSEADDR`` only, such as the admin HTTP server (the standard library's
    ``HTTPServer``): Linux lets a second ``SO_REUSEADDR`` socket bind a port while no socket
    listens on it, and refuses a bind next to an ``SO_REUSEPORT``-only socket unless the new
    socket sets ``SO_REUSEPORT`` too. The admin server deliberately does not: it lives in the
    parent only, and a second process silently sharing its port would split probes and scrapes.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    option = socket.SO_REUSEPORT if shared else socket.SO_REUSEADDR
    sock.setsockopt(socket.SOL_SOCKET, option, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def argv(config_path: Path, extra: list[str]) -> list[str]:
    return [*base_command(), "run", "--config", str(config_path), *extra]


def environment(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")  # the port line must reach the log file at once
    return env


def parse_listening(text: str, pattern: re.Pattern[str] = LISTENING) -> tuple[str, int] | None:
    """``(host, port)`` of the outbound listener from the sidecar's log, if it said so yet
    (``pattern=ADMIN``: of the admin server)."""
    match = pattern.search(text)
    if not match:
        return None
    return match.group("host"), int(match.group("port"))


def parse_data_plane(text: str) -> str | None:
    """The data plane the sidecar says it runs (its ``data_plane=NAME`` line), if printed yet."""
    match = DATA_PLANE.search(text)
    return match.group("name") if match else None
