"""The shutdown sequence, played in the kubelet's order against real processes, on each plane.

A real ``sidecar`` with inbound -> an app process (:mod:`tests.support.relay_app`) that serves
every call by calling out twice through the sidecar's outbound listener to a backend, with
work in between, and makes one more call out after its own drain (a flush); a client keeps
calling the app through the sidecar's inbound listener.

- classic pod (two plain containers): SIGTERM to the app and the sidecar at once. The app
  drains on its own schedule while its calls in flight still call out: none of its calls out
  fails, and every client call the app received completes OK (calls the sidecar no longer
  accepts are refused, UNAVAILABLE, and never reach the app). The sidecar outlives the app.
- native sidecar (an init container, ``restartPolicy: Always``): SIGTERM to the app, its exit,
  then SIGTERM to the sidecar: no call fails and the idle sidecar exits within a second.

Also the start-up half: ``/live`` answers only once both listeners accept (what a startup
probe gates the app on), and each cluster's endpoints are logged.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from tests.e2e.conftest import PLANES, Sidecar, Sidecars, skip_without_plane, with_defaults
from tests.support.dns_server import DnsServer
from tests.support.echo import EchoRequest, EchoServer, EchoStub, start_echo_server
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
SIDECAR_DRAIN_DELAY = 1.0
#: The app keeps accepting a little longer than the sidecar's inbound listener does: calls
#: reach it only through that listener (see the sidecar's shutdown doc).
APP_DRAIN_DELAY = 1.5
GRACE = 5.0
OUTBOUND_IDLE = 0.5
#: The app's work between its two calls out, per call.
WORK = 0.3
#: The work of one call in flight as the pod is deleted: it calls out for the second time well
#: after the app closed its port and the other calls ended (so well after ``OUTBOUND_IDLE`` of
#: quiet): only the sidecar counting the inbound calls in flight keeps the outbound open for it.
LONG_WORK = APP_DRAIN_DELAY + 4 * OUTBOUND_IDLE
CALLERS = 4


@pytest.fixture(params=PLANES)
def plane_sidecars(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Sidecars]:
    skip_without_plane(request.param)
    started = Sidecars(tmp_path, request.param)
    yield started
    started.kill_all()


@pytest_asyncio.fixture
async def backend() -> AsyncIterator[EchoServer]:
    server = await start_echo_server("backend")
    yield server
    await server.stop(None)


@dataclass
class App:
    """The relay app process and what it printed."""

    proc: asyncio.subprocess.Process
    port: int
    lines: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None
    exited_at: float | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stats(self) -> dict[str, Any]:
        line = next(x for x in self.lines if x.startswith("STATS "))
        return dict(json.loads(line.removeprefix("STATS ")))

    async def wait_exit(self, timeout: float) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        self.exited_at = self.exited_at or time.monotonic()
        if self.reader is not None:
            await asyncio.wait_for(self.reader, 10)
        return code


@pytest_asyncio.fixture
async def start_app() -> AsyncIterator[Any]:
    apps: list[App] = []

    async def start() -> App:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.support.relay_app",
            "--drain-delay",
            str(APP_DRAIN_DELAY),
            "--grace",
            str(GRACE),
            "--flush",
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert proc.stdout is not None
        first = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert first.startswith(b"PORT "), first
        app = App(proc, int(first.split()[1]))

        async def read() -> None:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                app.lines.append(raw.decode().strip())
            app.exited_at = time.monotonic()  # stdout closes as the process exits

        app.reader = asyncio.create_task(read())
        apps.append(app)
        return app

    yield start
    for app in apps:
        if app.proc.returncode is None:
            app.proc.kill()
            await app.proc.wait()
        if app.reader is not None:
            await asyncio.wait_for(app.reader, 10)


def sidecar_config(app: App, backend: EchoServer) -> dict[str, Any]:
    return with_defaults(
        {
            "outbound": {
                "listen": "127.0.0.1:0",
                "routes": [{"prefix": "/", "cluster": "backend"}],
            },
            "inbound": {"listen": "127.0.0.1:0", "app": app.address},
            "clusters": {"backend": {"target": f"static:///{backend.address}"}},
            "drain": {
                "drain_delay": f"{SIDECAR_DRAIN_DELAY}s",
                "grace_period": f"{GRACE}s",
                "outbound_idle": f"{OUTBOUND_IDLE}s",
            },
        }
    )


async def app_behind_sidecar(
    sidecars: Sidecars, start_app: Any, backend: EchoServer
) -> tuple[App, Sidecar]:
    app = await start_app()
    sidecar = await sidecars.start(sidecar_config(app, backend))
    assert app.proc.stdin is not None
    app.proc.stdin.write(f"OUTBOUND {sidecar.outbound}\n".encode())
    await app.proc.stdin.drain()
    await wait_until(lambda: "RELAYING" in app.lines, timeout=10, message="app relaying")
    # start-up logs name the endpoints each cluster resolved to
    await sidecar.wait_log(f"cluster backend: resolved {backend.address}")
    return app, sidecar


class Client:
    """``CALLERS`` callers through the sidecar's inbound listener, back to back, each until
    its first failure or until ``stop()``; every call's message and final status kept."""

    def __init__(self, address: str) -> None:
        self.channels = [grpc.aio.insecure_channel(address) for _ in range(CALLERS)]
        self.results: dict[str, grpc.StatusCode] = {}
        self.calling = True
        self.tasks = [
            asyncio.ensure_future(self._caller(i, channel))
            for i, channel in enumerate(self.channels)
        ]

    async def _caller(self, index: int, channel: grpc.aio.Channel) -> None:
        stub = EchoStub(channel)
        n = 0
        while self.calling:
            message = f"c{index}-{n}"
            n += 1
            try:
                reply = await stub.Unary(EchoRequest(message=message, delay_s=WORK), timeout=20)
            except grpc.aio.AioRpcError as error:
                self.results[message] = error.code()
                return
            assert reply.server == "backend", reply
            self.results[message] = grpc.StatusCode.OK

    def ok(self) -> int:
        return sum(code is grpc.StatusCode.OK for code in self.results.values())

    async def stop(self, timeout: float) -> None:
        self.calling = False
        await asyncio.wait_for(asyncio.gather(*self.tasks), timeout)
        for channel in self.channels:
            await channel.close()


ROUNDS = range(3)


@pytest.mark.parametrize("round_", ROUNDS)
async def test_classic_pod_both_signalled_at_once_loses_no_call(
    plane_sidecars: Sidecars, start_app: Any, backend: EchoServer, round_: int
) -> None:
    app, sidecar = await app_behind_sidecar(plane_sidecars, start_app, backend)
    client = Client(sidecar.inbound)
    await wait_until(lambda: client.ok() >= 2 * CALLERS, timeout=10, message="calls flowing")
    ok_before = client.ok()
    long_call = asyncio.ensure_future(
        EchoStub(client.channels[0]).Unary(
            EchoRequest(message="long", delay_s=LONG_WORK), timeout=LONG_WORK + 10
        )
    )
    await wait_until(lambda: "RECEIVED long" in app.lines, timeout=10, message="long call in")

    app.proc.send_signal(signal.SIGTERM)
    sidecar.send(signal.SIGTERM)

    assert await app.wait_exit(APP_DRAIN_DELAY + GRACE + 5) == 0, app.lines
    assert await sidecar.wait_exit(timeout=GRACE + 5) == 0, sidecar.log
    sidecar_exited = time.monotonic()
    await client.stop(timeout=5)
    assert (await long_call).server == "backend"

    stats = app.stats()
    assert stats["out_failed"] == [], stats  # not one call out failed, the flush included
    assert "EVENT flushed" in app.lines
    received = set(stats["received"])
    for message, code in client.results.items():
        if message in received:
            assert code is grpc.StatusCode.OK, (message, code, sidecar.log)
        else:  # refused by the sidecar's stopped inbound listener, never forwarded
            assert code is grpc.StatusCode.UNAVAILABLE, (message, code)
    assert client.ok() > ok_before  # calls in flight during the drain completed
    # The outbound listener closed only once the app was gone.
    assert app.exited_at is not None and app.exited_at <= sidecar_exited
    log = sidecar.log
    assert "the local app is gone" in log, log
    assert log.index("drain: inbound stops accepting") < log.index("drain: outbound stops")


@pytest.mark.parametrize("round_", ROUNDS)
async def test_native_sidecar_signalled_after_the_app_exits_promptly(
    plane_sidecars: Sidecars, start_app: Any, backend: EchoServer, round_: int
) -> None:
    app, sidecar = await app_behind_sidecar(plane_sidecars, start_app, backend)
    client = Client(sidecar.inbound)
    await wait_until(lambda: client.ok() >= 2 * CALLERS, timeout=10, message="calls flowing")

    # Pod deletion: the endpoints drop the pod (the client starts no new call) and the
    # kubelet signals the app; the sidecar only once the app has exited.
    client.calling = False
    app.proc.send_signal(signal.SIGTERM)
    assert await app.wait_exit(APP_DRAIN_DELAY + GRACE + 5) == 0, app.lines
    await client.stop(timeout=5)

    signalled = time.monotonic()
    sidecar.send(signal.SIGTERM)
    assert await sidecar.wait_exit(timeout=5) == 0, sidecar.log
    assert time.monotonic() - signalled < 1.0, sidecar.log

    stats = app.stats()
    assert stats["out_failed"] == [], stats
    assert "EVENT flushed" in app.lines
    failed = {m: c for m, c in client.results.items() if c is not grpc.StatusCode.OK}
    assert failed == {}, failed
    assert set(client.results) <= set(stats["received"])


# -- start-up ----------------------------------------------------------------------------------


def reserve(option: int) -> socket.socket:
    """A bound, non-listening socket on 127.0.0.1:0 holding a port for the sidecar (no
    probe-then-bind race; it gets no connections since it never listens)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, option, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def live_status(port: int) -> int | None:
    """``/live``'s status; ``None`` while the admin port refuses connections."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/live", timeout=2) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return None


def accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT port holding")
async def test_live_answers_only_once_both_listeners_accept(
    plane_sidecars: Sidecars, backend: EchoServer, tmp_path: Path
) -> None:
    with (
        reserve(socket.SO_REUSEPORT) as outbound,
        reserve(socket.SO_REUSEPORT) as inbound,
        reserve(socket.SO_REUSEADDR) as admin,
    ):
        ports = {
            name: sock.getsockname()[1]
            for name, sock in (("outbound", outbound), ("inbound", inbound), ("admin", admin))
        }
        config = with_defaults(
            {
                "data_plane": plane_sidecars.plane,
                "admin": {"listen": f"127.0.0.1:{ports['admin']}"},
                "outbound": {
                    "listen": f"127.0.0.1:{ports['outbound']}",
                    "routes": [{"prefix": "/", "cluster": "backend"}],
                },
                "inbound": {"listen": f"127.0.0.1:{ports['inbound']}", "app": backend.address},
                "clusters": {"backend": {"target": f"static:///{backend.address}"}},
            }
        )
        sidecar = Sidecar(config, tmp_path, "startup")
        plane_sidecars.started.append(sidecar)
        deadline = time.monotonic() + 30
        polls: collections.Counter[int | None] = collections.Counter()
        while True:
            status = await asyncio.to_thread(live_status, ports["admin"])
            polls[status] += 1
            if status == 200:
                break
            assert sidecar.process.poll() is None, sidecar.log
            assert time.monotonic() < deadline, (polls, sidecar.log)
            await asyncio.sleep(0.01)
        # the first 200: both listeners take connections already
        assert await asyncio.to_thread(accepts, ports["outbound"])
        assert await asyncio.to_thread(accepts, ports["inbound"])
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['outbound']}") as channel:
            reply = await EchoStub(channel).Unary(EchoRequest(message="first"), timeout=10)
        assert reply.server == "backend"


async def test_outbound_serves_on_past_the_inbound_drain(
    plane_sidecars: Sidecars, backend: EchoServer
) -> None:
    """The inbound listener's drain (Envoy: its drain sequence and ``--drain-time-s``, the
    grace) touches neither the outbound listener nor its connections."""
    grace, max_wait = 1.0, 3.0
    config = with_defaults(
        {
            "outbound": {
                "listen": "127.0.0.1:0",
                "routes": [{"prefix": "/", "cluster": "backend"}],
            },
            "inbound": {"listen": "127.0.0.1:0", "app": backend.address},  # never leaves
            "clusters": {"backend": {"target": f"static:///{backend.address}"}},
            "drain": {
                "drain_delay": "0.2s",
                "grace_period": f"{grace}s",
                "outbound_max_wait": f"{max_wait}s",
            },
        }
    )
    sidecar = await plane_sidecars.start(config)
    async with grpc.aio.insecure_channel(sidecar.outbound) as channel:
        stub = EchoStub(channel)
        assert (await stub.Unary(EchoRequest(message="before"), timeout=5)).server == "backend"
        signalled = time.monotonic()
        sidecar.send(signal.SIGTERM)
        await sidecar.wait_log("drain: inbound stops accepting", timeout=5)
        calls = 0
        while time.monotonic() - signalled < max_wait - 0.5:  # well past the inbound's grace
            reply = await stub.Unary(EchoRequest(message="during"), timeout=5)
            assert reply.server == "backend"
            calls += 1
    assert calls > 10
    assert await sidecar.wait_exit(timeout=grace + 5) == 0
    assert f"outbound_max_wait ({max_wait:g}s) reached" in sidecar.log


async def test_each_cluster_logs_its_endpoints_when_resolved_and_on_change(
    plane_sidecars: Sidecars, backend: EchoServer
) -> None:
    async with DnsServer() as dns:
        dns.set_a("svc.test", ["127.0.0.1"], ttl=1)
        port = backend.port
        config = with_defaults(
            {
                "outbound": {
                    "listen": "127.0.0.1:0",
                    "routes": [{"prefix": "/", "cluster": "backend"}],
                },
                "clusters": {"backend": {"target": dns.target("svc.test", port)}},
            }
        )
        sidecar = await plane_sidecars.start(config)
        await sidecar.wait_log(f"cluster backend: resolved 127.0.0.1:{port}\n")
        dns.set_a("svc.test", ["127.0.0.1", "127.0.0.2"], ttl=1)
        await sidecar.wait_log(f"cluster backend: resolved 127.0.0.1:{port}, 127.0.0.2:{port}\n")
        lines = [line for line in sidecar.log.splitlines() if "cluster backend: resolved" in line]
        assert len(lines) == 2, lines  # one line when first resolved, one on the change
