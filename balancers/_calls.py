"""Helpers shared by the aio and sync call paths."""

from __future__ import annotations

from typing import Any

import grpc


def aio_call_code(call: Any) -> grpc.StatusCode:
    """The status code of a *finished* ``grpc.aio`` call, read without awaiting.

    ``Call.code()`` is a coroutine, but on a finished call its status is already there, so
    the coroutine completes on its first step; this avoids a task per call in done hooks.
    """
    if call.cancelled():
        return grpc.StatusCode.CANCELLED
    coro = call.code()
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    except Exception:
        return grpc.StatusCode.UNKNOWN
    coro.close()
    return grpc.StatusCode.UNKNOWN
