"""The inbound side of the real sidecar: mTLS, token auth, and the health it serves itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.conftest import Sidecars
from tests.support.certs import Pki, make_pki
from tests.support.echo import EchoRequest, EchoServer, EchoStub, start_echo_server
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def inbound(app: EchoServer, **extra: Any) -> dict[str, Any]:
    return {"inbound": {"listen": "127.0.0.1:0", "app": app.address, **extra}}


async def check(address: str, service: str = "", **kwargs: Any) -> int:
    """The sidecar's answer to Health/Check (plaintext, no token)."""
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5, **kwargs
        )
    return int(reply.status)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(str(tmp_path_factory.mktemp("pki")))


# -- mTLS -------------------------------------------------------------------------------------


def client_credentials(pki: Pki, cert: str | None, key: str | None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=Pki.read(pki.ca),
        private_key=Pki.read(key) if key else None,
        certificate_chain=Pki.read(cert) if cert else None,
    )


async def mtls_call(address: str, credentials: grpc.ChannelCredentials) -> str:
    async with grpc.aio.secure_channel(address, credentials) as channel:
        reply = await EchoStub(channel).Unary(EchoRequest(message="tls"), timeout=5)
    return str(reply.server)


async def test_mtls_accepts_a_good_client_and_rejects_the_others(
    sidecars: Sidecars, echo: EchoServer, pki: Pki
) -> None:
    tls = {"cert": pki.server_cert, "key": pki.server_key, "client_ca": pki.ca}
    sidecar = await sidecars.start(inbound(echo, tls=tls))
    good = client_credentials(pki, pki.client_cert, pki.client_key)
    assert await mtls_call(sidecar.inbound, good) == "echo"
    rejected = {
        "no client certificate": client_credentials(pki, None, None),
        "another CA": client_credentials(pki, pki.other_client_cert, pki.other_client_key),
        "expired": client_credentials(pki, pki.expired_client_cert, pki.expired_client_key),
    }
    for what, credentials in rejected.items():
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await mtls_call(sidecar.inbound, credentials)
        assert failure.value.code() is grpc.StatusCode.UNAVAILABLE, what
    # plaintext on a TLS port never reaches the app either
    with pytest.raises(grpc.aio.AioRpcError):
        async with grpc.aio.insecure_channel(sidecar.inbound) as channel:
            await EchoStub(channel).Unary(EchoRequest(message="clear"), timeout=5)
    assert echo.servicer.calls["Unary"] == 1
    assert sidecar.process.poll() is None  # bad handshakes never hurt the process


# -- token auth -------------------------------------------------------------------------------


async def test_token_auth_and_health_without_token(
    sidecars: Sidecars, echo: EchoServer, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# accepted tokens\ns3cret\n")
    sidecar = await sidecars.start(inbound(echo, auth={"tokens_file": str(tokens)}))
    async with grpc.aio.insecure_channel(sidecar.inbound) as channel:
        stub = EchoStub(channel)
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "s3cret"),)):
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await stub.Unary(EchoRequest(message="x"), metadata=metadata, timeout=5)
            assert failure.value.code() is grpc.StatusCode.UNAUTHENTICATED, metadata
        reply = await stub.Unary(
            EchoRequest(message="ok"), metadata=(("authorization", "Bearer s3cret"),), timeout=5
        )
        assert reply.server == "echo"
    assert echo.servicer.calls["Unary"] == 1  # rejected calls never reached the app
    assert await check(sidecar.inbound) == SERVING  # kubelet probes carry no token


# -- health -----------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def app_with_health() -> AsyncIterator[EchoServer]:
    server = await start_echo_server("healthy-app", health=True)
    yield server
    await server.stop(None)


async def test_inbound_health_follows_the_app_health_service(
    sidecars: Sidecars, app_with_health: EchoServer
) -> None:
    app_health: Any = app_with_health.extra["health"]
    sidecar = await sidecars.start(inbound(app_with_health, app_health={"interval": "1s"}))
    assert await check(sidecar.inbound) == SERVING

    await app_health.set("", NOT_SERVING)
    await wait_until(
        lambda: _is(sidecar.inbound, NOT_SERVING), timeout=10, message="NOT_SERVING seen"
    )
    status, reason = await sidecar.get("/ready")
    assert status == 503 and "local app" in reason

    await app_health.set("", SERVING)
    await wait_until(lambda: _is(sidecar.inbound, SERVING), timeout=10, message="SERVING again")
    await sidecar.wait_ready()


async def test_app_without_health_service_is_judged_by_its_connection(
    sidecars: Sidecars, echo: EchoServer
) -> None:
    sidecar = await sidecars.start(inbound(echo))
    # The echo app has no health service: a forwarded Check would be UNIMPLEMENTED, so this
    # answer comes from the sidecar's own health service.
    assert await check(sidecar.inbound) == SERVING
    await echo.stop(None)
    await wait_until(lambda: _is(sidecar.inbound, NOT_SERVING), timeout=15, message="app down seen")
    status, reason = await sidecar.get("/ready")
    assert status == 503 and "local app" in reason


async def _is(address: str, status: int) -> bool:
    return await check(address) == status
