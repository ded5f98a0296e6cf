"""A real gRPC echo service (all four RPC kinds) for tests and demos.

The messages and stub come from ``grpc.protos_and_services`` (grpcio's runtime protoc), so the
``EchoStub`` used in tests is exactly what generated code would be.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import sys
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field

import grpc

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.append(_HERE)
echo_pb2, echo_pb2_grpc = grpc.protos_and_services("echo.proto")

EchoRequest = echo_pb2.EchoRequest
EchoReply = echo_pb2.EchoReply
EchoStub = echo_pb2_grpc.EchoStub


def _metadata_list(context: grpc.aio.ServicerContext) -> list[str]:
    out = []
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, bytes):
            value = value.hex()
        out.append(f"{key}={value}")
    return out


class EchoServicer(echo_pb2_grpc.EchoServicer):  # type: ignore[misc,name-defined]
    """Echoes, names itself in every reply, counts calls per method."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: collections.Counter[str] = collections.Counter()
        self.cancelled = 0
        self.active = 0
        self.fail_with: grpc.StatusCode | None = None
        """When set, every unary call fails with this code (a sick backend)."""

    def _reply(self, request: object, context: grpc.aio.ServicerContext) -> object:
        remaining = context.time_remaining()
        return EchoReply(
            message=request.message,  # type: ignore[attr-defined]
            server=self.name,
            time_remaining=remaining if remaining is not None else 0.0,
            metadata=_metadata_list(context),
        )

    async def _maybe_fail_or_wait(self, request: object, context: grpc.aio.ServicerContext) -> None:
        delay = request.delay_s  # type: ignore[attr-defined]
        if delay:
            try:
                await asyncio.sleep(min(delay, 30.0))
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        code = request.fail_code  # type: ignore[attr-defined]
        if code:
            status = next(s for s in grpc.StatusCode if s.value[0] == code)
            await context.send_initial_metadata((("x-echo-server", self.name),))
            context.set_trailing_metadata((("x-echo-trailer", "failed"),))
            await context.abort(status, request.message)  # type: ignore[attr-defined]

    async def Unary(self, request, context):  # type: ignore[no-untyped-def]
        self.calls["Unary"] += 1
        self.active += 1
        try:
            if self.fail_with is not None:
                await context.abort(self.fail_with, f"{self.name} is failing on purpose")
            await self._maybe_fail_or_wait(request, context)
            context.set_trailing_metadata((("x-echo-trailer", self.name),))
            return self._reply(request, context)
        finally:
            self.active -= 1

    async def ServerStream(self, request, context):  # type: ignore[no-untyped-def]
        self.calls["ServerStream"] += 1
        await self._maybe_fail_or_wait(request, context)
        for i in range(max(request.count, 1)):
            yield EchoReply(message=f"{request.message}#{i}", server=self.name)

    async def ClientStream(self, request_iterator, context):  # type: ignore[no-untyped-def]
        self.calls["ClientStream"] += 1
        parts = [r.message async for r in request_iterator]
        return EchoReply(message=",".join(parts), server=self.name)

    async def BidiStream(self, request_iterator, context):  # type: ignore[no-untyped-def]
        self.calls["BidiStream"] += 1
        async for r in request_iterator:
            await self._maybe_fail_or_wait(r, context)
            yield EchoReply(message=r.message, server=self.name)


@dataclass
class EchoServer:
    """A running aio echo server on loopback."""

    server: grpc.aio.Server
    port: int
    servicer: EchoServicer
    extra: dict[str, object] = field(default_factory=dict)
    host: str = "127.0.0.1"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def stop(self, grace: float | None = None) -> None:
        await self.server.stop(grace)


async def start_echo_server(
    name: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    health: bool = False,
    interceptors: Sequence[grpc.aio.ServerInterceptor] | None = None,
) -> EchoServer:
    """Start an echo server on ``host:port`` (by default the port the kernel chooses)."""
    server = grpc.aio.server(interceptors=interceptors)
    servicer = EchoServicer(name)
    echo_pb2_grpc.add_EchoServicer_to_server(servicer, server)
    extra: dict[str, object] = {}
    if health:
        from grpc_health.v1 import health as health_mod
        from grpc_health.v1 import health_pb2_grpc

        hs = health_mod.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(hs, server)
        extra["health"] = hs
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise RuntimeError(f"could not bind {host}:{port}")
    await server.start()
    return EchoServer(server, bound, servicer, extra, host)


async def aiter_requests(*messages: str) -> AsyncIterator[object]:
    for m in messages:
        yield EchoRequest(message=m)


@contextlib.contextmanager
def echo_servers_in_thread(
    names: str,
    *,
    health: bool = False,
    interceptors: Sequence[grpc.aio.ServerInterceptor] | None = None,
) -> Iterator[list[EchoServer]]:
    """Echo servers (one per letter of ``names``) on an event loop in another thread: a sync
    client blocks the calling one."""
    ready = threading.Event()
    stop = threading.Event()
    servers: list[EchoServer] = []

    async def main() -> None:
        for name in names:
            servers.append(await start_echo_server(name, health=health, interceptors=interceptors))
        ready.set()
        await asyncio.to_thread(stop.wait)
        for server in servers:
            await server.stop(None)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    try:
        assert ready.wait(10), "echo servers did not start"
        yield servers
    finally:
        stop.set()
        thread.join(10)
