"""A gRPC request whose last message is cut short by END_STREAM, through the real sidecar on
both data planes, sent by a raw HTTP/2 client (``h2``) since no gRPC client can send one.

The request: HEADERS, then one DATA frame holding a gRPC length prefix that announces 100
bytes followed by only 10, with END_STREAM. grpc-core (in the Python plane's listener, and in
every grpcio backend) drops such a partial message without an error: the call looks like a
request stream that ended with no message. So:

- a unary-request method must be answered at once with a non-OK status: by the sidecar itself
  on the Python plane when the route declares the method's kind, else by the backend. A grpcio
  *sync* backend does (UNIMPLEMENTED, "requires exactly one request message"); a grpc.aio
  backend never answers (its unary handlers return without a status when no message came);
- a client-streaming method gets the messages before the cut, and nothing tells it that one
  was lost.

The last two are grpcio's, not the sidecar's: the ``grpcio_gap`` tests pin them.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import pytest_asyncio

from tests.e2e.conftest import Sidecars
from tests.support.echo import EchoReply, EchoRequest, echo_pb2_grpc, start_echo_server

h2_connection = pytest.importorskip("h2.connection")
h2_config = pytest.importorskip("h2.config")
h2_events = pytest.importorskip("h2.events")

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

ECHO = "/meshkit.test.Echo/"
#: How soon the answer must come (the issue saw none within 5 s).
AT_ONCE = 1.0
INTERNAL, UNIMPLEMENTED = grpc.StatusCode.INTERNAL.value[0], grpc.StatusCode.UNIMPLEMENTED.value[0]


def grpc_frame(message: bytes, announced: int | None = None) -> bytes:
    """``message`` with its gRPC prefix; ``announced`` lies about the length."""
    length = len(message) if announced is None else announced
    return b"\x00" + struct.pack(">I", length) + message


TRUNCATED = grpc_frame(b"\x0a" * 10, announced=100)


@dataclass
class Answer:
    """What the raw client saw of one call."""

    elapsed: float = 0.0
    ended: bool = False
    reset: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    trailers: dict[str, str] = field(default_factory=dict)
    data: bytes = b""

    @property
    def status(self) -> int | None:
        """grpc-status, from the trailers or a trailers-only answer."""
        value = self.trailers.get("grpc-status", self.headers.get("grpc-status"))
        return None if value is None else int(value)

    @property
    def message(self) -> str:
        return self.trailers.get("grpc-message", self.headers.get("grpc-message", ""))


def raw_call(address: str, path: str, body: bytes, wait: float) -> Answer:
    """POST ``body`` (already gRPC-framed) then END_STREAM; read for at most ``wait`` seconds."""
    host, port = address.rsplit(":", 1)
    conn = h2_connection.H2Connection(
        h2_config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    answer = Answer()
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        conn.send_headers(
            stream,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", address),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        conn.send_data(stream, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        started = time.monotonic()
        deadline = started + wait
        while not answer.ended and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            for event in conn.receive_data(chunk):
                _record(conn, event, answer)
            sock.sendall(conn.data_to_send())
        answer.elapsed = time.monotonic() - started
    return answer


def _record(conn: Any, event: Any, answer: Answer) -> None:
    if isinstance(event, h2_events.ResponseReceived):
        answer.headers = dict(event.headers)
    elif isinstance(event, h2_events.TrailersReceived):
        answer.trailers = dict(event.headers)
    elif isinstance(event, h2_events.DataReceived):
        answer.data += event.data
        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
    elif isinstance(event, h2_events.StreamReset):
        answer.reset, answer.ended = event.error_code, True
    elif isinstance(event, h2_events.StreamEnded | h2_events.ConnectionTerminated):
        answer.ended = True


async def call(address: str, method: str, body: bytes, wait: float = AT_ONCE) -> Answer:
    return await asyncio.to_thread(raw_call, address, ECHO + method, body, wait)


class SyncEcho(echo_pb2_grpc.EchoServicer):  # type: ignore[misc]
    """The echo service on grpcio's sync server, which answers a request with no message."""

    def Unary(self, request: Any, context: grpc.ServicerContext) -> Any:
        return EchoReply(message=request.message, server="sync")

    def ServerStream(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        yield EchoReply(message=request.message, server="sync")

    def ClientStream(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        return EchoReply(message=",".join(r.message for r in requests), server="sync")


@pytest.fixture
def sync_backend() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(4))
    echo_pb2_grpc.add_EchoServicer_to_server(SyncEcho(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


def config(backend: str, hinted: bool) -> dict[str, Any]:
    routes: list[dict[str, Any]] = [{"prefix": "/", "cluster": "echo"}]
    if hinted:
        routes[:0] = [
            {"prefix": ECHO + "Unary", "cluster": "echo", "kind": "unary_unary"},
            {"prefix": ECHO + "ServerStream", "cluster": "echo", "kind": "unary_stream"},
        ]
    return {
        "outbound": {"listen": "127.0.0.1:0", "routes": routes},
        "clusters": {"echo": {"target": f"static:///{backend}"}},
    }


@pytest_asyncio.fixture
async def aio_backend() -> AsyncIterator[str]:
    server = await start_echo_server("aio")
    yield server.address
    await server.stop(None)


def well_formed(message: str) -> bytes:
    return grpc_frame(EchoRequest(message=message).SerializeToString())


@pytest.mark.parametrize("hinted", [True, False], ids=["kind-hints", "no-hints"])
async def test_truncated_unary_request_is_answered_at_once(
    sidecars: Sidecars, sync_backend: str, hinted: bool
) -> None:
    sidecar = await sidecars.start(config(sync_backend, hinted))
    # The raw client itself is sound: a whole message gets its reply.
    whole = await call(sidecar.outbound, "Unary", well_formed("hi"))
    assert whole.status == 0, whole
    assert EchoReply.FromString(whole.data[5:]).message == "hi"

    for method in ("Unary", "ServerStream"):
        answer = await call(sidecar.outbound, method, TRUNCATED)
        assert answer.ended, f"{method}: no answer within {AT_ONCE}s: {answer}"
        assert answer.reset is None, answer
        assert answer.elapsed < AT_ONCE
        if hinted and sidecars.plane == "python":
            # The Python plane reads a hinted unary request itself and refuses it.
            assert (answer.status, answer.message) == (
                INTERNAL,
                "proxy: the request ended without a complete message",
            ), answer
        else:
            # Forwarded as it came (Envoy passes the bytes through, and the Python plane's
            # stream relay passes the empty request stream on): the backend refuses it.
            assert answer.status == UNIMPLEMENTED, answer
            assert "requires exactly one request message" in answer.message


# -- where grpcio falls short (the sidecar only forwards): these pin today's behaviour and
# fail once grpcio changes it, so that this file and the sidecar's docs can be updated.


async def test_grpcio_gap_an_aio_backend_never_answers_a_truncated_unary_request(
    sidecars: Sidecars, aio_backend: str
) -> None:
    """grpc.aio's unary handlers send no status when the request stream ends without a
    message (``grpc/_cython/_cygrpc/aio/server.pyx.pxi``, ``_handle_unary_unary_rpc``:
    ``if request_raw is None: return``); the call waits for the client's deadline."""
    sidecar = await sidecars.start(config(aio_backend, hinted=False))
    answer = await call(sidecar.outbound, "Unary", TRUNCATED)
    assert not answer.ended and not answer.headers, answer


async def test_grpcio_gap_a_truncated_last_client_stream_message_is_dropped_silently(
    sidecars: Sidecars, sync_backend: str
) -> None:
    """grpc-core drops a partial message at END_STREAM without an error (``chttp2_transport.cc``,
    ``grpc_chttp2_maybe_complete_recv_message``: deframing pending and ``read_closed``): the
    backend sees the messages before the cut, and the call ends OK."""
    sidecar = await sidecars.start(config(sync_backend, hinted=False))
    answer = await call(
        sidecar.outbound, "ClientStream", well_formed("a") + well_formed("b") + TRUNCATED
    )
    assert answer.ended and answer.elapsed < AT_ONCE, answer
    assert answer.status == 0, answer
    assert EchoReply.FromString(answer.data[5:]).message == "a,b"
