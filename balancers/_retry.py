"""Retry policy of the balanced channels and of the sidecar's relay (gRFC A6 semantics).

The sidecar's ``retry`` config section builds one (``RetryConfig.policy()``), so the channel,
the config and every data plane share these bounds. On a balanced channel only calls with a
single request message (unary-unary, unary-stream) are retried; calls with a request stream
pass through with one attempt. An attempt is retried only when it failed with one of
``retryable_codes`` before the server answered anything (no response headers, no response
message), and each retry picks again, so it usually lands on another endpoint.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

import grpc


@dataclass(frozen=True)
class RetryPolicy:
    """When and how often a balanced channel or the sidecar's relay retries a failed attempt.

    ``max_attempts`` counts the first attempt (2..5, as gRPC caps it). Before retry ``n``
    (1 for the second attempt) the call sleeps a uniform random time in
    ``[0, min(max_backoff, initial_backoff * backoff_multiplier**(n-1))]`` (full jitter).
    Retries never run past the call's deadline: each attempt gets the remaining time, and a
    backoff that would end after the deadline fails the call with DEADLINE_EXCEEDED.

    ``max_buffer_bytes`` caps the copy of a request stream the sidecar's relay keeps for
    replay (a client-streaming call longer than that is not retried); balanced channels never
    retry request streams, so they do not read it.
    """

    MIN_ATTEMPTS: ClassVar[int] = 2
    MAX_ATTEMPTS: ClassVar[int] = 5
    #: 100 is already absurd; far larger overflows the backoff arithmetic.
    MAX_MULTIPLIER: ClassVar[float] = 100.0

    max_attempts: int = 3
    retryable_codes: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE})
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    backoff_multiplier: float = 2.0
    max_buffer_bytes: int = 256 * 1024

    def __post_init__(self) -> None:
        """Validate; every error names the field."""
        attempts = self.max_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int):
            raise ValueError(f"max_attempts: must be an int, got {attempts!r}")
        if not self.MIN_ATTEMPTS <= attempts <= self.MAX_ATTEMPTS:
            raise ValueError(
                f"max_attempts: must be in {self.MIN_ATTEMPTS}..{self.MAX_ATTEMPTS}, got {attempts}"
            )
        codes = frozenset(self.retryable_codes)
        if not codes:
            raise ValueError("retryable_codes: must name at least one status code")
        for code in codes:
            if not isinstance(code, grpc.StatusCode):
                raise ValueError(f"retryable_codes: {code!r} is not a grpc.StatusCode")
            if code is grpc.StatusCode.OK:
                raise ValueError("retryable_codes: OK is not a failure")
        object.__setattr__(self, "retryable_codes", codes)
        for name in ("initial_backoff", "max_backoff", "backoff_multiplier"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise ValueError(f"{name}: must be a number, got {value!r}")
        if self.initial_backoff < 0:
            raise ValueError(f"initial_backoff: must be >= 0, got {self.initial_backoff}")
        if self.max_backoff < self.initial_backoff:
            raise ValueError(
                f"max_backoff: must be >= initial_backoff ({self.initial_backoff}), "
                f"got {self.max_backoff}"
            )
        if not 0 < self.backoff_multiplier <= self.MAX_MULTIPLIER:
            raise ValueError(
                f"backoff_multiplier: must be in (0, {self.MAX_MULTIPLIER:g}], "
                f"got {self.backoff_multiplier}"
            )
        size = self.max_buffer_bytes
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"max_buffer_bytes: must be an int >= 0, got {size!r}")

    def backoff_ceiling(self, retry: int) -> float:
        """The longest backoff before retry number ``retry`` (1 for the second attempt)."""
        if self.initial_backoff == 0:
            return 0.0
        try:
            growth = self.backoff_multiplier ** (retry - 1)
        except OverflowError:
            return self.max_backoff
        return min(self.max_backoff, self.initial_backoff * growth)

    def backoff(self, retry: int) -> float:
        """Seconds to sleep before retry number ``retry``: uniform in ``[0, ceiling]``."""
        return random.uniform(0.0, self.backoff_ceiling(retry))

    def should_retry(self, code: grpc.StatusCode, answered: bool, attempt: int) -> bool:
        """Whether attempt number ``attempt`` (1-based), failed with ``code``, may be retried."""
        return not answered and attempt < self.max_attempts and code in self.retryable_codes


def deadline_details(code: grpc.StatusCode, details: str | None) -> str:
    """DEADLINE_EXCEEDED details for a call whose deadline fell during a retry backoff."""
    return f"deadline exceeded while backing off to retry (last attempt: {code.name}: {details})"
