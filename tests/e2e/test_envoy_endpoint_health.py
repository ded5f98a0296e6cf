"""On the Envoy plane, an endpoint that says NOT_SERVING gets no new call at once, ``/clusters``
says why, and it gets calls again when it says SERVING (the control plane's health watch
publishes EDS health status; sidecar.envoy.endpoint_health)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from tests.e2e.conftest import Sidecars, outbound_config, skip_without_plane, static
from tests.support.echo import EchoRequest, EchoServer, EchoStub, start_echo_server
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


@pytest.fixture
def sidecars_envoy(tmp_path: Path) -> Iterator[Sidecars]:
    skip_without_plane("envoy")
    started = Sidecars(tmp_path, "envoy")
    yield started
    started.kill_all()


def health_of(server: EchoServer) -> Any:
    """The server's ``grpc_health`` aio servicer."""
    return server.extra["health"]


async def test_not_serving_endpoint_gets_no_call_and_clusters_says_why(
    sidecars_envoy: Sidecars,
) -> None:
    a = await start_echo_server("a", health=True)
    b = await start_echo_server("b", health=True)
    try:
        config = outbound_config(static(a, b), health_check={"service": ""})
        sidecar = await sidecars_envoy.start(config)
        async with grpc.aio.insecure_channel(sidecar.outbound) as channel:
            stub = EchoStub(channel)

            async def served_by(count: int) -> set[str]:
                names = set()
                for _ in range(count):
                    reply = await stub.Unary(EchoRequest(message="x"), timeout=5)
                    names.add(reply.server)
                return names

            async def both() -> bool:
                return await served_by(10) == {"a", "b"}

            await wait_until(both, timeout=20, message="both endpoints get calls")
            await health_of(a).set("", health_pb2.HealthCheckResponse.NOT_SERVING)

            async def a_out() -> bool:
                view = (await sidecar.get_json("/clusters"))["backend"]["endpoints"]
                entry = {e["address"]: e for e in view}[a.address]
                return bool(entry["health"] == "unhealthy" and "NOT_SERVING" in entry["reason"])

            took = await wait_until(a_out, timeout=10, message="/clusters shows a unhealthy")
            assert took < 2.5  # a Watch stream hears it: no health-check period to wait for
            before = a.servicer.calls["Unary"]
            assert await served_by(40) == {"b"}
            assert a.servicer.calls["Unary"] == before
            await health_of(a).set("", health_pb2.HealthCheckResponse.SERVING)
            await wait_until(both, timeout=10, message="a gets calls again")
    finally:
        await a.stop(None)
        await b.stop(None)
