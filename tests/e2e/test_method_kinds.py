"""Method kinds learned by the real sidecar, on both data planes, with no route ``kind`` hints:
from the backend's server reflection or from a descriptor set file, a route hint overriding
both, nothing learned from a server without reflection, a reload adding a descriptor set, and a
kind learned after calls have already been forwarded.

Two observables: the ``grpc_type`` label of the call metrics (``/metrics``), and, on the Python
plane, the forwarding path itself: a request cut short by END_STREAM (see
test_truncated_request.py) to a unary method is refused by the sidecar's unary path with
``INTERNAL`` at once, while the stream path passes it on and the grpcio sync backend answers
``UNIMPLEMENTED``. The backend is grpcio's sync server for that reason.
"""

from __future__ import annotations

import re
import threading
from collections import defaultdict
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2  # type: ignore[import-untyped]
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from tests.e2e.conftest import Sidecar, Sidecars
from tests.e2e.test_truncated_request import INTERNAL, TRUNCATED, UNIMPLEMENTED, call
from tests.support.echo import EchoReply, EchoRequest, EchoStub, aiter_requests, echo_pb2_grpc
from tests.support.echo import echo_pb2 as pb
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

SERVICE = pb.DESCRIPTOR.services_by_name["Echo"].full_name
ECHO = f"/{SERVICE}/"
#: The kinds of the echo service, as reflection and descriptor sets give them.
KINDS = {
    ECHO + "Unary": "unary_unary",
    ECHO + "ServerStream": "unary_stream",
    ECHO + "ClientStream": "stream_unary",
    ECHO + "BidiStream": "stream_stream",
}
#: The ``grpc_type`` label each method gets once its kind is known.
LEARNED_TYPES = {
    "Unary": "unary",
    "ServerStream": "server_stream",
    "ClientStream": "client_stream",
    "BidiStream": "bidi_stream",
}
UNKNOWN_TYPES = dict.fromkeys(LEARNED_TYPES, "bidi_stream")
UNARY_PATH = (INTERNAL, "proxy: the request ended without a complete message")
LEARN_TIMEOUT = 20.0


class SyncEcho(echo_pb2_grpc.EchoServicer):  # type: ignore[misc]
    """The four echo methods on grpcio's sync server (it refuses a unary request with no
    message, which tells the sidecar's stream path from its unary one)."""

    def Unary(self, request: Any, context: grpc.ServicerContext) -> Any:
        return EchoReply(message=request.message, server="sync")

    def ServerStream(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        for i in range(max(request.count, 1)):
            yield EchoReply(message=f"{request.message}#{i}", server="sync")

    def ClientStream(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        return EchoReply(message=",".join(r.message for r in requests), server="sync")

    def BidiStream(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        for request in requests:
            yield EchoReply(message=request.message, server="sync")


class GatedReflection(reflection.ReflectionServicer):  # type: ignore[misc]
    """grpcio's reflection service answering only once ``gate`` is set (bounded wait)."""

    def __init__(self, names: tuple[str, ...], gate: threading.Event) -> None:
        super().__init__(names)
        self.gate = gate

    def ServerReflectionInfo(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        self.gate.wait(LEARN_TIMEOUT)
        yield from super().ServerReflectionInfo(requests, context)


@dataclass
class Backend:
    address: str
    #: Reflection answers once this is set (set from the start unless ``gated``).
    gate: threading.Event


@pytest.fixture
def backends() -> Iterator[Any]:
    """``start(reflect=..., gated=...)`` -> a sync echo server on loopback; all stopped after."""
    servers: list[grpc.Server] = []
    gates: list[threading.Event] = []

    def start(*, reflect: bool, gated: bool = False) -> Backend:
        server = grpc.server(futures.ThreadPoolExecutor(8))
        echo_pb2_grpc.add_EchoServicer_to_server(SyncEcho(), server)
        gate = threading.Event()
        gates.append(gate)
        if not gated:
            gate.set()
        if reflect:
            servicer = GatedReflection((SERVICE, reflection.SERVICE_NAME), gate)
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return Backend(f"127.0.0.1:{port}", gate)

    yield start
    for gate in gates:
        gate.set()  # no handler thread left waiting
    for server in servers:
        server.stop(None)


def config(backend: Backend, *, routes: list[dict[str, Any]] | None = None, **extra: Any) -> Any:
    return {
        "outbound": {
            "listen": "127.0.0.1:0",
            "routes": [*(routes or []), {"prefix": "/", "cluster": "echo"}],
        },
        "inbound": {
            "listen": "127.0.0.1:0",
            "app": backend.address,
            "app_health": {"enabled": False},
        },
        "clusters": {"echo": {"target": f"static:///{backend.address}"}},
        "log_level": "debug",  # the learner's reasons, in the log a failure prints
        **extra,
    }


def descriptor_set(path: Path) -> str:
    files = descriptor_pb2.FileDescriptorSet()
    pb.DESCRIPTOR.CopyToProto(files.file.add())
    path.write_bytes(files.SerializeToString())
    return str(path)


async def learned(sidecar: Sidecar) -> dict[str, Any]:
    """What the sidecar's admin ``/config`` says it has learned."""
    document = await sidecar.get_json("/config")
    result: dict[str, Any] = document["method_kinds_learned"]
    return result


async def wait_learned(sidecar: Sidecar, methods: dict[str, str]) -> None:
    last: list[Any] = []

    async def done() -> bool:
        last[:] = [await learned(sidecar)]
        return bool(last[0]["rounds"] >= 1 and last[0]["methods"] == methods)

    try:
        await wait_until(done, LEARN_TIMEOUT, 0.05, f"learned {methods}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen {last}:\n{sidecar.log}") from None


async def call_every_kind(address: str) -> None:
    """One call of each kind through ``address``; each must work."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = EchoStub(channel)
        assert (await stub.Unary(EchoRequest(message="u"), timeout=10)).message == "u"
        streamed = stub.ServerStream(EchoRequest(message="s", count=2), timeout=10)
        assert [r.message async for r in streamed] == ["s#0", "s#1"]
        reply = await stub.ClientStream(aiter_requests("a", "b"), timeout=10)
        assert reply.message == "a,b"
        bidi = stub.BidiStream(timeout=10)
        await bidi.write(EchoRequest(message="x"))
        assert (await bidi.read()).message == "x"
        await bidi.done_writing()
        assert await bidi.read() is grpc.aio.EOF
        assert await bidi.code() is grpc.StatusCode.OK


_LABELS = re.compile(r'(\w+)="([^"]*)"')


async def grpc_types(sidecar: Sidecar, direction: str) -> dict[str, set[str]]:
    """``grpc_type`` labels of the echo methods' handled calls in ``/metrics``, by method."""
    status, page = await sidecar.get("/metrics")
    assert status == 200
    found: dict[str, set[str]] = defaultdict(set)
    for line in page.splitlines():
        if not line.startswith("grpc_server_handled_total{"):
            continue
        labels = dict(_LABELS.findall(line.partition("}")[0]))
        if labels.get("grpc_service") != SERVICE:
            continue
        if labels.get("direction", direction) == direction:
            found[labels["grpc_method"]].add(labels["grpc_type"])
    return found


async def wait_types(
    sidecar: Sidecar,
    expected: dict[str, str],
    directions: tuple[str, ...] = ("outbound", "inbound"),
) -> None:
    """Until, in ``directions``, every method was counted with its ``expected`` type."""

    async def seen() -> bool:
        for direction in directions:
            types = await grpc_types(sidecar, direction)
            if any(expected[m] not in types.get(m, set()) for m in expected):
                return False
        return True

    await wait_until(seen, LEARN_TIMEOUT, 0.1, f"grpc_type labels {expected}")


async def traffic(sidecar: Sidecar) -> None:
    await call_every_kind(sidecar.outbound)
    await call_every_kind(sidecar.inbound)


async def truncated_unary(sidecar: Sidecar, address: str) -> tuple[int | None, str]:
    answer = await call(address, "Unary", TRUNCATED)
    assert answer.ended, answer
    return answer.status, answer.message


async def assert_path(sidecars: Sidecars, sidecar: Sidecar, unary: bool) -> None:
    """The Python plane forwarded ``/Unary`` on its unary path (``unary``) or its stream path,
    both ways; Envoy always passes the bytes on."""
    for address in (sidecar.outbound, sidecar.inbound):
        status, message = await truncated_unary(sidecar, address)
        if unary and sidecars.plane == "python":
            assert (status, message) == UNARY_PATH
        else:
            assert status == UNIMPLEMENTED, (status, message)
            assert "requires exactly one request message" in message


async def test_reflection_teaches_every_kind(sidecars: Sidecars, backends: Any) -> None:
    sidecar = await sidecars.start(config(backends(reflect=True)))
    await wait_learned(sidecar, KINDS)
    await traffic(sidecar)
    await wait_types(sidecar, LEARNED_TYPES)
    for direction in ("outbound", "inbound"):  # no call went before the kinds were known
        types = await grpc_types(sidecar, direction)
        assert {m: t for m, t in types.items() if m in LEARNED_TYPES} == {
            m: {t} for m, t in LEARNED_TYPES.items()
        }, (direction, types)
    await assert_path(sidecars, sidecar, unary=True)


async def test_descriptor_set_teaches_without_reflection(
    sidecars: Sidecars, backends: Any, tmp_path: Path
) -> None:
    files = {"reflection": False, "descriptor_sets": [descriptor_set(tmp_path / "echo.pb")]}
    sidecar = await sidecars.start(config(backends(reflect=False), method_kinds=files))
    await wait_learned(sidecar, KINDS)
    await traffic(sidecar)
    await wait_types(sidecar, LEARNED_TYPES)
    await assert_path(sidecars, sidecar, unary=True)


async def test_a_route_kind_overrides_what_is_learned(sidecars: Sidecars, backends: Any) -> None:
    hint = {"prefix": ECHO + "Unary", "cluster": "echo", "kind": "stream_stream"}
    sidecar = await sidecars.start(config(backends(reflect=True), routes=[hint]))
    await wait_learned(sidecar, KINDS)
    await call_every_kind(sidecar.outbound)
    await wait_types(sidecar, {**LEARNED_TYPES, "Unary": "bidi_stream"}, ("outbound",))
    outbound = await grpc_types(sidecar, "outbound")
    assert outbound["Unary"] == {"bidi_stream"} and outbound["ServerStream"] == {"server_stream"}
    status, message = await truncated_unary(sidecar, sidecar.outbound)
    assert status == UNIMPLEMENTED, (status, message)  # the stream path, as hinted


async def test_a_server_without_reflection_leaves_bidi_stream(
    sidecars: Sidecars, backends: Any
) -> None:
    sidecar = await sidecars.start(config(backends(reflect=False)))
    await wait_learned(sidecar, {})  # a round completed, nothing learned
    await traffic(sidecar)
    await wait_types(sidecar, UNKNOWN_TYPES)
    assert (await learned(sidecar))["methods"] == {}
    await assert_path(sidecars, sidecar, unary=False)


async def test_a_reload_adding_a_descriptor_set_takes_effect(
    sidecars: Sidecars, backends: Any, tmp_path: Path
) -> None:
    backend = backends(reflect=False)
    first = config(backend, method_kinds={"reflection": False})
    sidecar = await sidecars.start(first)
    await wait_learned(sidecar, {})
    await traffic(sidecar)
    await wait_types(sidecar, UNKNOWN_TYPES)
    await assert_path(sidecars, sidecar, unary=False)

    mark = len(sidecar.log)
    files = {"reflection": False, "descriptor_sets": [descriptor_set(tmp_path / "echo.pb")]}
    sidecar.write_config({**sidecar.config, "method_kinds": files})
    await sidecar.wait_log("config applied", after=mark)
    assert (await learned(sidecar))["methods"] == KINDS
    await traffic(sidecar)
    await wait_types(sidecar, LEARNED_TYPES)
    await assert_path(sidecars, sidecar, unary=True)


async def test_a_kind_learned_after_calls_applies_without_a_reload(
    sidecars: Sidecars, backends: Any
) -> None:
    """Calls forwarded while reflection has not answered yet take the stream path; once it
    has, the next calls take the learned one (no reload, same connections)."""
    backend = backends(reflect=True, gated=True)
    sidecar = await sidecars.start(config(backend, method_kinds={"timeout": "30s"}))
    await traffic(sidecar)
    await assert_path(sidecars, sidecar, unary=False)
    assert (await learned(sidecar))["methods"] == {}
    backend.gate.set()
    await wait_learned(sidecar, KINDS)
    await traffic(sidecar)
    await wait_types(sidecar, LEARNED_TYPES)
    await assert_path(sidecars, sidecar, unary=True)
