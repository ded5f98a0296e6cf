"""mTLS on the proxy's listener (with certificate rotation on disk) and TLS to an upstream."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from sidecar.proxy import ProxyHandler, Upstream, server_options, upstream_channel_options
from sidecar.tls import ClientTlsFiles, ServerTlsFiles
from tests.support.certs import Pki, make_ca, make_pki, server_cert
from tests.support.echo import (
    EchoRequest,
    EchoServer,
    EchoServicer,
    EchoStub,
    echo_pb2_grpc,
    start_echo_server,
)

LOCAL_POOL = [("grpc.use_local_subchannel_pool", 1)]


class SecretVolume:
    """Files laid out like a mounted Kubernetes secret: ``name -> ..data/name``, where ``..data``
    is a symlink to a timestamped directory swapped atomically on update."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.version = 0

    def path(self, name: str) -> str:
        return str(self.root / name)

    def publish(self, files: dict[str, bytes]) -> None:
        self.version += 1
        target = self.root / f"..v{self.version}"
        target.mkdir()
        for name, content in files.items():
            (target / name).write_bytes(content)
        tmp = self.root / "..data_tmp"
        os.symlink(target.name, tmp)
        os.replace(tmp, self.root / "..data")  # the atomic swap
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                os.symlink(f"..data/{name}", link)


@dataclass
class TlsProxy:
    server: grpc.aio.Server
    address: str
    tls: ServerTlsFiles


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(str(tmp_path))


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = await start_echo_server("tls-backend")
    yield server
    await server.stop(None)


@pytest.fixture
async def upstream_channel(echo: EchoServer) -> AsyncIterator[grpc.aio.Channel]:
    channel = grpc.aio.insecure_channel(echo.address, options=upstream_channel_options())
    yield channel
    await channel.close()


async def start_tls_proxy(tls: ServerTlsFiles, channel: grpc.aio.Channel) -> TlsProxy:
    server = grpc.aio.server(options=server_options())
    server.add_generic_rpc_handlers((ProxyHandler(lambda _: Upstream("local-app", channel)),))
    port = server.add_secure_port("127.0.0.1:0", tls.credentials())
    await server.start()
    return TlsProxy(server, f"127.0.0.1:{port}", tls)


def client(
    address: str, ca: bytes, cert: bytes | None = None, key: bytes | None = None
) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )
    return grpc.aio.secure_channel(address, creds, options=LOCAL_POOL)


def touch_content(path: str) -> None:
    """Change a PEM file's bytes without changing what it means."""
    Path(path).write_bytes(Pki.read(path) + b"\n")


async def unary_code(channel: grpc.aio.Channel) -> grpc.StatusCode:
    try:
        await EchoStub(channel).Unary(EchoRequest(message="hi"), timeout=5)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def test_client_certificates_are_required_and_verified(
    pki: Pki, upstream_channel: grpc.aio.Channel
) -> None:
    tls = ServerTlsFiles(pki.server_cert, pki.server_key, pki.ca)
    proxy = await start_tls_proxy(tls, upstream_channel)
    read = Pki.read
    ca = read(pki.ca)
    try:
        async with client(proxy.address, ca, read(pki.client_cert), read(pki.client_key)) as ok:
            assert await unary_code(ok) is grpc.StatusCode.OK
        rejected = {
            "no cert": client(proxy.address, ca),
            "other CA": client(
                proxy.address, ca, read(pki.other_client_cert), read(pki.other_client_key)
            ),
            "expired": client(
                proxy.address, ca, read(pki.expired_client_cert), read(pki.expired_client_key)
            ),
        }
        for what, channel in rejected.items():
            async with channel:
                assert await unary_code(channel) is grpc.StatusCode.UNAVAILABLE, what
    finally:
        await proxy.server.stop(None)


async def test_rotated_certificate_serves_new_connections_and_keeps_streams(
    pki: Pki, upstream_channel: grpc.aio.Channel, echo: EchoServer, tmp_path: Path
) -> None:
    volume = SecretVolume(tmp_path / "secret")
    volume.root.mkdir()
    first_ca, _ = pki.authorities
    read = Pki.read
    volume.publish(
        {"tls.crt": read(pki.server_cert), "tls.key": read(pki.server_key), "ca.crt": read(pki.ca)}
    )
    tls = ServerTlsFiles(volume.path("tls.crt"), volume.path("tls.key"), volume.path("ca.crt"))
    proxy = await start_tls_proxy(tls, upstream_channel)
    client_cert, client_key = read(pki.client_cert), read(pki.client_key)
    try:
        old = client(proxy.address, first_ca.cert_pem, client_cert, client_key)
        stream = EchoStub(old).BidiStream(timeout=30)
        await stream.write(EchoRequest(message="before"))
        assert (await stream.read()).message == "before"

        # rotate: a server certificate from a new CA; client certificates still from the first
        new_ca = make_ca("meshkit rotated CA")
        new_server = server_cert(new_ca, "meshkit-server-rotated")
        volume.publish(
            {"tls.crt": new_server.cert_pem, "tls.key": new_server.key_pem, "ca.crt": read(pki.ca)}
        )

        async with client(proxy.address, new_ca.cert_pem, client_cert, client_key) as fresh:
            assert await unary_code(fresh) is grpc.StatusCode.OK  # new handshake, new cert
        async with client(proxy.address, first_ca.cert_pem, client_cert, client_key) as stale:
            assert await unary_code(stale) is grpc.StatusCode.UNAVAILABLE  # old cert is gone
        assert tls.reloads == 1

        await stream.write(EchoRequest(message="after"))  # the established stream carries on
        assert (await stream.read()).message == "after"
        await stream.done_writing()
        assert await stream.code() is grpc.StatusCode.OK
        await old.close()
    finally:
        await proxy.server.stop(None)


async def test_upstream_tls_with_client_certificate_and_server_name(
    pki: Pki, tmp_path: Path
) -> None:
    # the upstream itself requires mTLS
    upstream = grpc.aio.server()
    echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer("secure-backend"), upstream)
    server_tls = ServerTlsFiles(pki.server_cert, pki.server_key, pki.ca)
    port = upstream.add_secure_port("127.0.0.1:0", server_tls.credentials())
    await upstream.start()

    client_tls = ClientTlsFiles(pki.ca, pki.client_cert, pki.client_key, server_name="localhost")
    channel = grpc.aio.secure_channel(
        f"127.0.0.1:{port}",
        client_tls.credentials(),
        options=upstream_channel_options(local_subchannel_pool=True) + client_tls.channel_options(),
    )
    proxy = grpc.aio.server()
    proxy.add_generic_rpc_handlers((ProxyHandler(lambda _: Upstream("secure", channel)),))
    proxy_port = proxy.add_insecure_port("127.0.0.1:0")
    await proxy.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy_port}") as app:
            reply = await EchoStub(app).Unary(EchoRequest(message="over tls"), timeout=5)
            assert reply.message == "over tls"
        assert not client_tls.reload_if_changed()
        touch_content(pki.client_cert)
        assert client_tls.reload_if_changed()  # new credentials for new channels
    finally:
        await proxy.stop(None)
        await channel.close()
        await upstream.stop(None)
