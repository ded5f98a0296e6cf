"""Passive outlier ejection: endpoints that keep failing real calls leave rotation for a while.

Pure logic, no I/O, no timers: the channel records each call's status code and asks which
ejections are over (``expired``) and when to ask next (``next_expiry``). Thread-safe, because a
sync channel records results from grpc's threads. The clock is injectable for tests.

Rules (Envoy's "consecutive 5xx" and gRPC A50's success-rate-free subset):

- ``consecutive_failures`` results in a row whose code is in ``failure_codes`` eject the
  endpoint; any other code (OK included) resets the run.
- Ejection lasts ``base_ejection_time * times_ejected``, capped at
  ``max(base_ejection_time, max_ejection_time)``: repeat offenders stay out longer.
- Never more than ``max_ejection_percent`` of the endpoints are ejected at once, strictly: with
  2 endpoints and 50 % one may be ejected, never both; a single endpoint with 50 % is never
  ejected. A refused ejection keeps the failure run, so the next failure tries again.
- ``times_ejected`` decays by one per full ``base_ejection_time`` spent un-ejected (the gRPC
  and Envoy behaviour, where the interval timer decrements it for healthy hosts). Computed
  lazily from the moment the last ejection ended, so no timer is needed.
- Results for an ejected endpoint (calls that were in flight when it was ejected) and for
  unknown keys are ignored.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc

K = TypeVar("K", bound=Hashable)

DEFAULT_FAILURE_CODES: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)


@dataclass(frozen=True)
class OutlierConfig:
    """Outlier-ejection knobs, validated on construction (errors name the field)."""

    consecutive_failures: int = 5
    failure_codes: frozenset[grpc.StatusCode] = DEFAULT_FAILURE_CODES
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: int = 50

    def __post_init__(self) -> None:
        if isinstance(self.consecutive_failures, bool) or self.consecutive_failures < 1:
            raise ValueError("consecutive_failures: must be >= 1")
        codes = frozenset(self.failure_codes)
        if not codes:
            raise ValueError("failure_codes: must not be empty")
        if not all(isinstance(c, grpc.StatusCode) for c in codes):
            raise ValueError("failure_codes: must be grpc.StatusCode values")
        if grpc.StatusCode.OK in codes:
            raise ValueError("failure_codes: OK is not a failure")
        object.__setattr__(self, "failure_codes", codes)
        if not self.base_ejection_time > 0:
            raise ValueError("base_ejection_time: must be > 0")
        if not self.max_ejection_time > 0:
            raise ValueError("max_ejection_time: must be > 0")
        if not 0 <= self.max_ejection_percent <= 100:
            raise ValueError("max_ejection_percent: must be 0..100")

    @property
    def ejection_cap(self) -> float:
        """The longest ejection: gRPC A50's ``max(base, max)``."""
        return max(self.base_ejection_time, self.max_ejection_time)


@dataclass
class _Endpoint:
    failures: int = 0
    times_ejected: int = 0
    ejected_until: float | None = None
    # When times_ejected last changed or its ejection ended: the start of decay.
    decay_from: float = 0.0


class OutlierDetector(Generic[K]):
    """Tracks consecutive failures per endpoint key and ejects the outliers."""

    def __init__(self, config: OutlierConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._endpoints: dict[K, _Endpoint] = {}
        self._ejected = 0
        self._ejections_total = 0

    @property
    def config(self) -> OutlierConfig:
        return self._config

    @property
    def ejections_total(self) -> int:
        """Ejections so far (a counter: never decreases, un-ejections do not count)."""
        return self._ejections_total

    def add(self, key: K) -> None:
        """Track ``key``; a no-op if already tracked (its history is kept)."""
        with self._lock:
            self._endpoints.setdefault(key, _Endpoint(decay_from=self._clock()))

    def remove(self, key: K) -> None:
        """Forget ``key``; a no-op if unknown."""
        with self._lock:
            ep = self._endpoints.pop(key, None)
            if ep is not None and ep.ejected_until is not None:
                self._ejected -= 1

    def update(self, keys: Iterable[K]) -> None:
        """Track exactly ``keys`` (a resolver snapshot): add the new, remove the gone."""
        wanted = set(keys)
        with self._lock:
            now = self._clock()
            for key in list(self._endpoints):
                if key not in wanted and self._endpoints.pop(key).ejected_until is not None:
                    self._ejected -= 1
            for key in wanted:
                self._endpoints.setdefault(key, _Endpoint(decay_from=now))

    def record(self, key: K, code: grpc.StatusCode) -> bool:
        """Count one call result; True when this result ejected ``key``."""
        cfg = self._config
        with self._lock:
            ep = self._endpoints.get(key)
            if ep is None or ep.ejected_until is not None:
                return False
            if code not in cfg.failure_codes:
                ep.failures = 0
                return False
            ep.failures += 1
            if ep.failures < cfg.consecutive_failures:
                return False
            # Strict cap: ejecting one more must keep ejected/total <= max percent.
            if (self._ejected + 1) * 100 > cfg.max_ejection_percent * len(self._endpoints):
                return False
            now = self._clock()
            ep.times_ejected = self._decayed(ep, now) + 1
            duration = min(cfg.base_ejection_time * ep.times_ejected, cfg.ejection_cap)
            ep.ejected_until = now + duration
            ep.failures = 0
            self._ejected += 1
            self._ejections_total += 1
            return True

    def is_ejected(self, key: K) -> bool:
        """Whether ``key`` is ejected now (until ``expired`` un-ejects it)."""
        with self._lock:
            ep = self._endpoints.get(key)
            return ep is not None and ep.ejected_until is not None

    def ejected(self) -> list[K]:
        """Every ejected key."""
        with self._lock:
            return [k for k, ep in self._endpoints.items() if ep.ejected_until is not None]

    def times_ejected(self, key: K) -> int:
        """The ejection multiplier of ``key`` now, decay applied (0 if unknown)."""
        with self._lock:
            ep = self._endpoints.get(key)
            return 0 if ep is None else self._decayed(ep, self._clock())

    def expired(self, now: float | None = None) -> list[K]:
        """Un-eject and return the keys whose ejection is over, earliest first."""
        with self._lock:
            t = self._clock() if now is None else now
            over = sorted(
                (
                    (ep.ejected_until, k)
                    for k, ep in self._endpoints.items()
                    if ep.ejected_until is not None and ep.ejected_until <= t
                ),
                key=lambda item: item[0],
            )
            out: list[K] = []
            for until, key in over:
                ep = self._endpoints[key]
                # Decay counts from the end of the ejection, not from when it was noticed.
                ep.decay_from = until
                ep.ejected_until = None
                ep.failures = 0
                self._ejected -= 1
                out.append(key)
            return out

    def next_expiry(self) -> float | None:
        """The clock time the earliest ejection ends, or None if nothing is ejected."""
        with self._lock:
            ends = [
                ep.ejected_until for ep in self._endpoints.values() if ep.ejected_until is not None
            ]
            return min(ends) if ends else None

    def _decayed(self, ep: _Endpoint, now: float) -> int:
        if ep.ejected_until is not None or ep.times_ejected == 0:
            return ep.times_ejected
        # max(0, ...): a caller may pass expired() a time ahead of our clock; the count
        # must not grow from it.
        intervals = max(0, int((now - ep.decay_from) // self._config.base_ejection_time))
        return max(0, ep.times_ejected - intervals)
