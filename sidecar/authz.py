"""Inbound authorization by workload identity: which SPIFFE IDs may call this pod.

A caller's identity is what its *verified* client certificate says: the certificate's URI
SANs that are SPIFFE IDs (``spiffe://<trust-domain>/<path>``). An X.509-SVID carries exactly
one; a certificate with several is allowed when any of them is. DNS SANs and the subject are
never identities here (a DNS name says where a server lives, not which workload calls).
Envoy's RBAC ``authenticated.principal_name`` matches the URI SANs first and then DNS SANs
and the subject, which can never match a ``spiffe://`` matcher, so both data planes decide
alike.

Who is allowed (``inbound.authorization``):

- ``allowed_ids``: exact SPIFFE IDs (``spiffe://cluster.local/ns/prod/sa/web``);
- ``allowed_san_patterns``: globs over SPIFFE IDs, where ``*`` is any run of characters
  inside one path segment and ``**`` any run across segments (``spiffe://td/ns/prod/*/*``
  is every service account of namespace ``prod`` -- ``/sa/web`` included, ``/sa/web/x``
  not; ``spiffe://td/ns/prod/**`` is anything below ``ns/prod``). The trust domain is
  literal: a wildcard there would trust other meshes' CAs' subjects. No other character
  is special; everything else matches itself.

Refused calls end ``PERMISSION_DENIED`` before they reach the app, with details saying why:
:func:`no_identity_details` (the certificate carries no SPIFFE ID) or
:func:`not_allowed_details` (naming the ID). ``grpc.health.v1`` stays reachable without
an allowed identity, so kubelet probes and peers' health checks keep working.

On the Python plane :class:`AuthorizingHandler` wraps the inbound forwarding handler: grpc
matches the health service's registered methods before any generic handler, so health calls
never reach it. The check reads grpc-core's ``peer_uri`` property of the call's auth context
(the URI SANs of the verified peer certificate); no certificate parsing of our own.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import grpc

__all__ = [
    "SPIFFE_SCHEME",
    "AuthorizingHandler",
    "IdentityPolicy",
    "no_identity_details",
    "not_allowed_details",
    "pattern_problem",
    "pattern_regex",
    "peer_identities",
    "spiffe_id_problem",
]

SPIFFE_SCHEME = "spiffe://"
# SPIFFE ID spec: trust domain of lowercase letters, digits, '.', '-', '_'; path segments of
# letters, digits, '.', '-', '_', none empty, none "." or "..".
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")
_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")
_PATTERN_SEGMENT = re.compile(r"^[A-Za-z0-9._*-]+$")
_MAX_ID_CHARS = 2048  # the SPIFFE spec's limit on a SPIFFE ID's length
_CACHE_SIZE = 4096


def _split(text: str) -> tuple[str, list[str]] | str:
    """``(trust_domain, segments)`` of a ``spiffe://`` string, or a problem."""
    if not text.startswith(SPIFFE_SCHEME):
        return f"must start with {SPIFFE_SCHEME!r}"
    if len(text) > _MAX_ID_CHARS:
        return f"longer than {_MAX_ID_CHARS} characters"
    domain, _, path = text[len(SPIFFE_SCHEME) :].partition("/")
    if not _TRUST_DOMAIN.match(domain):
        return "the trust domain must be lowercase letters, digits, '.', '-' or '_'"
    return domain, path.split("/") if path else []


def spiffe_id_problem(text: str) -> str | None:
    """Why ``text`` is not a SPIFFE ID, or ``None`` when it is one."""
    parts = _split(text)
    if isinstance(parts, str):
        return parts
    for segment in parts[1]:
        if not _SEGMENT.match(segment) or segment in (".", ".."):
            return f"bad path segment {segment!r}: letters, digits, '.', '-' or '_', not . or .."
    return None


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a valid SPIFFE ID glob, or ``None`` when it is one."""
    parts = _split(pattern)
    if isinstance(parts, str):
        return parts
    for segment in parts[1]:
        if not _PATTERN_SEGMENT.match(segment) or segment in (".", ".."):
            return (
                f"bad path segment {segment!r}: letters, digits, '.', '-', '_' and the"
                " wildcards * and **"
            )
        if "***" in segment:
            return f"bad path segment {segment!r}: '*' or '**', not '***'"
    return None


def pattern_regex(pattern: str) -> str:
    """The regular expression (RE2 and Python ``re`` alike) an ID must match in full for
    the glob ``pattern`` (assumed valid: see :func:`pattern_problem`)."""
    out = []
    for token in re.split(r"(\*\*|\*)", pattern):
        if token == "**":
            out.append(".*")
        elif token == "*":
            out.append("[^/]*")
        else:
            out.append(re.escape(token))
    return "".join(out)


def no_identity_details() -> str:
    """Details of a call refused because the client certificate names no SPIFFE ID."""
    return "permission denied: the client certificate carries no SPIFFE ID (URI SAN spiffe://...)"


def not_allowed_details(identities: str) -> str:
    """Details of a call refused because its identity (or identities, comma-separated)
    is not allowed."""
    return f"permission denied: {identities} is not allowed by inbound.authorization"


def peer_identities(auth_context: Mapping[str, Iterable[bytes]]) -> tuple[str, ...]:
    """The SPIFFE IDs among the verified peer certificate's URI SANs, in certificate order.

    ``auth_context`` is ``ServicerContext.auth_context()``; grpc-core lists the URI SANs
    under ``peer_uri`` (only for a certificate it verified).
    """
    found = []
    for value in auth_context.get("peer_uri", ()):
        uri = value.decode("utf-8", "replace")
        if uri.startswith(SPIFFE_SCHEME):
            found.append(uri)
    return tuple(found)


class IdentityPolicy:
    """Allowed SPIFFE IDs and globs; :meth:`check` decides a caller.

    ``allowed_ids`` and ``patterns`` must be valid (the config checked them).
    """

    def __init__(self, allowed_ids: Sequence[str], patterns: Sequence[str] = ()) -> None:
        """Compile the globs once."""
        self.allowed_ids = frozenset(allowed_ids)
        self.patterns = tuple(patterns)
        self._regexes = tuple(re.compile(pattern_regex(p)) for p in patterns)

    def allows(self, identity: str) -> bool:
        """Whether ``identity`` is one of the IDs or matches one of the globs in full."""
        if identity in self.allowed_ids:
            return True
        return any(regex.fullmatch(identity) for regex in self._regexes)

    def check(self, identities: Sequence[str]) -> str | None:
        """``None`` when any of ``identities`` is allowed, else ``PERMISSION_DENIED`` details."""
        if not identities:
            return no_identity_details()
        if any(self.allows(identity) for identity in identities):
            return None
        return not_allowed_details(", ".join(identities))


def _denying(behavior: Callable[..., Awaitable[Any]], policy: IdentityPolicy) -> Any:
    async def authorized(request: Any, context: grpc.aio.ServicerContext) -> Any:
        details = policy.check(peer_identities(context.auth_context()))
        if details is not None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, details)
        return await behavior(request, context)

    return authorized


_WRAPPERS = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def wrap_behavior(
    handler: grpc.RpcMethodHandler,
    wrap: Callable[[Callable[..., Awaitable[Any]]], Any],
) -> grpc.RpcMethodHandler:
    """``handler`` with its behavior replaced by ``wrap(behavior)``, serializers kept."""
    for kind, make in _WRAPPERS.items():
        behavior = getattr(handler, kind, None)
        if behavior is not None:
            wrapped: grpc.RpcMethodHandler = make(
                wrap(behavior),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
            return wrapped
    return handler


class AuthorizingHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    """A generic handler that refuses, ``PERMISSION_DENIED``, every call ``inner`` would
    serve whose peer identity ``policy`` does not allow; the check runs when the call
    starts, before anything is sent to the app.

    Wrapped handlers are cached per handler ``inner`` returns (it caches its own per method),
    so the per-call cost is a dict lookup plus the check.
    """

    def __init__(self, inner: grpc.GenericRpcHandler, policy: IdentityPolicy) -> None:
        """Keep ``inner`` and ``policy``."""
        self._inner = inner
        self._policy = policy
        self._wrapped: dict[int, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        """``inner``'s handler for the call, behind the identity check."""
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        cached = self._wrapped.get(id(handler))
        if cached is not None and cached[0] is handler:
            return cached[1]
        policy = self._policy
        wrapped = wrap_behavior(handler, lambda behavior: _denying(behavior, policy))
        if len(self._wrapped) >= _CACHE_SIZE:
            self._wrapped.clear()  # handlers per method path: paths come from the network
        self._wrapped[id(handler)] = (handler, wrapped)
        return wrapped
