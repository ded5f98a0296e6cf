"""What kind each gRPC method is, learned from the servers rather than hinted by hand.

The kind of a call (unary, server streaming, client streaming, bidi) is not on the wire: a
proxy sees HTTP/2 frames. It matters twice: for the ``grpc_type`` label of the call metrics,
and on the Python data plane for the forwarding path (a unary relay costs a quarter less CPU
than the generic stream relay). Route ``kind`` hints say it by hand; this module learns it:

- from **server reflection**, as grpcurl does: ``grpc.reflection.v1.ServerReflection`` first,
  ``v1alpha`` when the server has only that (grpcio's reflection service; Go servers offer
  both). The two have the same messages, so one set of message classes serves both;
- from **descriptor set files** (``protoc --include_imports --descriptor_set_out=FILE``), for
  servers without reflection.

Learning is bounded: one stream per server, ``timeout`` for the whole exchange, at most
``max_services`` services and ``max_bytes`` of answers; a server without reflection
(UNIMPLEMENTED) or a failing one yields nothing and the hints and defaults apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Final

import grpc
from google.protobuf import descriptor_pb2  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from grpc_reflection.v1alpha import reflection_pb2

from telemetry.rpc_kind import RpcKind

__all__ = [
    "MAX_DESCRIPTOR_SET_BYTES",
    "REFLECTION_METHODS",
    "ChannelFactory",
    "MethodKinds",
    "kinds_from_descriptor_set",
    "kinds_from_files",
    "merged",
    "read_descriptor_set",
    "reflect",
]

_LOG = logging.getLogger(__name__)

#: The reflection services' stream methods, the newest first.
REFLECTION_METHODS: Final = (
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
)
MAX_DESCRIPTOR_SET_BYTES: Final = 16 * 1024 * 1024
_MISS_INTERVAL: Final = 30.0
_REFLECTION_SERVICES: Final = frozenset(m.split("/")[1] for m in REFLECTION_METHODS)
_NOT_OFFERED: Final = frozenset({grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL})


def kinds_from_files(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> dict[str, RpcKind]:
    """``/pkg.Service/Method`` -> ``RpcKind`` for every method of every service in ``files``."""
    out: dict[str, RpcKind] = {}
    for file in files:
        prefix = f"{file.package}." if file.package else ""
        for service in file.service:
            for method in service.method:
                path = f"/{prefix}{service.name}/{method.name}"
                out[path] = RpcKind.of(method.client_streaming, method.server_streaming)
    return out


def kinds_from_descriptor_set(data: bytes) -> dict[str, RpcKind]:
    """The kinds of a serialized ``FileDescriptorSet``; ``ValueError`` if it is not one."""
    descriptor_set = descriptor_pb2.FileDescriptorSet()
    try:
        descriptor_set.ParseFromString(data)
    except DecodeError as exc:
        raise ValueError(f"not a protobuf FileDescriptorSet ({exc})") from None
    if data and not descriptor_set.file:
        raise ValueError("not a protobuf FileDescriptorSet (no files in it)")
    return kinds_from_files(descriptor_set.file)


def read_descriptor_set(path: str) -> dict[str, RpcKind]:
    """:func:`kinds_from_descriptor_set` of the file at ``path``, at most
    :data:`MAX_DESCRIPTOR_SET_BYTES`; ``ValueError`` naming the problem otherwise."""
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > MAX_DESCRIPTOR_SET_BYTES:
                raise ValueError(f"{size} bytes, more than {MAX_DESCRIPTOR_SET_BYTES}")
            data = file.read(MAX_DESCRIPTOR_SET_BYTES + 1)
    except OSError as exc:
        raise ValueError(exc.strerror or str(exc)) from None
    if len(data) > MAX_DESCRIPTOR_SET_BYTES:
        raise ValueError(f"more than {MAX_DESCRIPTOR_SET_BYTES} bytes")
    return kinds_from_descriptor_set(data)


class _Budget:
    """Bounds on what one server may send: services and bytes."""

    def __init__(self, max_services: int, max_bytes: int) -> None:
        self.services = max_services
        self.bytes = max_bytes

    def spend(self, response: reflection_pb2.ServerReflectionResponse) -> None:
        self.bytes -= response.ByteSize()
        if self.bytes < 0:
            raise ValueError("reflection answers exceed the byte budget")


async def _exchange(
    channel: grpc.aio.Channel, method: str, budget: _Budget, timeout: float
) -> dict[str, RpcKind]:
    """One reflection stream: list the services, then ask for each one's file."""
    # wait_for_ready: a server starting up (the app next to the sidecar, a cluster's channel
    # still resolving) is asked once it accepts, within ``timeout``, not failed at once.
    call = channel.stream_stream(
        method,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )(timeout=timeout, wait_for_ready=True)
    try:
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        listed = await call.read()
        if listed is grpc.aio.EOF:
            raise ValueError("reflection stream ended without an answer")
        budget.spend(listed)
        if listed.HasField("error_response"):
            raise ValueError(f"list_services: {listed.error_response.error_message}")
        names = [s.name for s in listed.list_services_response.service]
        names = [n for n in names if n not in _REFLECTION_SERVICES]
        if len(names) > budget.services:
            raise ValueError(f"{len(names)} services, more than {budget.services}")
        out: dict[str, RpcKind] = {}
        seen: set[bytes] = set()
        for name in names:
            if any(path.startswith(f"/{name}/") for path in out):
                continue  # its file came with an earlier service's
            await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol=name))
            answer = await call.read()
            if answer is grpc.aio.EOF:
                raise ValueError("reflection stream ended early")
            budget.spend(answer)
            if answer.HasField("error_response"):
                _LOG.debug("reflection: %s: %s", name, answer.error_response.error_message)
                continue
            files = []
            for raw in answer.file_descriptor_response.file_descriptor_proto:
                if raw in seen:
                    continue
                seen.add(raw)
                files.append(descriptor_pb2.FileDescriptorProto.FromString(raw))
            out.update(kinds_from_files(files))
        await call.done_writing()
        return out
    finally:
        call.cancel()


async def reflect(
    channel: grpc.aio.Channel,
    *,
    timeout: float = 5.0,
    max_services: int = 512,
    max_bytes: int = 8 * 1024 * 1024,
) -> dict[str, RpcKind]:
    """The kinds of every method the server behind ``channel`` offers over server reflection
    (v1, else v1alpha); ``{}`` when it offers neither or fails (logged at debug level)."""
    budget = _Budget(max_services, max_bytes)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for method in REFLECTION_METHODS:
        left = deadline - loop.time()
        if left <= 0:
            break
        try:
            return await asyncio.wait_for(_exchange(channel, method, budget, left), left)
        except grpc.aio.AioRpcError as exc:
            # A server without this service answers UNIMPLEMENTED at once, often before the
            # first request is sent, and grpc.aio then reports INTERNAL ("Internal error from
            # Core") in its place: both mean "try the older service".
            if exc.code() in _NOT_OFFERED:
                continue
            _LOG.debug("reflection via %s failed: %s %s", method, exc.code(), exc.details())
            return {}
        except (ValueError, DecodeError, asyncio.TimeoutError) as exc:
            _LOG.debug("reflection via %s failed: %r", method, exc)
            return {}
    return {}


def merged(tables: Iterable[Mapping[str, RpcKind]]) -> dict[str, RpcKind]:
    """One table from several, the earlier ones winning."""
    out: dict[str, RpcKind] = {}
    for table in reversed(list(tables)):
        out.update(table)
    return out


def _kinds(table: Mapping[str, str]) -> Mapping[str, RpcKind]:
    """A read-only copy of ``table`` with its kind names (``"unary_unary"``...) as ``RpcKind``."""
    return types.MappingProxyType({path: RpcKind(kind) for path, kind in table.items()})


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


ChannelFactory = Callable[[], "grpc.aio.Channel"]
"""Makes a channel to one server (or one cluster) to ask; the learner closes it after."""


class MethodKinds:
    """The kinds the sidecar knows, from descriptor sets and its servers' reflection.

    ``table`` is an immutable snapshot (``/pkg.Svc/M`` -> ``RpcKind``), replaced whole when
    something new is learned, so readers on any thread take it without a lock. Descriptor
    sets win over reflection (the operator's file is the statement of intent). ``learn``
    asks every source given to :meth:`set_sources` once, concurrently; :meth:`run` repeats
    that every ``refresh`` seconds and soon after :meth:`miss` reports a method nobody knew.
    """

    def __init__(
        self,
        *,
        files: Mapping[str, str] | None = None,
        refresh: float = 300.0,
        timeout: float = 5.0,
        on_change: Callable[[Mapping[str, RpcKind]], None] | None = None,
    ) -> None:
        self._files: Mapping[str, RpcKind] = _kinds(files or {})
        self._learned: dict[str, Mapping[str, RpcKind]] = {}
        self._sources: dict[str, ChannelFactory] = {}
        self.refresh = refresh
        self.timeout = timeout
        self._on_change = on_change
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_miss = -math.inf
        self.table: Mapping[str, RpcKind] = self._files
        self.rounds = 0
        """Learning rounds completed."""

    def set_files(self, files: Mapping[str, str]) -> None:
        """New descriptor-set kinds (a reload)."""
        self._files = _kinds(files)
        self._publish()

    def set_sources(self, sources: Mapping[str, ChannelFactory]) -> None:
        """The servers to ask, by name (a cluster, ``app``); forgets what gone ones taught."""
        self._sources = dict(sources)
        for name in list(self._learned):
            if name not in self._sources:
                del self._learned[name]
        self._publish()
        self._wake.set()

    def kind(self, method: str) -> RpcKind | None:
        """The kind of ``method``, ``None`` when no source knows it."""
        return self.table.get(method)

    def miss(self, method: str) -> None:
        """A call for a method no source knew: learn again soon (at most every 30 s). Safe
        from any thread (the Envoy plane's metrics are read on the admin server's)."""
        now = time.monotonic()
        if now - self._last_miss < _MISS_INTERVAL:
            return
        self._last_miss = now
        loop = self._loop
        if loop is None or _running_loop() is loop:
            self._wake.set()
        else:  # an asyncio.Event is not thread-safe: set it on the loop that waits on it
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(self._wake.set)

    async def learn(self) -> None:
        """Ask every source once, concurrently; a failing source keeps what it taught."""
        names = list(self._sources)
        results = await asyncio.gather(
            *(self._ask(self._sources[name]) for name in names), return_exceptions=True
        )
        for name, result in zip(names, results, strict=True):
            if isinstance(result, dict) and result and name in self._sources:
                self._learned[name] = types.MappingProxyType(result)
            elif isinstance(result, BaseException):
                _LOG.debug("method kinds from %s: %r", name, result)
        self.rounds += 1
        self._publish()

    @property
    def wanted(self) -> bool:
        """Whether a new round has been asked for (a miss, new sources) and not begun."""
        return self._wake.is_set()

    async def _ask(self, factory: ChannelFactory) -> dict[str, RpcKind]:
        channel = factory()
        try:
            return await reflect(channel, timeout=self.timeout)
        finally:
            await channel.close()

    async def run(self) -> None:
        """Learn now, then again every ``refresh`` seconds or after a miss; until cancelled."""
        self._loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            await self.learn()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.refresh)

    def _publish(self) -> None:
        table = types.MappingProxyType(merged([self._files, *self._learned.values()]))
        if table != self.table:
            self.table = table
            if self._on_change is not None:
                self._on_change(table)
