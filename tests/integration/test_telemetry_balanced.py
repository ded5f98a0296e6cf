"""Telemetry interceptors through meshkit's balanced channels (applied per endpoint)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

import balancers
import balancers.aio
import telemetry
from tests.support.echo import (
    EchoRequest,
    EchoServer,
    EchoStub,
    echo_servers_in_thread,
    start_echo_server,
)
from tests.support.waiting import wait_until, wait_until_sync

pytestmark = pytest.mark.timeout(60)

CALLS = 20


def static(servers: list[EchoServer]) -> str:
    return "static:///" + ",".join(s.address for s in servers)


def handled_total(registry: CollectorRegistry) -> float:
    labels = {
        "grpc_type": "unary",
        "grpc_service": "meshkit.test.Echo",
        "grpc_method": "Unary",
        "grpc_code": "OK",
    }
    return registry.get_sample_value("grpc_client_handled_total", labels) or 0.0


@pytest.fixture
async def two() -> AsyncIterator[list[EchoServer]]:
    servers = [await start_echo_server(name) for name in "ab"]
    yield servers
    for server in servers:
        await server.stop(None)


async def test_aio_balanced_channel_records_every_call(two: list[EchoServer]) -> None:
    registry = CollectorRegistry()
    interceptors = telemetry.aio.client_interceptors(
        metrics=telemetry.GrpcMetrics(registry=registry, side="client")
    )
    async with balancers.aio.insecure_channel(static(two), interceptors=interceptors) as channel:
        stub = EchoStub(channel)
        replies = [
            await stub.Unary(EchoRequest(message="x"), timeout=5, wait_for_ready=True)
            for _ in range(CALLS)
        ]
        await wait_until(lambda: handled_total(registry) == CALLS, message="all calls counted")
    assert {r.server for r in replies} <= {"a", "b"}
    assert two[0].servicer.calls["Unary"] + two[1].servicer.calls["Unary"] == CALLS


def test_sync_balanced_channel_records_every_call() -> None:
    registry = CollectorRegistry()
    interceptors = telemetry.client_interceptors(
        metrics=telemetry.GrpcMetrics(registry=registry, side="client")
    )
    with echo_servers_in_thread("ab") as servers:
        with balancers.insecure_channel(static(servers), interceptors=interceptors) as channel:
            stub = EchoStub(channel)
            for _ in range(CALLS):
                stub.Unary(EchoRequest(message="x"), timeout=5, wait_for_ready=True)
            wait_until_sync(lambda: handled_total(registry) == CALLS, message="all counted")
        assert sum(s.servicer.calls["Unary"] for s in servers) == CALLS
