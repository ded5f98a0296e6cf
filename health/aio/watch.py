"""Client-side health checking of a ``grpc.aio`` channel (twin of ``health.watch``, where the
rules are explained)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2

from health.watch import (
    WATCH_METHOD,
    Backoff,
    OnChange,
    WatchState,
    emit,
    log_disabled,
    watch_request,
)


async def watch_health(
    channel: grpc.aio.Channel,
    service: str,
    on_change: OnChange,
    *,
    initial_backoff: float = 1.0,
    max_backoff: float = 120.0,
    multiplier: float = 1.6,
    jitter: float = 0.2,
    label: str = "",
    rng: Callable[[], float] = random.random,
) -> None:
    """Watch ``service``'s health over ``channel`` until cancelled (or DISABLED).

    ``label`` names the endpoint in logs. Cancellation cancels the open stream and propagates.
    """
    state = WatchState(Backoff(initial_backoff, max_backoff, multiplier, jitter, rng))
    method = channel.unary_stream(
        WATCH_METHOD,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    request = watch_request(service)
    while True:
        state.stream_started()
        call = method(request)
        try:
            async for response in call:
                emit(on_change, state.on_message(response.status))
            code, details = await call.code(), await call.details()
        except grpc.aio.AioRpcError as err:
            code, details = err.code(), err.details() or ""
        finally:
            call.cancel()  # a no-op once finished; frees the stream if we were cancelled
        transition, delay = state.on_stream_end(code, details)
        emit(on_change, transition)
        if delay is None:
            log_disabled(label, service)
            return
        if delay > 0:
            await asyncio.sleep(delay)
