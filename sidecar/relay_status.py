"""The upstream's own final status of a relayed call, kept safe from grpc.aio's overwrite.

When the upstream ends a call while the relay is still sending it request messages (an
unknown method answered trailers-only with ``UNIMPLEMENTED``, a client-streaming server that
answers before reading everything), the pending send fails in grpc-core. grpcio's
``grpc/aio/_call.py`` (``_StreamRequestMixin._write``) then calls
``_AioCall.set_internal_error``, which *replaces* the call's status with
``INTERNAL "Internal error from Core"``, also when the real status had already arrived. Every
later ``read()``, ``await call``, ``code()`` or ``trailing_metadata()`` sees the replacement, so
a relay would forward ``INTERNAL`` instead of what the upstream said (measured: ~1 call in 6).

Only calls with a streaming request (client-streaming, bidi, and unhinted unary calls, which
the relay forwards as bidi) are exposed: unary-request calls send their one message in the
same grpc-core batch that receives the status.

Two orders happen, and :class:`StatusGuard` handles both with public ``grpc.aio`` API:

- the real status first, the replacement second: grpc.aio runs a call's done callbacks once,
  synchronously inside the first status assignment, so a done callback reading the status
  right then (``code()``/``details()``/``trailing_metadata()`` complete without suspending once
  the status is set) keeps the real one;
- the replacement first (the send failed before grpc-core delivered the status, e.g. while a
  reply the upstream sent is still unread): the done callback sees the replacement and keeps
  nothing. The status operation still pending in grpc-core overwrites the replacement with
  the real status once the response side is consumed to its end, which is why the relay reads
  a streamed response with the call's async iterator (it reads on to the end of the stream
  where ``read()`` stops at the replacement). For a stream-unary call ``await call`` returns
  only after the real status; for a bidi call the relay reads the call's status again until
  it changes, for at most :data:`REAL_STATUS_WAIT` (grpc-core delivers it within
  milliseconds; the bound only keeps a call from hanging should it never come).

The replacement is recognised by its code, its details and its debug string (grpc.aio's
``'Failed "execute_batch"'`` text, which no status received from a peer carries), so an
upstream that itself answers ``INTERNAL`` is forwarded unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import grpc

__all__ = ["REAL_STATUS_WAIT", "StatusGuard", "is_send_failure"]

_T = TypeVar("_T")

#: What grpc.aio writes over the status when a send fails (``_AioCall.set_internal_error``).
_REPLACEMENT_DETAILS = "Internal error from Core"
#: How grpc.aio's failed-batch errors begin (``CallbackFailureHandler``/``execute_batch``).
_BATCH_FAILURE = ('Failed "execute_batch"', "Failed grpc_call_start_batch")

#: Upper bound (seconds) on waiting for the real status of a bidi call whose send failed
#: before the status arrived. grpc-core delivers it within milliseconds; the bound only keeps
#: a call from hanging should it never come (the replacement is forwarded then).
REAL_STATUS_WAIT = 1.0
_POLL = 0.002


def is_send_failure(code: grpc.StatusCode | None, details: str | None, debug: str | None) -> bool:
    """Whether a status is grpc.aio's replacement for a failed send, not a peer's status."""
    return (
        code is grpc.StatusCode.INTERNAL
        and details == _REPLACEMENT_DETAILS
        and (debug or "").startswith(_BATCH_FAILURE)
    )


def _settled(coroutine: Coroutine[Any, Any, _T]) -> _T | None:
    """The result of ``coroutine`` if it completes without suspending, else ``None``.

    A ``grpc.aio`` call's status accessors complete at once when the status is set; this reads
    them synchronously inside a done callback, before anything can overwrite the status.
    """
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coroutine.close()
    return None


class StatusGuard:
    """Keeps the first real status of one upstream call (see the module docstring).

    Attach it as soon as the call is created; then pass every ``AioRpcError`` the call raises
    through :meth:`resolve` and read its trailers through :meth:`trailing_metadata`. The
    guard keeps no reference to the call (the call's done callback references the guard).
    """

    __slots__ = ("_code", "_details", "_trailing")

    def __init__(self, call: Any) -> None:
        """Register on ``call`` (a ``grpc.aio`` call with a streaming request)."""
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: tuple[tuple[str, str | bytes], ...] = ()
        call.add_done_callback(self._capture)

    def _capture(self, call: Any) -> None:
        code = _settled(call.code())
        details = _settled(call.details())
        if code is None or is_send_failure(code, details, _settled(call.debug_error_string())):
            return  # the real status is still to come and will overwrite the replacement
        trailing = _settled(call.trailing_metadata())
        self._code = code
        self._details = details or ""
        self._trailing = tuple(trailing) if trailing else ()

    @property
    def code(self) -> grpc.StatusCode | None:
        """The upstream's status code once known (``None`` before)."""
        return self._code

    async def resolve(self, call: Any, error: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError | None:
        """``error`` (raised by ``call``) as the upstream sent it; ``None`` when the upstream in
        fact ended OK."""
        if not is_send_failure(error.code(), error.details(), error.debug_error_string()):
            return error
        if self._code is None:
            await self._await_real_status(call)
        if self._code is None:
            return error  # never came: nothing better to say than grpc's own error
        if self._code is grpc.StatusCode.OK:
            return None
        return grpc.aio.AioRpcError(
            self._code,
            error.initial_metadata(),
            grpc.aio.Metadata(*self._trailing),
            self._details,
            "upstream status (a concurrent send failure was ignored)",
        )

    async def trailing_metadata(self, call: Any) -> tuple[tuple[str, str | bytes], ...]:
        """The upstream's trailing metadata (``call`` must have ended)."""
        if self._code is not None:
            return self._trailing
        trailing = await call.trailing_metadata()
        return tuple(trailing) if trailing else ()

    async def _await_real_status(self, call: Any) -> None:
        # The replacement came first: the real status overwrites it when grpc-core delivers it,
        # without running done callbacks again, so the call's status is read until it changes.
        loop = asyncio.get_running_loop()
        give_up = loop.time() + REAL_STATUS_WAIT
        while loop.time() < give_up:
            code = await call.code()
            details = await call.details()
            if not is_send_failure(code, details, await call.debug_error_string()):
                trailing = await call.trailing_metadata()
                self._code, self._details = code, details or ""
                self._trailing = tuple(trailing) if trailing else ()
                return
            await asyncio.sleep(_POLL)
