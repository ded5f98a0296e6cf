"""Every target form of gRPC's naming doc, end to end: the sidecar config accepts it, and a
balanced channel built from it completes real calls to real grpc.aio servers on loopback
(TCP on 127.0.0.1 and [::1], and Unix sockets). A bad target gets one verdict, the same from
``sidecar validate`` as from building the cluster."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

import balancers
import balancers.aio
from sidecar import cli
from sidecar.clusters import Cluster
from sidecar.config import parse_config
from tests.support.dns_server import DnsServer
from tests.support.echo import EchoRequest, EchoServicer, EchoStub, echo_pb2_grpc
from tests.support.waiting import wait_until, wait_until_sync

READY = grpc.ChannelConnectivity.READY

pytestmark = pytest.mark.timeout(60)


async def _serve(name: str, bind: str) -> tuple[grpc.aio.Server, int]:
    """An echo server named ``name`` on ``bind`` (``127.0.0.1:0``, ``[::1]:0``, ``unix:path``)."""
    server = grpc.aio.server()
    echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer(name), server)
    port = server.add_insecure_port(bind)
    assert port, f"could not bind {bind}"
    await server.start()
    return server, port


@dataclass
class Backends:
    """Echo servers of one test: a, b on 127.0.0.1; a6, b6 on [::1]; ua on a Unix socket."""

    ports: dict[str, int]
    socket_dir: Path

    def target(self, template: str) -> str:
        return template.format(**self.ports, dir=self.socket_dir)


@contextlib.asynccontextmanager
async def _backends(socket_dir: Path) -> AsyncIterator[Backends]:
    binds = {
        "a": "127.0.0.1:0",
        "b": "127.0.0.1:0",
        "a6": "[::1]:0",
        "b6": "[::1]:0",
        "ua": f"unix:{socket_dir}/ua.sock",
    }
    servers: list[grpc.aio.Server] = []
    ports: dict[str, int] = {}
    try:
        for name, bind in binds.items():
            server, port = await _serve(name, bind)
            servers.append(server)
            ports[name] = port
        yield Backends(ports, socket_dir)
    finally:
        for server in servers:
            await server.stop(None)


# (id, target template, servers expected to answer)
FORMS = [
    ("dns-opaque", "dns:localhost:{a}", {"a"}),
    ("dns-slashes", "dns:///localhost:{a}", {"a"}),
    ("dns-nameserver", "dns://{ns}/echo.test:{a}", {"a"}),
    ("bare-name", "localhost:{a}", {"a"}),
    ("bare-ipv4", "127.0.0.1:{a}", {"a"}),
    ("bare-ipv6", "[::1]:{a6}", {"a6"}),
    ("ipv4-list", "ipv4:127.0.0.1:{a},127.0.0.1:{b}", {"a", "b"}),
    ("ipv4-slashes", "ipv4:///127.0.0.1:{a}", {"a"}),
    ("ipv6-list", "ipv6:[::1]:{a6},[::1]:{b6}", {"a6", "b6"}),
    ("unix-relative", "unix:ua.sock", {"ua"}),
    ("unix-path", "unix:{dir}/ua.sock", {"ua"}),
    ("unix-slashes", "unix://{dir}/ua.sock", {"ua"}),
]


def _config(target: str) -> dict[str, Any]:
    return {
        "outbound": {"listen": "127.0.0.1:0", "routes": [{"prefix": "/", "cluster": "up"}]},
        "clusters": {"up": {"target": target}},
        "admin": {"listen": "127.0.0.1:0"},
    }


async def _spread(channel: balancers.aio.BalancedChannel, expected: set[str]) -> set[str]:
    await wait_until(
        lambda: (
            sum(sc.state.connectivity is READY for sc in channel.core.subchannels) == len(expected)
        ),
        message=f"{len(expected)} endpoints READY",
    )
    stub = EchoStub(channel)
    replies = [await stub.Unary(EchoRequest(message="hi"), timeout=10) for _ in range(10)]
    assert {r.message for r in replies} == {"hi"}
    return {r.server for r in replies}


@pytest.mark.parametrize(
    ("template", "expected"), [f[1:] for f in FORMS], ids=[f[0] for f in FORMS]
)
async def test_every_form_is_valid_config_and_completes_real_calls(
    template: str, expected: set[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The relative socket path is taken from the working directory, by server and client alike.
    monkeypatch.chdir(tmp_path)
    async with _backends(tmp_path) as backends, DnsServer() as dns:
        dns.set_a("echo.test", ["127.0.0.1"], ttl=60)
        target = template.format(**backends.ports, dir=tmp_path, ns=dns.authority)
        assert parse_config(_config(target), {}).clusters["up"].target == target
        async with balancers.aio.insecure_channel(target) as channel:
            assert await _spread(channel, expected) == expected
        if "{ns}" in template:
            assert dns.queries["echo.test", "A"] >= 1  # answered by that server, not the OS


@contextlib.contextmanager
def _backends_in_thread(socket_dir: Path) -> Iterator[Backends]:
    """:func:`_backends` on an event loop in another thread: a sync client blocks this one."""
    ready = threading.Event()
    stop = threading.Event()
    found: list[Backends] = []
    failed: list[BaseException] = []

    async def main() -> None:
        try:
            async with _backends(socket_dir) as backends:
                found.append(backends)
                ready.set()
                await asyncio.to_thread(stop.wait)
        except BaseException as exc:
            failed.append(exc)
            ready.set()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    try:
        assert ready.wait(20), "backends did not start"
        if failed:
            raise failed[0]
        yield found[0]
    finally:
        stop.set()
        thread.join(20)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("dns:localhost:{a}", {"a"}),
        ("ipv4:127.0.0.1:{a},127.0.0.1:{b}", {"a", "b"}),
        ("ipv6:[::1]:{a6}", {"a6"}),
        ("unix:{dir}/ua.sock", {"ua"}),
    ],
    ids=["dns-opaque", "ipv4-list", "ipv6", "unix-path"],
)
def test_the_sync_channel_takes_the_forms_too(
    template: str, expected: set[str], tmp_path: Path
) -> None:
    with _backends_in_thread(tmp_path) as backends:
        target = backends.target(template)
        with balancers.insecure_channel(target) as channel:
            wait_until_sync(
                lambda: (
                    sum(sc.state.connectivity is READY for sc in channel.core.subchannels)
                    == len(expected)
                ),
                message=f"{len(expected)} endpoints READY",
            )
            stub = EchoStub(channel)
            seen = collections.Counter(
                stub.Unary(EchoRequest(message="hi"), timeout=10).server for _ in range(10)
            )
            assert set(seen) == expected


SAME_VERDICT = [
    "dns:",
    "dns:///",
    "ipv4:1.2.3",
    "ipv4:",
    "ipv6:::1:80",
    "unix:",
    "unix://host/x.sock",
    "dns:///a:b:c",
    "static:///127.0.0.1",
    "bogus:///x",
    "dns:localhost:50061",
    "ipv4:127.0.0.1:50061",
    "ipv6:[::1]:50061",
    "unix:/run/app.sock",
    "localhost:50061",
]


@pytest.mark.parametrize("target", SAME_VERDICT)
async def test_validate_and_building_the_cluster_agree(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(_config(target)))
    status = cli.main(["validate", "--config", str(path)])
    errors = [
        line.removeprefix("config error: ")
        for line in capsys.readouterr().err.splitlines()
        if line.startswith("config error: ")
    ]
    try:
        # What Cluster.build does with the target (a bad one never makes a ClusterConfig).
        channel = balancers.aio.insecure_channel(target)
    except (ValueError, LookupError) as exc:
        assert status == cli.EXIT_CONFIG
        assert errors == [f"clusters.up.target: {exc}"]
        return
    await channel.close()
    assert status == cli.EXIT_OK, errors
    config = parse_config(_config(target), {})
    cluster = Cluster.build("up", config.clusters["up"])
    await cluster.close(None)
