"""The access log: one JSON line per call, opt-in (``telemetry.access_log``).

Both data planes write the same fields (:data:`FIELDS`), so a log pipeline does not care
which plane runs:

- ``time``: when the call started, UTC, ``2026-01-31T12:00:00.123Z``;
- ``direction``: ``inbound`` (a peer called this pod) or ``outbound`` (the app called out);
- ``method``: the gRPC path, ``/pkg.Service/Method``;
- ``grpc_status``: the final status code's name (``OK``, ``PERMISSION_DENIED``...);
- ``duration_ms``: from the call's start to its end, whole milliseconds;
- ``upstream_host``: ``host:port`` the call was forwarded to, ``null`` when it was not
  forwarded (refused, no route) or, on the Python plane's outbound side, where the balanced
  channel's pick is not visible to the relay;
- ``request_bytes`` / ``response_bytes``: gRPC message bytes each way as framed on the wire
  (5-byte prefix per message); the Python plane counts messages uncompressed;
- ``peer``: the caller's address, ``host:port`` (``[v6]:port``).

Health calls that the inbound listener answers itself (``grpc.health.v1``, kubelet probes)
are not logged on either plane: one line every probe period would bury the calls.

Envoy writes the lines itself (an HCM ``access_log`` with a ``json_format``, see
:mod:`sidecar.envoy._translate_listeners`); on the Python plane :class:`AccessLogHandler`
wraps a listener's forwarding handler. Each line is one ``write`` on a file opened
``O_APPEND`` (``path: "-"`` is the process's standard output), so lines of concurrent
writers (workers, Envoy) never interleave. A write blocks the event loop for the time of
one ``write(2)``: a reader that stops draining a stdout pipe stalls the relay.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc

from sidecar.authz import wrap_behavior
from sidecar.proxy_telemetry import call_end_code

__all__ = [
    "FIELDS",
    "STDOUT",
    "AccessLog",
    "AccessLogHandler",
    "format_peer",
    "format_time",
]

#: The fields of every line, in order.
FIELDS = (
    "time",
    "direction",
    "method",
    "grpc_status",
    "duration_ms",
    "upstream_host",
    "request_bytes",
    "response_bytes",
    "peer",
)
#: ``path`` value meaning standard output.
STDOUT = "-"
_FRAME = 5  # gRPC's length prefix per message: the compressed flag and a 32-bit length
_CACHE_SIZE = 4096


def format_time(epoch: float) -> str:
    """``epoch`` as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (UTC)."""
    moment = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def format_peer(peer: str) -> str:
    """grpc's ``context.peer()`` (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``) as ``host:port``."""
    scheme, sep, rest = peer.partition(":")
    if sep and scheme in ("ipv4", "ipv6"):
        return rest
    return peer


class AccessLog:
    """Where the lines go: standard output (``"-"``) or a file appended to."""

    def __init__(self, path: str) -> None:
        """Open ``path`` (created when missing); ``OSError`` when it cannot be."""
        self.path = path
        if path == STDOUT:
            self._fd = 1
            self._owned = False
        else:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            self._owned = True

    def write(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` as one JSON line (one ``write``: lines never interleave)."""
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            pass  # a full disk or a closed stdout must not fail the call being logged

    def close(self) -> None:
        """Close the file (standard output stays open)."""
        if self._owned and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _CountingContext:
    """The call's context, counting the message bytes read and written through it."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._context = context
        self.received = 0
        self.sent = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def read(self) -> Any:
        message = await self._context.read()
        if isinstance(message, bytes):
            self.received += len(message) + _FRAME
        return message

    async def write(self, message: Any) -> None:
        if isinstance(message, bytes):
            self.sent += len(message) + _FRAME
        await self._context.write(message)


async def _counted(requests: AsyncIterator[Any], counts: _CountingContext) -> AsyncIterator[Any]:
    async for message in requests:
        if isinstance(message, bytes):
            counts.received += len(message) + _FRAME
        yield message


def _logged(
    behavior: Callable[..., Awaitable[Any]],
    streaming_request: bool,
    log: AccessLog,
    direction: str,
    method: str,
    upstream_host: str | None,
) -> Any:
    async def logged(request: Any, context: grpc.aio.ServicerContext) -> Any:
        wall = time.time()
        started = time.monotonic()
        counts = _CountingContext(context)
        if streaming_request:
            request = _counted(request, counts)
        error: BaseException | None = None
        try:
            result = await behavior(request, counts)
            if isinstance(result, bytes):
                counts.sent += len(result) + _FRAME
            return result
        except BaseException as exc:
            error = exc
            raise
        finally:
            code = call_end_code(context, error)
            forwarded = code is grpc.StatusCode.OK or counts.received or counts.sent
            log.write(
                {
                    "time": format_time(wall),
                    "direction": direction,
                    "method": method,
                    "grpc_status": code.name,
                    "duration_ms": int((time.monotonic() - started) * 1000),
                    "upstream_host": upstream_host if forwarded else None,
                    "request_bytes": counts.received,
                    "response_bytes": counts.sent,
                    "peer": format_peer(context.peer() or ""),
                }
            )

    return logged


class AccessLogHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    """A generic handler writing one access log line per call ``inner`` serves.

    ``upstream_host(method)`` says where a call to ``method`` is forwarded (``host:port``),
    or ``None`` when that is not known. ``inner``'s behaviors must be coroutine functions
    (:class:`~sidecar.proxy.ProxyHandler`'s are). A call the inner handler refuses before
    reading anything (no route, token, identity) is logged with ``upstream_host`` null.
    """

    def __init__(
        self,
        inner: grpc.GenericRpcHandler,
        log: AccessLog,
        direction: str,
        upstream_host: Callable[[str], str | None] = lambda method: None,
    ) -> None:
        """Keep the parts; nothing is opened."""
        self._inner = inner
        self._log = log
        self._direction = direction
        self._upstream_host = upstream_host
        # per handler ``inner`` returns (it keeps one per method path): the wrapper is built
        # once, not per call
        self._wrapped: dict[tuple[int, str], tuple[Any, grpc.RpcMethodHandler]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        """``inner``'s handler for the call, logged."""
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        key = (id(handler), method)
        cached = self._wrapped.get(key)
        if cached is not None and cached[0] is handler:
            return cached[1]
        log, direction = self._log, self._direction
        upstream = self._upstream_host(method)
        streaming = bool(handler.request_streaming)
        wrapped = wrap_behavior(
            handler,
            lambda behavior: _logged(behavior, streaming, log, direction, method, upstream),
        )
        if len(self._wrapped) >= _CACHE_SIZE:
            self._wrapped.clear()  # method paths come from the network: stay bounded
        self._wrapped[key] = (handler, wrapped)
        return wrapped
