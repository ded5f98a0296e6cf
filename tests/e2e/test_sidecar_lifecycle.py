"""The real sidecar's life: start-up failures, drain on SIGTERM, reload on SIGHUP and on disk."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.conftest import Sidecar, Sidecars, outbound_config, static, with_defaults
from tests.support.echo import EchoRequest, EchoServer, EchoStub, start_echo_server
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e


@pytest_asyncio.fixture
async def pair() -> AsyncIterator[tuple[EchoServer, EchoServer]]:
    a = await start_echo_server("a")
    b = await start_echo_server("b")
    yield a, b
    await asyncio.gather(a.stop(None), b.stop(None))


async def unary(address: str, message: str = "hi", **kwargs: Any) -> str:
    """One call through the sidecar; the name of the backend that answered."""
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await EchoStub(channel).Unary(EchoRequest(message=message, **kwargs), timeout=10)
    return str(reply.server)


def run_sidecar(config_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "sidecar.yaml"
    path.write_text(config_text)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MESHKIT_")}
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


# -- start-up ----------------------------------------------------------------------------------


def test_bad_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    config = outbound_config("static:///127.0.0.1:1", retry={"max_attempts": 7})
    result = run_sidecar(yaml.safe_dump(config), tmp_path)
    assert result.returncode == 2, result
    assert "config error: clusters.backend.retry.max_attempts: must be 2..5" in result.stderr
    assert "Traceback" not in result.stderr
    assert "listening" not in result.stdout


def test_port_in_use_exits_1_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = outbound_config("static:///127.0.0.1:1")
        config["outbound"]["listen"] = f"127.0.0.1:{port}"
        config["admin"] = {"listen": "127.0.0.1:0"}
        result = run_sidecar(yaml.safe_dump(config), tmp_path)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("sidecar:")]
    assert lines == [lines[0]] and f"127.0.0.1:{port}" in lines[0], result.stderr


def test_unusable_certificate_exits_2_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "tls.crt").write_text("not a certificate\n")
    (tmp_path / "tls.key").write_text("not a key\n")
    config = {
        "inbound": {
            "listen": "127.0.0.1:0",
            "app": "127.0.0.1:1",
            "tls": {"cert": "tls.crt", "key": "tls.key", "require_client_cert": False},
        },
        "admin": {"listen": "127.0.0.1:0"},
    }
    result = run_sidecar(yaml.safe_dump(config), tmp_path)
    # checked with the config, before anything starts: a config error (exit 2) per file
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert "config error: inbound.tls.cert:" in result.stderr
    assert "tls.crt: not a PEM certificate" in result.stderr
    assert "config error: inbound.tls.key:" in result.stderr


# -- drain -------------------------------------------------------------------------------------


async def health_status(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return int(reply.status)


async def test_sigterm_drains_calls_in_flight(sidecars: Sidecars, echo: EchoServer) -> None:
    drain_delay, grace, idle = 0.5, 5.0, 0.3
    config = outbound_config(static(echo))
    config["inbound"] = {"listen": "127.0.0.1:0", "app": echo.address}
    config["drain"] = {"drain_delay": drain_delay, "grace_period": grace, "outbound_idle": idle}
    sidecar = await sidecars.start(config)
    assert await health_status(sidecar.inbound) == health_pb2.HealthCheckResponse.SERVING

    channel = grpc.aio.insecure_channel(sidecar.outbound)
    stub = EchoStub(channel)
    in_flight = [
        asyncio.ensure_future(stub.Unary(EchoRequest(message=str(i), delay_s=2.0), timeout=15))
        for i in range(3)
    ]
    await wait_until(lambda: echo.servicer.active == 3, timeout=10, message="calls in flight")
    started = time.monotonic()
    sidecar.send(signal.SIGTERM)

    await wait_until(
        lambda: _status_is(sidecar, 503, "draining"), timeout=5, message="/ready 503 at once"
    )
    assert await health_status(sidecar.inbound) == health_pb2.HealthCheckResponse.NOT_SERVING
    await sidecar.wait_log("graceful drain: stopping", timeout=5)
    # The inbound listener refuses from now on: at once for grpc's server.stop(), within the
    # two admin requests that close Envoy's inbound listener on the Envoy plane.
    await wait_until(
        lambda: _refused(sidecar.inbound), timeout=2, message="new inbound calls refused"
    )
    # The outbound one serves on while the local app is there (it may still call out).
    assert await unary(sidecar.outbound, "late") == "echo"

    replies = await asyncio.gather(*in_flight)
    assert sorted(r.message for r in replies) == ["0", "1", "2"]
    assert sidecar.process.poll() is None
    app_gone = time.monotonic()
    await echo.stop(None)  # the app exits: nothing can call out any more
    assert await sidecar.wait_exit(timeout=idle + 5) == 0
    assert time.monotonic() - app_gone < idle + 2
    assert time.monotonic() - started < drain_delay + grace
    assert "the local app is gone" in sidecar.log
    await channel.close()


async def test_outbound_only_sidecar_waits_for_calls_to_stop(
    sidecars: Sidecars, echo: EchoServer
) -> None:
    idle = 0.5
    config = outbound_config(static(echo))
    config["drain"] = {"drain_delay": "5s", "grace_period": "5s", "outbound_idle": idle}
    sidecar = await sidecars.start(config)
    async with grpc.aio.insecure_channel(sidecar.outbound) as channel:
        stub = EchoStub(channel)
        sidecar.send(signal.SIGTERM)
        await sidecar.wait_log("graceful drain: draining", timeout=5)
        signalled = time.monotonic()
        calls = 0
        # an app still at work: back-to-back calls keep the outbound listener open past the
        # idle period (and drain_delay does not apply: there is no inbound listener to drain)
        while time.monotonic() - signalled < 3 * idle:
            await stub.Unary(EchoRequest(message="busy", delay_s=0.1), timeout=5)
            calls += 1
        stopped_calling = time.monotonic()
        assert sidecar.process.poll() is None
    assert await sidecar.wait_exit(timeout=5) == 0
    assert time.monotonic() - stopped_calling < idle + 2
    assert calls >= 5
    assert f"no outbound call for {idle:g} s" in sidecar.log


async def test_outbound_max_wait_bounds_the_wait_for_the_app(
    sidecars: Sidecars, echo: EchoServer
) -> None:
    config = outbound_config(static(echo))
    config["inbound"] = {"listen": "127.0.0.1:0", "app": echo.address}
    config["drain"] = {"drain_delay": "0.2s", "grace_period": "5s", "outbound_max_wait": "1s"}
    sidecar = await sidecars.start(config)
    signalled = time.monotonic()
    sidecar.send(signal.SIGTERM)
    assert await sidecar.wait_exit(timeout=5) == 0  # the app never left
    assert 1.0 <= time.monotonic() - signalled < 4
    assert "outbound_max_wait (1s) reached" in sidecar.log


async def _refused(address: str) -> bool:
    try:
        await unary(address, "late")
    except grpc.aio.AioRpcError as error:
        if error.code() is grpc.StatusCode.CANCELLED:
            return False  # reached the server exactly as its stop began: try again
        assert error.code() is grpc.StatusCode.UNAVAILABLE, error
        return True
    return False


async def _status_is(sidecar: Sidecar, status: int, fragment: str) -> bool:
    got, body = await sidecar.get("/ready")
    return got == status and fragment in body


async def test_second_sigterm_exits_at_once(sidecars: Sidecars, echo: EchoServer) -> None:
    config = outbound_config(static(echo))
    config["drain"] = {"drain_delay": "5s", "grace_period": "20s"}
    sidecar = await sidecars.start(config)
    call = asyncio.ensure_future(unary(sidecar.outbound, "stuck", delay_s=25))
    await wait_until(lambda: echo.servicer.active == 1, timeout=10, message="call in flight")
    started = time.monotonic()
    sidecar.send(signal.SIGTERM)
    await sidecar.wait_log("graceful drain: draining", timeout=5)
    sidecar.send(signal.SIGTERM)
    assert await sidecar.wait_exit(timeout=5) != 0
    assert time.monotonic() - started < 5
    with pytest.raises(grpc.aio.AioRpcError):
        await call


async def test_sigint_drains_like_sigterm(sidecars: Sidecars, echo: EchoServer) -> None:
    sidecar = await sidecars.start(outbound_config(static(echo)))
    assert await unary(sidecar.outbound) == "echo"
    sidecar.send(signal.SIGINT)
    assert await sidecar.wait_exit(timeout=10) == 0


# -- reload ------------------------------------------------------------------------------------


async def test_sighup_reload_moves_traffic_and_lets_old_calls_finish(
    sidecars: Sidecars, pair: tuple[EchoServer, EchoServer]
) -> None:
    a, b = pair
    sidecar = await sidecars.start(outbound_config(static(a)))
    assert await unary(sidecar.outbound) == "a"
    old_call = asyncio.ensure_future(unary(sidecar.outbound, "old", delay_s=1.5))
    await wait_until(lambda: a.servicer.active == 1, timeout=10, message="old call in flight")

    sidecar.write_config(with_defaults(outbound_config(static(b))))
    sidecar.send(signal.SIGHUP)
    await sidecar.wait_log("SIGHUP", timeout=5)
    await wait_until(lambda: _answered_by(sidecar, "b"), timeout=10, message="traffic moved to b")
    assert await old_call == "a"  # the old cluster closed only after its call finished
    clusters = await sidecar.get_json("/clusters")
    assert clusters["backend"]["target"] == static(b)
    config = await sidecar.get_json("/config")
    assert config["clusters"]["backend"]["target"] == static(b)


async def _answered_by(sidecar: Sidecar, name: str) -> bool:
    return await unary(sidecar.outbound) == name


async def test_invalid_config_on_reload_keeps_the_old_one(
    sidecars: Sidecars, echo: EchoServer
) -> None:
    config = outbound_config(static(echo))
    sidecar = await sidecars.start(config)
    broken = outbound_config("static:///127.0.0.1:1", retry={"max_attempts": 7})
    sidecar.write_config(with_defaults(broken))
    sidecar.send(signal.SIGHUP)
    await sidecar.wait_log("config reload rejected: clusters.backend.retry.max_attempts")
    assert await unary(sidecar.outbound) == "echo"
    config_view = await sidecar.get_json("/config")
    assert config_view["clusters"]["backend"]["target"] == static(echo)
    assert sidecar.process.poll() is None


async def test_listener_change_needs_a_restart(sidecars: Sidecars, echo: EchoServer) -> None:
    sidecar = await sidecars.start(outbound_config(static(echo)))
    moved = with_defaults(outbound_config(static(echo)))
    moved["outbound"]["listen"] = "127.0.0.1:1"  # not bindable anyway: proves it is not tried
    sidecar.write_config(moved)
    sidecar.send(signal.SIGHUP)
    await sidecar.wait_log("outbound.listen need a restart")
    assert await unary(sidecar.outbound) == "echo"


def publish(volume: Path, config: dict[str, Any], version: int) -> None:
    """Write ``config`` as a Kubernetes ConfigMap volume does: a new timestamped directory,
    then an atomic swap of the ``..data`` symlink (the file's own path never changes)."""
    target = volume / f"..v{version}"
    target.mkdir()
    (target / "sidecar.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    tmp = volume / "..data_tmp"
    os.symlink(target.name, tmp)
    os.replace(tmp, volume / "..data")
    link = volume / "sidecar.yaml"
    if not link.is_symlink():
        os.symlink("..data/sidecar.yaml", link)


async def test_config_file_change_on_disk_triggers_reload(
    sidecars: Sidecars, pair: tuple[EchoServer, EchoServer], tmp_path: Path
) -> None:
    a, b = pair
    volume = tmp_path / "configmap"
    volume.mkdir()
    first = with_defaults(outbound_config(static(a)))
    publish(volume, first, 1)
    sidecar = await sidecars.start(first, config_path=volume / "sidecar.yaml")
    assert await unary(sidecar.outbound) == "a"
    publish(volume, with_defaults(outbound_config(static(b))), 2)
    await wait_until(lambda: _answered_by(sidecar, "b"), timeout=10, message="reloaded from disk")
    assert "changed on disk" in sidecar.log


# -- workers -----------------------------------------------------------------------------------


def reserve(option: int) -> socket.socket:
    """A bound, non-listening socket on 127.0.0.1:0 holding a port for the sidecar (no
    probe-then-bind race; it gets no connections since it never listens)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, option, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT spreading, /proc")
async def test_workers_share_the_port_and_drain_together(
    sidecars: Sidecars, echo: EchoServer
) -> None:
    # grpc listeners (and Envoy's) bind with SO_REUSEPORT, the admin server with SO_REUSEADDR
    with reserve(socket.SO_REUSEPORT) as outbound, reserve(socket.SO_REUSEADDR) as admin:
        config = outbound_config(static(echo))
        config["outbound"]["listen"] = f"127.0.0.1:{outbound.getsockname()[1]}"
        config["admin"] = {"listen": f"127.0.0.1:{admin.getsockname()[1]}"}
        config["workers"] = 2
        if sidecars.plane == "envoy":
            await _envoy_workers_are_threads(sidecars, config)
            return
        sidecar = await sidecars.start(config)
        await sidecar.wait_log("[worker", timeout=15)
        await sidecar.wait_log("listening outbound", after=sidecar.log.index("[worker"))
        (worker,) = children(sidecar.process.pid)
        calls = 40
        for _ in range(calls):  # a new connection each: the kernel spreads them by hash
            assert await unary(sidecar.outbound) == "echo"
        clusters = await sidecar.get_json("/clusters")
        parent_picks = sum(e["picks"] for e in clusters["backend"]["endpoints"])
        assert parent_picks < calls  # the worker served the rest
        sidecar.send(signal.SIGTERM)
        assert await sidecar.wait_exit(timeout=10) == 0
        assert _gone(worker)


async def _envoy_workers_are_threads(sidecars: Sidecars, config: dict[str, Any]) -> None:
    """On the Envoy plane ``workers: N`` is Envoy's ``--concurrency N``: one process."""
    sidecar = await sidecars.start(config)
    status = (await sidecar.get_json("/config"))["data_plane_status"]
    assert status["plane"] == "envoy"
    envoy_pid = status["envoy"]["pid"]
    raw = await asyncio.to_thread(Path(f"/proc/{envoy_pid}/cmdline").read_bytes)
    argv = raw.split(b"\0")
    assert argv[argv.index(b"--concurrency") + 1] == b"2"
    for _ in range(10):
        assert await unary(sidecar.outbound) == "echo"
    sidecar.send(signal.SIGTERM)
    assert await sidecar.wait_exit(timeout=10) == 0
    assert _gone(envoy_pid)


def _gone(pid: int) -> bool:
    """The process has exited (reaped, or a zombie awaiting its parent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True
