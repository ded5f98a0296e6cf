"""Bearer-token authentication of inbound calls.

Tokens live in a file, one per line; blank lines and lines starting with ``#`` are ignored and
surrounding whitespace is stripped. The file is re-read when it changes (checked by ``stat`` at
most once per ``check_interval`` seconds, so the per-call cost is a clock read and a hash). A
Kubernetes secret rotation (symlink swap) is picked up because ``os.stat`` follows the link.

Comparison is constant time: the presented token and every configured token are reduced to
SHA-256 digests and compared with :func:`hmac.compare_digest` against *all* entries, so neither
the length nor which entry matched leaks through timing.

Two ways to use it:

- :class:`~sidecar.proxy.ProxyHandler` takes ``authenticate=TokenAuth(...).check`` and calls it
  with the call's metadata before routing (no extra interceptor hop on the hot path);
- :func:`token_auth_interceptor` wraps the same check as a ``grpc.aio.ServerInterceptor`` for
  other services on a server. Keep ``grpc.health.v1`` outside it: kubelet probes carry no token.

Failures are ``UNAUTHENTICATED`` with distinct details: a missing/malformed ``authorization``
header versus a token that is not accepted. If the file disappears or cannot be read later the
last good token set stays in force (logged); an empty file rejects everything (fail closed).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence

import grpc

from sidecar.files import file_signature
from sidecar.proxy import Metadata, rejecting_handler

__all__ = [
    "INVALID_TOKEN",
    "MISSING_TOKEN",
    "Metadata",
    "TokenAuth",
    "parse_tokens",
    "token_auth_interceptor",
]

_LOG = logging.getLogger(__name__)

MISSING_TOKEN = "missing bearer token: expected metadata 'authorization: Bearer <token>'"
INVALID_TOKEN = "invalid bearer token"


def parse_tokens(text: str) -> list[str]:
    """Tokens of a token file: one per line, ``#`` comment lines and blank lines skipped."""
    tokens = []
    for line in text.splitlines():
        token = line.strip()
        if token and not token.startswith("#"):
            tokens.append(token)
    return tokens


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


class TokenAuth:
    """Accepts calls whose ``authorization`` metadata is ``Bearer <token>`` for a token in a file.

    ``check(metadata)`` returns ``None`` when the call is authenticated, else the details for an
    ``UNAUTHENTICATED`` status. ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        path: str,
        *,
        check_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Load ``path`` now; raises ``OSError`` if it cannot be read at start-up."""
        self._path = path
        self._interval = check_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._signature = file_signature(path)
        with open(path, encoding="utf-8") as f:
            self._digests: tuple[bytes, ...] = self._digests_of(f.read())
        self._next_check = clock() + check_interval

    @staticmethod
    def _digests_of(text: str) -> tuple[bytes, ...]:
        return tuple(_digest(t.encode("utf-8")) for t in parse_tokens(text))

    @property
    def token_count(self) -> int:
        """How many tokens are currently accepted."""
        return len(self._digests)

    def reload_if_changed(self) -> bool:
        """Re-read the file if its stat signature changed; True when the token set was replaced."""
        with self._lock:
            try:
                signature = file_signature(self._path)
                if signature == self._signature:
                    return False
                with open(self._path, encoding="utf-8") as f:
                    text = f.read()
            except OSError as exc:
                _LOG.warning("token file %s unreadable, keeping old tokens: %s", self._path, exc)
                return False
            self._signature = signature
            self._digests = self._digests_of(text)
            _LOG.info("token file %s reloaded: %d tokens", self._path, len(self._digests))
            return True

    def check(self, metadata: Metadata) -> str | None:
        """``None`` if ``metadata`` carries an accepted bearer token, else the failure details."""
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + self._interval
            self.reload_if_changed()
        presented: str | bytes | None = None
        for key, value in metadata:
            if key == "authorization":
                presented = value
                break
        if not isinstance(presented, str):
            return MISSING_TOKEN
        scheme, _, token = presented.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return MISSING_TOKEN
        try:
            digest = _digest(token.encode("utf-8"))
        except UnicodeEncodeError:
            return INVALID_TOKEN
        ok = False
        for known in self._digests:
            ok |= hmac.compare_digest(digest, known)
        return None if ok else INVALID_TOKEN


class _TokenAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, check: Callable[[Metadata], str | None], skip: frozenset[str]) -> None:
        self._check = check
        self._skip = skip

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        if method.startswith("/") and method.split("/", 2)[1] in self._skip:
            return await continuation(handler_call_details)
        details = self._check(handler_call_details.invocation_metadata or ())
        if details is not None:
            return rejecting_handler(grpc.StatusCode.UNAUTHENTICATED, details)
        return await continuation(handler_call_details)


def token_auth_interceptor(
    check: Callable[[Metadata], str | None],
    *,
    skip_services: Sequence[str] = ("grpc.health.v1.Health",),
) -> grpc.aio.ServerInterceptor:
    """A server interceptor rejecting calls for which ``check(metadata)`` returns details.

    Services named in ``skip_services`` (default: the health service) are not checked.
    """
    return _TokenAuthInterceptor(check, frozenset(skip_services))
