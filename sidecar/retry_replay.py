"""Retries of the Python plane's relay: the request replay buffer and the waits between
attempts, under the cluster's ``balancers.RetryPolicy``.

A retry is safe only when the upstream answered nothing (:class:`AttemptFailed` says whether it
did) and every request message consumed so far can be sent again (:class:`RequestReplay` keeps
the copy, up to ``RetryPolicy.max_buffer_bytes``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from balancers import RetryPolicy
from sidecar.proxy_telemetry import CallStats

__all__ = ["AttemptFailed", "RequestReplay", "attempt_timeout", "retry_wait"]

# The proxy's logger: the relay's lines keep one name whichever module writes them.
_LOG = logging.getLogger("sidecar.proxy")


class RequestReplay:
    """Feeds the downstream request stream to successive attempts, keeping a copy for replay.

    Only one ``context.read()`` is ever outstanding: when an attempt is abandoned while its
    request pump is inside a read, the next attempt's generator waits for that read, whose
    message the abandoned generator hands over through the buffer. Once the copy grows past
    ``cap`` it is dropped and ``replayable`` turns false for the rest of the call.
    """

    __slots__ = (
        "_cap",
        "_context",
        "_reading",
        "_size",
        "_stats",
        "_waiters",
        "attempt",
        "buffer",
        "eof",
    )

    def __init__(
        self, context: grpc.aio.ServicerContext, cap: int, stats: CallStats | None = None
    ) -> None:
        self._context = context
        self._stats = stats
        self._cap = cap
        self._size = 0
        self._reading = False
        self._waiters: list[asyncio.Future[None]] = []
        self.buffer: list[bytes] | None = []
        self.eof = False
        self.attempt = 0

    @property
    def replayable(self) -> bool:
        return self.buffer is not None

    def next_attempt(self) -> AsyncIterator[bytes]:
        self.attempt += 1
        return self._messages(self.attempt)

    async def _read(self) -> Any:
        self._reading = True
        try:
            return await self._context.read()
        finally:
            self._reading = False
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _messages(self, attempt: int) -> AsyncIterator[bytes]:
        index = 0
        while attempt == self.attempt:
            buffer = self.buffer
            if buffer is not None and index < len(buffer):
                index += 1
                yield buffer[index - 1]
                continue
            if self.eof:
                return
            if self._reading:  # an abandoned attempt's pump owns the read: wait for it
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                await waiter
                continue
            message = await self._read()
            if message is grpc.aio.EOF:
                self.eof = True
                return
            if self._stats is not None:
                self._stats.requests += 1
            if self.buffer is not None:
                self.buffer.append(message)
                self._size += len(message)
                index += 1
                if attempt == self.attempt and self._size > self._cap:
                    self.buffer = None  # too long to replay: commit to this attempt
            if attempt != self.attempt:
                return  # abandoned meanwhile: the message went to the buffer for the next one
            yield message


class AttemptFailed(Exception):
    """An attempt's failure, with whether the upstream had answered anything."""

    def __init__(self, error: grpc.aio.AioRpcError, answered: bool) -> None:
        super().__init__(error.code())
        self.error = error
        self.answered = answered


async def retry_wait(
    policy: RetryPolicy | None,
    cluster: str,
    attempt: int,
    failure: AttemptFailed,
    deadline: float | None,
) -> bool:
    """Sleep the backoff and return True if attempt ``attempt + 1`` to ``cluster`` may start:
    the failure is retryable by ``policy``, attempts are left and the deadline has room."""
    if policy is None or not policy.should_retry(failure.error.code(), failure.answered, attempt):
        return False
    delay = policy.backoff(attempt)
    if deadline is not None and asyncio.get_running_loop().time() + delay >= deadline:
        return False
    _LOG.debug("retrying on %s after %s (attempt %d)", cluster, failure, attempt + 1)
    await asyncio.sleep(delay)
    return True


def attempt_timeout(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (loop time), ``None`` for none."""
    if deadline is None:
        return None
    return deadline - asyncio.get_running_loop().time()
