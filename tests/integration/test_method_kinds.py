"""Method kinds learned from real grpcio servers' reflection (v1alpha as grpcio serves it, v1
as Go servers do) and from descriptor set files."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2  # type: ignore[import-untyped]
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as rpb

from sidecar.method_kinds import (
    MAX_DESCRIPTOR_SET_BYTES,
    MethodKinds,
    kinds_from_descriptor_set,
    merged,
    read_descriptor_set,
    reflect,
)
from tests.support.echo import EchoServer, echo_pb2, start_echo_server
from tests.support.waiting import wait_until

ECHO = {
    "/meshkit.test.Echo/Unary": "unary_unary",
    "/meshkit.test.Echo/ServerStream": "unary_stream",
    "/meshkit.test.Echo/ClientStream": "stream_unary",
    "/meshkit.test.Echo/BidiStream": "stream_stream",
}
ECHO_SERVICE = echo_pb2.DESCRIPTOR.services_by_name["Echo"].full_name


def _v1_handler(servicer: reflection.ReflectionServicer) -> grpc.GenericRpcHandler:
    """grpcio's reflection servicer under the v1 name only (v1 and v1alpha messages are the
    same on the wire), as a server that dropped v1alpha would offer it."""
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=rpb.ServerReflectionRequest.FromString,
        response_serializer=rpb.ServerReflectionResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(
        "grpc.reflection.v1.ServerReflection", {"ServerReflectionInfo": handler}
    )


@pytest.fixture
async def servers() -> AsyncIterator[dict[str, EchoServer]]:
    v1alpha = await start_echo_server("v1alpha")
    reflection.enable_server_reflection((ECHO_SERVICE, reflection.SERVICE_NAME), v1alpha.server)
    bare = await start_echo_server("bare")
    # A v1-only server: the reflection handler has to be added before start.
    v1_server = grpc.aio.server()
    from tests.support.echo import EchoServicer, echo_pb2_grpc

    echo_pb2_grpc.add_EchoServicer_to_server(EchoServicer("v1"), v1_server)
    v1_server.add_generic_rpc_handlers(
        (_v1_handler(reflection.ReflectionServicer((ECHO_SERVICE,))),)
    )
    port = v1_server.add_insecure_port("127.0.0.1:0")
    await v1_server.start()
    v1 = EchoServer(v1_server, port, EchoServicer("v1"))
    try:
        yield {"v1alpha": v1alpha, "v1": v1, "bare": bare}
    finally:
        for server in (v1alpha, bare, v1):
            await server.stop(None)


@pytest.mark.parametrize("name", ["v1alpha", "v1"])
async def test_reflection_gives_every_method_kind(
    servers: dict[str, EchoServer], name: str
) -> None:
    async with grpc.aio.insecure_channel(servers[name].address) as channel:
        assert await reflect(channel) == ECHO


async def test_a_server_without_reflection_gives_nothing_quickly(
    servers: dict[str, EchoServer],
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with grpc.aio.insecure_channel(servers["bare"].address) as channel:
        assert await reflect(channel, timeout=5.0) == {}
    assert loop.time() - started < 4.0  # two UNIMPLEMENTED answers, not the timeout


async def test_an_unreachable_server_gives_nothing_within_the_timeout(
    servers: dict[str, EchoServer],
) -> None:
    address = servers["bare"].address
    await servers["bare"].stop(None)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with grpc.aio.insecure_channel(address) as channel:
        assert await reflect(channel, timeout=0.5) == {}
    assert loop.time() - started < 3.0


async def test_budgets_bound_what_a_server_may_send(servers: dict[str, EchoServer]) -> None:
    async with grpc.aio.insecure_channel(servers["v1alpha"].address) as channel:
        assert await reflect(channel, max_services=0) == {}
        assert await reflect(channel, max_bytes=10) == {}
        assert await reflect(channel, max_services=1) == ECHO  # reflection itself not counted


def _descriptor_set(tmp_path: Path) -> Path:
    files = descriptor_pb2.FileDescriptorSet()
    echo_pb2.DESCRIPTOR.CopyToProto(files.file.add())
    nameless = files.file.add(name="x.proto")  # no package: /Service/Method
    nameless.service.add(name="Plain").method.add(
        name="Go", input_type=".x.A", output_type=".x.B", server_streaming=True
    )
    path = tmp_path / "set.pb"
    path.write_bytes(files.SerializeToString())
    return path


def test_descriptor_set_file(tmp_path: Path) -> None:
    assert read_descriptor_set(str(_descriptor_set(tmp_path))) == {
        **ECHO,
        "/Plain/Go": "unary_stream",
    }


def test_bad_descriptor_sets_are_value_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="FileDescriptorSet"):
        kinds_from_descriptor_set(b"\xff\xff\xff garbage")
    with pytest.raises(ValueError, match="no files"):
        kinds_from_descriptor_set(b"\x10\x01")  # valid protobuf, unknown field, no file
    assert kinds_from_descriptor_set(b"") == {}
    with pytest.raises(ValueError, match="No such file"):
        read_descriptor_set(str(tmp_path / "missing.pb"))
    big = tmp_path / "big.pb"
    with big.open("wb") as file:
        file.truncate(MAX_DESCRIPTOR_SET_BYTES + 1)
    with pytest.raises(ValueError, match="more than"):
        read_descriptor_set(str(big))


def test_merged_earlier_tables_win() -> None:
    assert merged([{"/a/B": "unary_unary"}, {"/a/B": "stream_stream", "/a/C": "unary_stream"}]) == {
        "/a/B": "unary_unary",
        "/a/C": "unary_stream",
    }


async def test_method_kinds_learns_from_every_source_and_files_win(
    servers: dict[str, EchoServer],
) -> None:
    changes: list[dict[str, str]] = []
    kinds = MethodKinds(
        files={"/meshkit.test.Echo/Unary": "stream_stream", "/other.Svc/M": "unary_stream"},
        on_change=lambda table: changes.append(dict(table)),
    )
    assert kinds.kind("/meshkit.test.Echo/Unary") == "stream_stream"
    kinds.set_sources(
        {
            "a": lambda: grpc.aio.insecure_channel(servers["v1alpha"].address),
            "b": lambda: grpc.aio.insecure_channel(servers["bare"].address),
        }
    )
    await kinds.learn()
    assert kinds.kind("/meshkit.test.Echo/Unary") == "stream_stream"  # the file wins
    assert kinds.kind("/meshkit.test.Echo/ClientStream") == "stream_unary"
    assert kinds.kind("/other.Svc/M") == "unary_stream"
    assert kinds.kind("/nobody.Knows/This") is None
    assert changes and changes[-1] == dict(kinds.table)
    kinds.set_sources({"b": lambda: grpc.aio.insecure_channel(servers["bare"].address)})
    assert kinds.kind("/meshkit.test.Echo/ClientStream") is None  # "a" is gone, so its kinds
    kinds.set_files({})
    assert dict(kinds.table) == {}


async def test_a_failing_source_keeps_what_it_taught(servers: dict[str, EchoServer]) -> None:
    address = servers["v1alpha"].address
    kinds = MethodKinds(timeout=0.5)
    kinds.set_sources({"a": lambda: grpc.aio.insecure_channel(address)})
    await kinds.learn()
    assert kinds.kind("/meshkit.test.Echo/BidiStream") == "stream_stream"
    await servers["v1alpha"].stop(None)
    await kinds.learn()
    assert kinds.kind("/meshkit.test.Echo/BidiStream") == "stream_stream"


async def test_run_learns_again_after_a_miss(servers: dict[str, EchoServer]) -> None:
    kinds = MethodKinds(refresh=3600.0)
    target = {"address": servers["bare"].address}
    kinds.set_sources({"a": lambda: grpc.aio.insecure_channel(target["address"])})
    task = asyncio.create_task(kinds.run())
    try:
        await wait_until(lambda: kinds.rounds == 1, 5.0)  # asked the server without reflection
        assert kinds.kind("/meshkit.test.Echo/Unary") is None
        target["address"] = servers["v1alpha"].address  # the server now offers reflection
        kinds.miss("/meshkit.test.Echo/Unary")
        await wait_until(lambda: kinds.kind("/meshkit.test.Echo/Unary") == "unary_unary", 5.0)
        assert kinds.rounds == 2
        kinds.miss("/meshkit.test.Echo/Other")  # within 30 s of the last: no new round
        assert not kinds.wanted
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def sync_v1alpha() -> Iterator[str]:
    """grpcio's sync server with v1alpha reflection only: it answers the v1 stream
    UNIMPLEMENTED at once, which races the first request message."""
    server = grpc.server(futures.ThreadPoolExecutor(4))
    from tests.support.echo import echo_pb2_grpc

    echo_pb2_grpc.add_EchoServicer_to_server(echo_pb2_grpc.EchoServicer(), server)
    reflection.enable_server_reflection((ECHO_SERVICE, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


async def test_v1alpha_is_asked_whatever_status_the_refused_v1_stream_ends_with(
    sync_v1alpha: str,
) -> None:
    # grpc.aio often reports the v1 refusal as INTERNAL ("Internal error from Core"): the
    # sending side fails first. Repeated on fresh channels (as the sidecar asks), since it
    # depends on timing.
    for _ in range(30):
        async with grpc.aio.insecure_channel(sync_v1alpha) as channel:
            assert await reflect(channel) == ECHO


async def test_a_miss_reported_from_another_thread_wakes_the_learner(
    servers: dict[str, EchoServer],
) -> None:
    """As the Envoy plane reports misses, from the admin server's thread."""
    kinds = MethodKinds(refresh=3600.0)
    target = {"address": servers["bare"].address}
    kinds.set_sources({"a": lambda: grpc.aio.insecure_channel(target["address"])})
    task = asyncio.create_task(kinds.run())
    try:
        await wait_until(lambda: kinds.rounds == 1, 5.0)
        target["address"] = servers["v1alpha"].address
        await asyncio.to_thread(kinds.miss, "/meshkit.test.Echo/Unary")
        await wait_until(lambda: kinds.kind("/meshkit.test.Echo/Unary") == "unary_unary", 5.0)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
