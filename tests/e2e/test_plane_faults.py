"""Faults of the Envoy data plane under the real sidecar: Envoy killed outright, and a config
meshkit's validation accepts but Envoy rejects (an xDS NACK).

Envoy-only: these use their own ``envoy_sidecars`` fixture rather than the two-plane one.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from sidecar.envoy.admin_client import EnvoyAdmin
from tests.e2e.conftest import (
    Sidecar,
    Sidecars,
    outbound_config,
    skip_without_plane,
    static,
    with_defaults,
)
from tests.support.echo import EchoRequest, EchoServer, EchoStub
from tests.support.waiting import wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, SO_REUSEPORT"),
]

#: The xDS types meshkit serves its own Envoy (the last part of the type URL).
XDS_TYPES = ("Listener", "RouteConfiguration", "Cluster", "ClusterLoadAssignment")
#: How long calls may fail after Envoy was killed: back-off 0.5 s, then start-up.
RECOVERY = 5.0
#: A cluster keepalive meshkit accepts (timeout > 0) and Envoy rejects (KeepaliveSettings
#: requires timeout >= 1ms).
REJECTED_KEEPALIVE = {"time": "30s", "timeout": "0.5ms"}


@pytest.fixture
def envoy_sidecars(tmp_path: Path) -> Iterator[Sidecars]:
    """Sidecar processes on the Envoy plane only."""
    skip_without_plane("envoy")
    started = Sidecars(tmp_path, "envoy")
    yield started
    started.kill_all()


async def unary(address: str) -> str:
    """One call through the sidecar on a new channel; the backend that answered."""
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await EchoStub(channel).Unary(EchoRequest(message="hi"), timeout=5)
    return str(reply.server)


async def answers(address: str, backend: str) -> bool:
    """One call succeeds and ``backend`` answers it."""
    try:
        return await unary(address) == backend
    except grpc.aio.AioRpcError:
        return False


async def envoy_status(sidecar: Sidecar) -> dict[str, Any]:
    """``data_plane_status`` of the admin ``/config``."""
    status = (await sidecar.get_json("/config"))["data_plane_status"]
    assert status["plane"] == "envoy", status
    return dict(status)


def xds_types(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The xDS status of the sidecar's own Envoy per type (last part of the type URL)."""
    (group,) = status["xds"].values()
    return {url.rsplit(".", 1)[-1]: state for url, state in group["types"].items()}


def acked(status: dict[str, Any]) -> bool:
    """Every type's current version is the one Envoy ACKed last."""
    types = xds_types(status)
    return set(XDS_TYPES) <= types.keys() and all(
        state["acked"] == state["version"] for state in types.values()
    )


def envoy_admin(pid: int) -> EnvoyAdmin:
    """A client for the admin of the Envoy with ``pid``: its command line names the file
    where it wrote its admin address."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    path = argv[argv.index(b"--admin-address-path") + 1].decode()
    return EnvoyAdmin(Path(path).read_text().strip())


def sample(text: str, name: str) -> float | None:
    """The value of the unlabelled sample ``name`` in Prometheus text, else ``None``."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def reserved_port() -> socket.socket:
    """A bound, never-listening ``SO_REUSEPORT`` socket holding a loopback port for Envoy's
    listener (Envoy binds with ``SO_REUSEPORT`` too; no probe-then-bind race)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


# -- Envoy killed --------------------------------------------------------------------------



@pytest.mark.parametrize(
    "listen",
    [
        "fixed_port",
        "port_0",
    ],
)
async def test_envoy_killed_is_restarted_and_serves_again(
    envoy_sidecars: Sidecars, echo: EchoServer, listen: str
) -> None:
    with reserved_port() as reserved:
        config = outbound_config(static(echo))
        if listen == "fixed_port":
            config["outbound"]["listen"] = f"127.0.0.1:{reserved.getsockname()[1]}"
        sidecar = await envoy_sidecars.start(config)
        assert await unary(sidecar.outbound) == "echo"
        status = await envoy_status(sidecar)
        old_pid = status["envoy"]["pid"]
        assert status["envoy"]["restarts"] == 0 and acked(status), status

        os.kill(old_pid, signal.SIGKILL)
        killed = time.monotonic()

        async def restarted() -> bool:
            pid = (await envoy_status(sidecar))["envoy"]["pid"]
            return pid is not None and pid != old_pid

        await wait_until(restarted, timeout=RECOVERY, message="a new Envoy runs")
        await wait_until(
            lambda: answers(sidecar.outbound, "echo"),
            timeout=RECOVERY,
            message="calls through the announced outbound address succeed again",
        )
        print(f"\ncalls succeed again {time.monotonic() - killed:.2f} s after kill -9 of Envoy")

    assert sidecar.process.poll() is None
    status = await envoy_status(sidecar)
    assert status["envoy"]["restarts"] == 1
    (group,) = status["xds"].values()
    assert group["streams"] == 1  # the dead Envoy's stream closed, the new one's is open
    assert acked(status), status
    _, metrics = await sidecar.get("/metrics")
    assert sample(metrics, "meshkit_envoy_restarts_total") == 1.0
    # /config keeps the last ACK per type across streams: ask the new Envoy itself too.
    stats = await envoy_admin(status["envoy"]["pid"]).astats_json(
        filter_regex=r"^(cluster_manager\.cds|listener_manager\.lds|control_plane)\."
    )
    values = {s["name"]: s["value"] for s in stats["stats"] if "value" in s}
    assert values["control_plane.connected_state"] == 1
    for xds in ("cluster_manager.cds", "listener_manager.lds"):
        assert values[f"{xds}.update_success"] >= 1, values
        assert values[f"{xds}.update_rejected"] == 0, values


# -- a config Envoy rejects ----------------------------------------------------------------


async def test_reload_with_a_setting_envoy_cannot_take_is_refused_and_nothing_changes(
    envoy_sidecars: Sidecars, echo: EchoServer
) -> None:
    # A cluster keepalive timeout under 1 ms is valid for meshkit but not for Envoy. Sent to
    # Envoy it would be NACKed while /config claimed it applied: the plane refuses it first.
    sidecar = await envoy_sidecars.start(outbound_config(static(echo)))
    assert await unary(sidecar.outbound) == "echo"
    before = xds_types(await envoy_status(sidecar))["Cluster"]
    log_at = len(sidecar.log)
    rejected = outbound_config(static(echo), keepalive=REJECTED_KEEPALIVE)
    sidecar.write_config(with_defaults({**rejected, "data_plane": "envoy"}))
    sidecar.send(signal.SIGHUP)
    await sidecar.wait_log("config reload failed", timeout=10, after=log_at)
    assert "clusters.backend.keepalive.timeout" in sidecar.log[log_at:]
    after = xds_types(await envoy_status(sidecar))["Cluster"]
    assert after["version"] == before["version"] and after["nack"] is None, after
    for _ in range(5):
        assert await unary(sidecar.outbound) == "echo"
    _, metrics = await sidecar.get("/metrics")
    assert re.search(r'^meshkit_config_reloads_total\{result="failed"\} 1\.0$', metrics, re.M)
    config = await sidecar.get_json("/config")
    assert config["clusters"]["backend"]["keepalive"]["timeout"] != "0.5ms"  # still the old one


def test_validate_refuses_a_cluster_envoy_would_reject(tmp_path: Path) -> None:
    skip_without_plane("envoy")
    config = outbound_config("static:///127.0.0.1:1", keepalive=REJECTED_KEEPALIVE)
    config["data_plane"] = "envoy"
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MESHKIT_")}
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "validate", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 2, result
    assert "clusters.backend.keepalive.timeout" in result.stderr, result.stderr
