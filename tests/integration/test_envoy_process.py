"""A real Envoy run by :class:`EnvoyProcess` in front of a real grpc.aio echo server: its
metrics read back in meshkit's terms, a kill -9 and the restart, drain and stop, start-up
failures; the ADS stream of meshkit's bootstrap against a minimal xDS server that restarts;
the admin client against a silent and an oversized admin."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from sidecar.envoy.admin_client import AdminError, EnvoyAdmin
from sidecar.envoy.binary import find_envoy
from sidecar.envoy.bootstrap import STATS_FLUSH_INTERVAL, bootstrap, socket_address, stats_config
from sidecar.envoy.metrics import EnvoyCollector, read_clusters_view
from sidecar.envoy.process import EnvoyProcess, EnvoyStartError
from tests.support.echo import EchoRequest, EchoServer, EchoStub, start_echo_server
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
FOUND = find_envoy()
pytestmark = pytest.mark.skipif(FOUND.binary is None, reason=FOUND.reason)
BINARY = FOUND.binary.path if FOUND.binary is not None else ""
SERVICE = "meshkit.test.Echo"
CLUSTERS = {
    "echo": SimpleNamespace(target="static:///echo", lb_policy="round_robin", health_check=None)
}
_TYPE = "type.googleapis.com/"


def static_bootstrap(backend_port: int) -> dict[str, Any]:
    """One listener on 127.0.0.1:0 with the grpc_stats filter, routing to cluster ``echo``."""
    hcm = {
        "@type": _TYPE + "envoy.extensions.filters.network.http_connection_manager.v3"
        ".HttpConnectionManager",
        "stat_prefix": "outbound",
        "route_config": {
            "name": "local",
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "echo"}}],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.grpc_stats",
                "typed_config": {
                    "@type": _TYPE + "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
                    "stats_for_all_methods": True,
                    "enable_upstream_stats": True,
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _TYPE + "envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }
    cluster = {
        "name": "echo",
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _TYPE + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": "echo",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": socket_address("127.0.0.1", backend_port)}}
                    ]
                }
            ],
        },
    }
    listener = {
        "name": "outbound",
        "address": socket_address("127.0.0.1", 0),
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }
    dynamic = bootstrap(node_id="t", node_cluster="t", xds_address="unix:/nowhere")
    return {
        "admin": {"address": socket_address("127.0.0.1", 0)},
        "static_resources": {"listeners": [listener], "clusters": [cluster]},
        "stats_config": stats_config(),
        "stats_flush_interval": STATS_FLUSH_INTERVAL,
        "overload_manager": dynamic["overload_manager"],
    }


async def listener_port(process: EnvoyProcess) -> int:
    bound = await process.listener_addresses()
    assert list(bound) == ["outbound"], bound
    host, _, port = bound["outbound"].rpartition(":")
    assert host == "127.0.0.1"
    return int(port)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class Setup:
    process: EnvoyProcess
    echo: EchoServer
    registry: CollectorRegistry
    restarted: list[float] = field(default_factory=list)

    async def stub(self) -> tuple[grpc.aio.Channel, EchoStub]:
        port = await listener_port(self.process)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        return channel, EchoStub(channel)

    async def sample(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        # a scrape runs on the admin server's thread in the sidecar: do the same here
        return await asyncio.to_thread(self.registry.get_sample_value, name, labels or {})


@pytest.fixture
async def envoy() -> AsyncIterator[Setup]:
    echo = await start_echo_server("a")
    registry = CollectorRegistry()
    restarted: list[float] = []
    process = EnvoyProcess(
        BINARY,
        static_bootstrap(echo.port),
        registry=registry,
        on_restart=lambda: restarted.append(time.monotonic()),
        drain_time=1,
        concurrency=1,
    )
    # the admin address, read at each scrape: it changes when Envoy restarts
    EnvoyCollector(lambda: process.admin_address, registry=registry)
    await process.start()
    try:
        yield Setup(process, echo, registry, restarted)
    finally:
        await process.stop()
        await echo.stop(None)


def handled(code: str) -> dict[str, str]:
    labels = {"grpc_type": "unknown", "grpc_service": SERVICE, "grpc_method": "Unary"}
    return {**labels, "grpc_code": code}


async def make_calls(stub: EchoStub) -> None:
    for _ in range(3):
        await stub.Unary(EchoRequest(message="ok"), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.Unary(EchoRequest(message="missing", fail_code=5), timeout=10)
    assert failure.value.code() is grpc.StatusCode.NOT_FOUND


# -- metrics and clusters -------------------------------------------------------------------


async def test_calls_through_envoy_show_as_meshkit_metrics(envoy: Setup) -> None:
    channel, stub = await envoy.stub()
    async with channel:
        await make_calls(stub)

    async def counted() -> bool:
        seconds = {"grpc_type": "unknown", "grpc_service": SERVICE, "grpc_method": "Unary"}
        return (
            await envoy.sample("grpc_server_handled_total", handled("OK")) == 3
            and await envoy.sample("grpc_server_handled_total", handled("NotFound")) == 1
            # the latency histogram reaches /stats at Envoy's next stats flush
            and await envoy.sample("grpc_server_handling_seconds_count", seconds) == 4
        )

    await wait_until(counted, timeout=15, message="Envoy's grpc_stats in grpc_server_*")
    assert await envoy.sample("meshkit_envoy_up") == 1
    echo = {"envoy_cluster_name": "echo"}
    assert await envoy.sample("envoy_cluster_upstream_rq_total", echo) == 4
    address = envoy.process.admin_address
    assert address is not None
    view = await asyncio.to_thread(read_clusters_view, address, clusters=CLUSTERS)
    assert (view["echo"]["target"], view["echo"]["state"]) == ("static:///echo", "READY")
    (endpoint,) = view["echo"]["endpoints"]
    assert endpoint["address"] == envoy.echo.address
    assert (endpoint["state"], endpoint["picks"]) == ("READY", 4)

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus' provides it)")
    body = await asyncio.to_thread(generate_latest, envoy.registry)
    result = await asyncio.to_thread(
        subprocess.run, [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    # 0: clean; 3: lint findings only. Envoy's own names break some naming conventions
    # (``_ms`` units, no HELP); meshkit's families must have none.
    assert result.returncode in (0, 3), result.stderr.decode()
    findings = (result.stdout + result.stderr).decode().splitlines()
    assert [line for line in findings if not line.startswith("envoy_")] == []


async def test_killed_envoy_is_restarted_and_counted(envoy: Setup) -> None:
    first = envoy.process.pid
    assert first is not None and envoy.process.admin is not None
    first_admin = envoy.process.admin
    os.kill(first, signal.SIGKILL)
    await wait_until(lambda: bool(envoy.restarted), timeout=20, message="envoy restarted")
    assert envoy.process.restarts == 1
    assert await envoy.sample("meshkit_envoy_restarts_total") == 1
    assert envoy.process.pid not in (None, first)
    assert not pid_alive(first)
    assert envoy.process.admin is not None and envoy.process.admin is not first_admin

    channel, stub = await envoy.stub()
    async with channel:
        await make_calls(stub)
    # counters of the new Envoy start from zero: only these calls

    async def counted() -> bool:
        return await envoy.sample("grpc_server_handled_total", handled("OK")) is not None

    await wait_until(counted, timeout=15, message="calls counted by the new Envoy")
    assert await envoy.sample("grpc_server_handled_total", handled("OK")) == 3


async def test_drain_then_stop_finishes_calls_and_leaves_nothing(envoy: Setup) -> None:
    process = envoy.process
    port = await listener_port(process)
    admin_address = process.admin_address
    assert admin_address is not None
    pid = process.pid
    assert pid is not None
    channel, stub = await envoy.stub()
    async with channel:
        in_flight = asyncio.ensure_future(
            stub.Unary(EchoRequest(message="in flight", delay_s=2.0), timeout=20)
        )
        await wait_until(lambda: envoy.echo.servicer.active == 1, message="call at the app")
        assert await process.active_requests() == 1
        await process.drain()

        async def refused() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except ConnectionRefusedError:
                return True
            writer.close()
            return False

        # drain_time is 1 s: then the listener closes
        await wait_until(refused, timeout=10, message="listener closed after the drain time")
        assert not in_flight.done()
        started = time.monotonic()
        await process.stop(grace=10)
        assert (await in_flight).message == "in flight"
    # stop() waited for the call, not for the whole grace
    assert time.monotonic() - started < 8
    assert not pid_alive(pid) and process.pid is None
    assert process.admin_address is None
    assert envoy.registry.get_sample_value("meshkit_envoy_up") == 0
    view = await asyncio.to_thread(read_clusters_view, admin_address, clusters=CLUSTERS)
    assert "envoy" in view["echo"]["error"]


async def test_cancelled_stop_leaves_no_process(envoy: Setup) -> None:
    pid = envoy.process.pid
    assert pid is not None
    channel, stub = await envoy.stub()
    async with channel:
        call = stub.Unary(EchoRequest(message="long", delay_s=10), timeout=20)
        await wait_until(lambda: envoy.echo.servicer.active == 1, message="call at the app")
        stopping = asyncio.ensure_future(envoy.process.stop(grace=30))
        done, _ = await asyncio.wait({stopping}, timeout=0.5)
        assert not done  # stop() waits for the call in flight...
        stopping.cancel()  # ...until its owner gives up
        with pytest.raises(asyncio.CancelledError):
            await stopping
        await wait_until(lambda: not pid_alive(pid), timeout=10, message="envoy gone")
        with pytest.raises(grpc.aio.AioRpcError):
            await call


def config_of(pid: int) -> Path:
    """The ``-c`` file of the Envoy with ``pid``."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return Path(argv[argv.index(b"-c") + 1].decode())


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def names(directory: Path) -> list[str] | None:
    """The names in ``directory``; ``None`` if it does not exist."""
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else None


async def test_private_files(envoy: Setup, tmp_path: Path) -> None:
    pid = envoy.process.pid
    assert pid is not None
    config = config_of(pid)
    assert (mode(config), mode(config.parent)) == (0o600, 0o700)
    await envoy.process.stop()
    assert names(config.parent) is None

    # a directory of the owner's: used, kept, the files in it removed
    process = EnvoyProcess(BINARY, static_bootstrap(envoy.echo.port), directory=str(tmp_path))
    await process.start(timeout=30)
    try:
        assert names(tmp_path) == ["admin-address", "bootstrap.json"]
        assert config_of(process.pid or 0) == tmp_path / "bootstrap.json"
    finally:
        await process.stop()
    assert names(tmp_path) == []


# -- start-up failures -----------------------------------------------------------------------


async def test_bad_bootstrap_fails_with_envoys_reason() -> None:
    process = EnvoyProcess(BINARY, {"static_resources": {"clusters": [{"name": "x", "bogus": 1}]}})
    with pytest.raises(EnvoyStartError) as failure:
        await process.start()
    message = str(failure.value)
    assert "exited with status 1 during start-up" in message
    # (protobuf varies the spaces in its error text on purpose)
    assert re.search(r"no\s+such\s+field:\s+'bogus'", message), message
    assert process.pid is None


async def test_missing_binary(tmp_path: Path) -> None:
    process = EnvoyProcess(str(tmp_path / "envoy"), {})
    with pytest.raises(EnvoyStartError, match="not an executable"):
        await process.start()


def ads_bootstrap(socket: Path) -> dict[str, Any]:
    return bootstrap(node_id="sidecar-test", node_cluster="echo", xds_address=f"unix:{socket}")


async def test_not_ready_in_time(tmp_path: Path) -> None:
    # ADS to a socket nobody serves: Envoy stays INITIALIZING, waiting for its first config
    process = EnvoyProcess(BINARY, ads_bootstrap(tmp_path / "xds.sock"), start_timeout=1.5)
    with pytest.raises(EnvoyStartError, match=r"not ready within 1\.5 s \((PRE_)?INITIALIZING\)"):
        await process.start()
    assert process.pid is None


async def test_cancelled_start_leaves_no_process(tmp_path: Path) -> None:
    process = EnvoyProcess(BINARY, ads_bootstrap(tmp_path / "xds.sock"), start_timeout=60)
    starting = asyncio.ensure_future(process.start())
    await wait_until(lambda: process.pid is not None, message="envoy spawned")
    pid = process.pid
    assert pid is not None

    def envoy_runs() -> bool:  # the launcher has become Envoy (same pid)
        try:
            return os.path.samefile(f"/proc/{pid}/exe", BINARY)
        except OSError:
            return False

    await wait_until(envoy_runs, message="envoy exec'd")
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    await wait_until(lambda: not pid_alive(pid), timeout=10, message="envoy gone")


_OWNER = """
import asyncio, json, sys
from sidecar.envoy.process import EnvoyProcess

async def main():
    process = EnvoyProcess(sys.argv[1], json.loads(sys.argv[2]))
    await process.start()
    print(process.pid, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_envoy_dies_with_a_killed_owner(tmp_path: Path) -> None:
    owner = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _OWNER,
        BINARY,
        json.dumps(static_bootstrap(1)),
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
        # a killed owner cannot remove its private directory: keep it in the test's
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    try:
        assert owner.stdout is not None
        pid = int(await asyncio.wait_for(owner.stdout.readline(), 30))
        assert pid_alive(pid)
    finally:
        owner.kill()
        await owner.wait()
    await wait_until(lambda: not pid_alive(pid), timeout=10, message="envoy died with its owner")


# -- the ADS stream ---------------------------------------------------------------------------

_ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _string_field(number: int, text: str) -> bytes:
    data = text.encode()
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _type_url(request: bytes) -> str:
    """Field 4 (``type_url``) of a ``DiscoveryRequest``, read from the wire format."""
    i = 0
    while i < len(request):
        key, shift = 0, 0
        while True:
            byte = request[i]
            i += 1
            key |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        number, wire = key >> 3, key & 7
        if wire == 0:
            while request[i] >= 0x80:
                i += 1
            i += 1
            continue
        assert wire == 2, f"unexpected wire type {wire}"
        length, shift = 0, 0
        while True:
            byte = request[i]
            i += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        if number == 4:
            return request[i : i + length].decode()
        i += length
    return ""


class MiniAds(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Enough of an ADS server for Envoy to become LIVE: an empty answer to the first request
    of each type. Records when each stream starts, and its first request."""

    def __init__(self) -> None:
        self.streams: list[tuple[float, bytes]] = []

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method != _ADS:
            return None
        return grpc.stream_stream_rpc_method_handler(self._stream)

    async def _stream(
        self, requests: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        answered: set[str] = set()
        first = True
        async for request in requests:
            if first:
                self.streams.append((time.monotonic(), request))
                first = False
            type_url = _type_url(request)
            if type_url and type_url not in answered:
                answered.add(type_url)
                yield (_string_field(1, "1") + _string_field(4, type_url) + _string_field(5, "n1"))

    async def serve(self, socket: Path) -> grpc.aio.Server:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((self,))
        assert server.add_insecure_port(f"unix:{socket}") == 1
        await server.start()
        return server


async def test_ads_stream_comes_back_within_a_second(tmp_path: Path) -> None:
    socket = tmp_path / "xds.sock"
    ads = MiniAds()
    server = await ads.serve(socket)
    process = EnvoyProcess(BINARY, ads_bootstrap(socket), concurrency=1)
    try:
        await process.start()  # LIVE: Envoy took (empty) clusters and listeners over ADS
        assert len(ads.streams) == 1
        assert b"sidecar-test" in ads.streams[0][1]  # the node, on the first message
        for down in (0.2, 1.5, 2.5):
            seen = len(ads.streams)
            await server.stop(None)
            await asyncio.sleep(down)  # the xDS server stays down this long
            server = await ads.serve(socket)
            back = time.monotonic()
            await wait_until(lambda n=seen: len(ads.streams) > n, timeout=10)  # type: ignore[misc]
            # back-off 0.1 s doubling to at most 1 s (Envoy's default goes to 30 s)
            assert ads.streams[-1][0] - back < 1.5
            assert b"sidecar-test" in ads.streams[-1][1]
    finally:
        await process.stop()
        await server.stop(None)


# -- the admin client against a bad admin -----------------------------------------------------


async def test_silent_admin_gives_up_at_the_deadline() -> None:
    done = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers; returns when the client hangs up
        writer.close()
        done.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        admin = EnvoyAdmin(f"127.0.0.1:{port}", timeout=0.3)
        registry = CollectorRegistry()
        EnvoyCollector(admin, registry=registry)
        started = time.monotonic()
        assert await asyncio.to_thread(registry.get_sample_value, "meshkit_envoy_up") == 0
        assert time.monotonic() - started < 2
        await asyncio.wait_for(done.wait(), 10)
    finally:
        server.close()


async def test_slow_dripping_admin_gives_up_at_the_deadline() -> None:
    done = asyncio.Event()

    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        try:
            for _ in range(200):  # a byte every 50 ms: each read is quick, the whole is not
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.05)
        except ConnectionError:
            pass  # the client gave up
        finally:
            writer.close()
            done.set()

    server = await asyncio.start_server(drip, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        admin = EnvoyAdmin(f"127.0.0.1:{port}", timeout=0.5)
        started = time.monotonic()
        with pytest.raises(AdminError, match="timed out"):
            await admin.arequest("GET", "/ready")
        assert time.monotonic() - started < 1.5
        await asyncio.wait_for(done.wait(), 10)  # the client closed: writes fail
    finally:
        server.close()


async def test_oversized_admin_answer_is_refused() -> None:
    served: list[bool] = []

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(64):  # 64 chunks of 1 KiB, no Content-Length to check up front
            writer.write(b"400\r\n" + b"x" * 1024 + b"\r\n")
        writer.write(b"0\r\n\r\n")
        try:
            await writer.drain()
        except ConnectionError:
            pass  # the client stopped reading at its limit
        finally:
            writer.close()
            served.append(True)

    server = await asyncio.start_server(flood, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        admin = EnvoyAdmin(f"127.0.0.1:{port}", max_body=16 * 1024)
        with pytest.raises(AdminError, match="over 16384 bytes"):
            await admin.arequest("GET", "/stats/prometheus")
        roomy = EnvoyAdmin(f"127.0.0.1:{port}", max_body=1024 * 1024)
        assert len((await roomy.arequest("GET", "/stats/prometheus")).body) == 64 * 1024
        await wait_until(lambda: len(served) == 2, message="both answers ended")
    finally:
        server.close()
