"""The admin HTTP server on loopback, read with urllib and raw sockets; cluster state from a real
balanced channel to real echo servers."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

import balancers.aio
from sidecar.admin import ENDPOINTS, AdminBindError, AdminServer
from telemetry.clusters import ClusterCollector, clusters_snapshot
from telemetry.metrics import GrpcMetrics
from tests.support.echo import EchoRequest, EchoServer, EchoStub, start_echo_server
from tests.support.waiting import wait_until


@dataclass
class State:
    """What the callables read: plain attributes swapped whole, as the app would."""

    live: bool = True
    ready: tuple[bool, str] = (True, "")
    clusters: dict[str, Any] = field(default_factory=lambda: {"echo": {"endpoints": []}})
    config: dict[str, Any] = field(default_factory=lambda: {"admin": {"listen": "127.0.0.1:0"}})
    fail: bool = False

    def read_config(self) -> dict[str, Any]:
        if self.fail:
            raise RuntimeError("config unavailable")
        return self.config


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def fetch(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> Response:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return Response(reply.status, dict(reply.headers), reply.read())
    except urllib.error.HTTPError as error:
        with error:
            return Response(error.code, dict(error.headers), error.read())


@dataclass
class Admin:
    server: AdminServer
    port: int
    state: State
    registry: CollectorRegistry

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def get(self, path: str, **kwargs: Any) -> Response:
        return await asyncio.to_thread(fetch, self.url(path), **kwargs)


def make_admin(
    state: State, registry: CollectorRegistry, listen: str = "127.0.0.1:0", **kwargs: Any
) -> AdminServer:
    return AdminServer(
        listen,
        live=lambda: state.live,
        ready=lambda: state.ready,
        clusters=lambda: state.clusters,
        config=state.read_config,
        registry=registry,
        **kwargs,
    )


@pytest.fixture
async def admin() -> AsyncIterator[Admin]:
    state = State()
    registry = CollectorRegistry()
    Counter("meshkit_test_things", "Things counted by the test.", registry=registry).inc(3)
    server = make_admin(state, registry, timeout=1.0, max_connections=4)
    port = await server.start()
    yield Admin(server, port, state, registry)
    await server.stop()


async def test_live_and_ready(admin: Admin) -> None:
    live = await admin.get("/live")
    assert (live.status, live.body) == (200, b"ok\n")
    assert live.headers["Content-Type"].startswith("text/plain")
    ready = await admin.get("/ready")
    assert (ready.status, ready.body) == (200, b"ready\n")

    admin.state.ready = (False, "draining: SIGTERM received")
    admin.state.live = False
    ready = await admin.get("/ready")
    assert (ready.status, ready.body) == (503, b"draining: SIGTERM received\n")
    assert (await admin.get("/live")).status == 503


async def test_probe_that_raises_fails_closed(admin: Admin) -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("no state")

    admin.server.ready = broken
    reply = await admin.get("/ready")
    assert reply.status == 503
    assert b"RuntimeError" in reply.body


async def test_metrics_text_format(admin: Admin) -> None:
    reply = await admin.get("/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(reply.body.decode())}
    assert families["meshkit_test_things"].type == "counter"
    assert families["meshkit_test_things"].samples[0].value == 3


async def test_metrics_openmetrics_negotiation(admin: Admin) -> None:
    reply = await admin.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/openmetrics-text")
    assert reply.body.endswith(b"# EOF\n")


async def test_metrics_gzip_when_accepted(admin: Admin) -> None:
    import gzip

    GrpcMetrics(admin.registry, "server").start("/a.B/C")  # make the page big enough to compress
    reply = await admin.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert reply.headers.get("Content-Encoding") == "gzip"
    assert b"grpc_server_started_total" in gzip.decompress(reply.body)


async def test_clusters_and_config_json(admin: Admin) -> None:
    clusters = await admin.get("/clusters")
    assert clusters.status == 200
    assert clusters.headers["Content-Type"] == "application/json"
    assert json.loads(clusters.body) == {"echo": {"endpoints": []}}
    config = await admin.get("/config")
    assert json.loads(config.body) == {"admin": {"listen": "127.0.0.1:0"}}


async def test_index_404_405_head(admin: Admin) -> None:
    index = await admin.get("/")
    assert index.status == 200
    for path in ENDPOINTS:
        assert path.encode() in index.body
    assert (await admin.get("/nope")).status == 404
    assert (await admin.get("/metrics/")).status == 404
    assert (await admin.get("/live?verbose=1")).status == 200  # query strings are ignored
    post = await admin.get("/live", method="POST")
    assert post.status == 405
    assert post.headers["Allow"] == "GET, HEAD"
    head = await admin.get("/ready", method="HEAD")
    assert head.status == 200
    assert head.body == b""
    assert head.headers["Content-Length"] == str(len(b"ready\n"))


async def test_failing_callable_is_a_500_and_the_server_lives(admin: Admin) -> None:
    admin.state.fail = True
    reply = await admin.get("/config")
    assert reply.status == 500
    assert reply.body == b"error: RuntimeError\n"  # no traceback, no message leak
    admin.state.fail = False
    assert (await admin.get("/config")).status == 200


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        if data:
            sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 garbage\r\n\r\n", b" 400 "),
        (b"GET\r\n\r\n", b" 400 "),
        (b"GET /live HTTP/9.9\r\n\r\n", b" 505 "),
        (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", b" 414 "),
        (b"GET /live HTTP/1.1\r\n" + b"X-Big: " + b"b" * 70000 + b"\r\n\r\n", b" 431 "),
        (b"GET /live HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)), b" 431 "),
    ],
    ids=["tls-hello", "no-path", "bad-version", "long-line", "huge-header", "many-headers"],
)
async def test_malformed_requests_get_an_error_and_the_server_lives(
    admin: Admin, request_bytes: bytes, status: bytes
) -> None:
    reply = await asyncio.to_thread(raw_exchange, admin.port, request_bytes)
    assert status in reply.split(b"\r\n", 1)[0]
    assert (await admin.get("/live")).status == 200


async def test_silent_client_is_dropped_by_timeout(admin: Admin) -> None:
    started = time.monotonic()
    partial = b"GET /live HTTP/1.1\r\nHost: x\r\n"  # never finishes its headers
    reply = await asyncio.to_thread(raw_exchange, admin.port, partial, 10.0)
    # answered 408 and closed by the server's 1 s whole-request deadline, not the client's 10 s
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert time.monotonic() - started < 5.0
    assert (await admin.get("/live")).status == 200


async def test_connections_beyond_the_limit_evict_the_longest_waiting(admin: Admin) -> None:
    idle = [socket.create_connection(("127.0.0.1", admin.port), timeout=5) for _ in range(4)]
    try:
        # The fifth comes when four idle ones hold every slot: the one that has waited longest
        # for its request is dropped and the probe is served, never queued behind them.
        request = b"GET /live HTTP/1.1\r\nConnection: close\r\n\r\n"
        reply = await asyncio.to_thread(raw_exchange, admin.port, request)
        assert reply.startswith(b"HTTP/1.1 200 "), reply
        assert idle[0].recv(1) == b""
    finally:
        for sock in idle:
            sock.close()

    async def served() -> bool:
        return (await admin.get("/live")).status == 200

    await wait_until(served, timeout=10, message="admin serving again once slots free up")


async def test_stop_releases_the_port_and_restart_binds_it() -> None:
    state, registry = State(), CollectorRegistry()
    first = make_admin(state, registry)
    port = await first.start()
    assert (await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/live")).status == 200
    await first.stop()
    await first.stop()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    second = make_admin(state, registry, listen=f"127.0.0.1:{port}")
    assert await second.start() == port
    await second.stop()


async def test_bind_error_names_the_address(admin: Admin) -> None:
    clash = make_admin(admin.state, admin.registry, listen=f"127.0.0.1:{admin.port}")
    with pytest.raises(AdminBindError, match=rf"127\.0\.0\.1:{admin.port}"):
        await clash.start()


def test_bad_listen_address_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="admin listen address"):
        make_admin(State(), CollectorRegistry(), listen="localhost")


async def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this environment")
    server = make_admin(State(), CollectorRegistry(), listen="[::1]:0")
    try:
        port = await server.start()
    except AdminBindError as exc:
        pytest.skip(f"cannot bind ::1 here: {exc}")
    try:
        assert (await asyncio.to_thread(fetch, f"http://[::1]:{port}/live")).status == 200
    finally:
        await server.stop()


# -- clusters: a real balanced channel to real echo servers -----------------------------------


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[Any, list[EchoServer], str]]:
    servers = [await start_echo_server("a"), await start_echo_server("b")]
    dead = await start_echo_server("dead")
    dead_address = dead.address
    await dead.stop(None)  # its port now refuses connections
    target = f"static:///{servers[0].address},{servers[1].address},{dead_address}"
    channel = balancers.aio.insecure_channel(target)
    yield channel, servers, dead_address
    await channel.close()
    for server in servers:
        await server.stop(None)


def endpoint_states(channel: Any) -> dict[str, str]:
    return {str(sc.address): sc.state.connectivity.name for sc in channel.core.subchannels}


async def test_cluster_collector_and_clusters_page_against_a_real_channel(
    cluster: tuple[Any, list[EchoServer], str],
) -> None:
    channel, servers, dead_address = cluster
    registry = CollectorRegistry()
    ClusterCollector(lambda: {"echo": channel}, registry=registry)
    server = AdminServer(
        "127.0.0.1:0",
        live=lambda: True,
        ready=lambda: (True, ""),
        clusters=lambda: clusters_snapshot({"echo": channel}),
        config=dict,
        registry=registry,
    )
    port = await server.start()
    try:
        await wait_until(
            lambda: (
                endpoint_states(channel)
                == {
                    servers[0].address: "READY",
                    servers[1].address: "READY",
                    dead_address: "TRANSIENT_FAILURE",
                }
            ),
            timeout=15,
            message="two endpoints READY and the dead one TRANSIENT_FAILURE",
        )
        stub = EchoStub(channel)
        for _ in range(20):
            await stub.Unary(EchoRequest(message="x"), timeout=5)

        reply = await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/metrics")
        families = {f.name: f for f in text_string_to_metric_families(reply.body.decode())}
        picks = {
            s.labels["endpoint"]: s.value
            for s in families["meshkit_cluster_endpoint_picks"].samples
            if s.name.endswith("_total")
        }
        assert picks == {
            servers[0].address: servers[0].servicer.calls["Unary"],
            servers[1].address: servers[1].servicer.calls["Unary"],
            dead_address: 0,
        }
        assert sum(picks.values()) == 20
        by_state = {
            s.labels["state"]: s.value for s in families["meshkit_cluster_endpoints"].samples
        }
        assert by_state == {"IDLE": 0, "CONNECTING": 0, "READY": 2, "TRANSIENT_FAILURE": 1}
        healthy = families["meshkit_cluster_endpoints_healthy"].samples[0].value
        assert healthy == 2
        connectivity = {
            s.labels["state"]: s.value for s in families["meshkit_cluster_connectivity"].samples
        }
        assert connectivity["READY"] == 1

        page = json.loads(
            (await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/clusters")).body
        )
        echo = page["echo"]
        assert echo["state"] == "READY"
        assert echo["lb_policy"] == "round_robin"
        assert echo["target"].startswith("static:///")
        dead = next(e for e in echo["endpoints"] if e["address"] == dead_address)
        assert dead["state"] == "TRANSIENT_FAILURE"
        assert dead["reason"]
        assert dead["picks"] == 0
        assert {e["address"]: e["picks"] for e in echo["endpoints"]} == picks
    finally:
        await server.stop()


# -- promtool -----------------------------------------------------------------------------------


async def test_promtool_accepts_the_exposition(cluster: tuple[Any, list[EchoServer], str]) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus' provides it)")
    channel, _servers, _dead = cluster
    registry = CollectorRegistry()
    ClusterCollector(lambda: {"echo": channel}, registry=registry)
    metrics = GrpcMetrics(registry, "server")
    metrics.done("/a.B/C", "unary", grpc.StatusCode.OK, metrics.start("/a.B/C"))
    server = make_admin(State(), registry)
    port = await server.start()
    try:
        await wait_until(lambda: channel.core.connectivity is grpc.ChannelConnectivity.READY)
        body = (await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/metrics")).body
    finally:
        await server.stop()
    run: Callable[..., subprocess.CompletedProcess[bytes]] = subprocess.run
    result = await asyncio.to_thread(
        run, [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


# -- debug pages: loopback peers only unless expose_debug ----------------------------------------


async def _answer_from(server: AdminServer, peer: tuple[str, int], path: str) -> bytes:
    # Reaches inside on purpose: every address this test may connect from is loopback, so the
    # non-loopback peer is handed to the server's request path directly (the real parser, the
    # real routing, the real page threads), on the admin loop where it runs in production.
    assert server._loop is not None
    head = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    future = asyncio.run_coroutine_threadsafe(server._answer(head, peer), server._loop)
    answer, _ = await asyncio.wrap_future(future)
    return answer


@pytest.mark.parametrize("peer", ["10.1.2.3", "192.168.0.7", "::ffff:10.0.0.1", "fd00::1", "", "x"])
async def test_debug_pages_refuse_other_peers(admin: Admin, peer: str) -> None:
    for path in ("/config", "/clusters", "/clusters?x=1"):
        answer = await _answer_from(admin.server, (peer, 40000), path)
        assert answer.startswith(b"HTTP/1.1 403 "), answer
        assert b"admin.expose_debug" in answer and b"echo" not in answer
    for path in ("/live", "/ready", "/metrics"):
        answer = await _answer_from(admin.server, (peer, 40000), path)
        assert answer.startswith(b"HTTP/1.1 200 "), (path, answer)


@pytest.mark.parametrize("peer", ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"])
async def test_debug_pages_answer_loopback_peers(admin: Admin, peer: str) -> None:
    answer = await _answer_from(admin.server, (peer, 40000), "/clusters")
    assert answer.startswith(b"HTTP/1.1 200 ") and b'"echo"' in answer, answer


async def test_expose_debug_opens_debug_pages_to_any_peer() -> None:
    state = State()
    server = make_admin(state, CollectorRegistry(), expose_debug=True)
    await server.start()
    try:
        answer = await _answer_from(server, ("10.1.2.3", 40000), "/config")
        assert answer.startswith(b"HTTP/1.1 200 ") and b"127.0.0.1:0" in answer, answer
    finally:
        await server.stop()
