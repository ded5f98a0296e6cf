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
- Addresses are ``host:port`` or ``[v6]:port``. Listeners may use port 0 ("any free port").
- Unknown keys are errors (with a "did you mean"), so a typo never silently does nothing.
- ``null`` for an optional section (``retry``, ``tls``, ``health_check``...) means off; for a
  section with defaults (``keepalive``, ``drain``...) it means the defaults.
- Relative file paths (TLS material, token files) are taken from the config file's directory
  and stored absolute; their existence is checked when the config is loaded.
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
``"<redacted>"``. Secret *contents* are never read into the config at all: the token file
and keys are opened by the data plane, so no dump can leak them.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc
import yaml

import balancers
import resolvers
from resolvers.static import parse_static_endpoint
from sidecar import _config_parse as _parse
from sidecar._config_parse import CONFIG_PATH_VARIABLE, ENV_PREFIX
from sidecar._config_values import (
    ConfigError,
    Duration,
    FieldError,
    HostPort,
    ListenAddress,
    join_path,
    show,
)

__all__ = [
    "CONFIG_PATH_VARIABLE",
    "ENV_PREFIX",
    "REDACTED",
    "AdminConfig",
    "AppHealthConfig",
    "AuthConfig",
    "ClusterConfig",
    "ClusterTlsConfig",
    "ConfigError",
    "DrainConfig",
    "Duration",
    "FieldError",
    "HealthCheckConfig",
    "HostPort",
    "InboundConfig",
    "InboundTlsConfig",
    "KeepaliveConfig",
    "ListenAddress",
    "OutboundConfig",
    "OutlierDetectionConfig",
    "ResolverConfig",
    "RetryPolicy",
    "Route",
    "ServerKeepaliveConfig",
    "SidecarConfig",
    "TelemetryConfig",
    "TracingConfig",
    "load_config",
    "parse_config",
    "resolve_config_path",
]

REDACTED = "<redacted>"

_STATUS_NAMES = frozenset(code.name for code in grpc.StatusCode) - {"OK"}
_BUILTIN_SCHEMES = frozenset({"static", "dns", "dns+srv"})
_BUILTIN_POLICIES = frozenset({"round_robin", "pick_first"})
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_CLUSTER_NAME = re.compile(r"^[a-z0-9_.-]+$")
#: Values of ``outbound.routes[].kind`` (the names of :class:`sidecar.proxy.RpcKind`).
RPC_KINDS = ("stream_stream", "unary_unary", "unary_stream", "stream_unary")
_ROUTE_PREFIX = re.compile(r"^/(?:[^/\s]+/(?:[^/\s]+)?)?$")
_METADATA_KEY = re.compile(r"^[a-z0-9_.-]+$")
_MAX_STREAMS = 2**31 - 1
# Kubernetes' default terminationGracePeriodSeconds: a longer drain gets SIGKILLed.
_K8S_GRACE = 30.0
# gRPC servers' default minimum interval between client pings without data (5 minutes).
_GRPC_SERVER_MIN_PING = 300.0

_FILE = {"file": True}
_SECRET_FILE = {"file": True, "secret": True}


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
        if problems:
            raise ConfigError(problems)

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)


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
    """The admin HTTP listener: ``/metrics``, ``/live``, ``/ready``, ``/clusters``, ``/config``."""

    listen: ListenAddress = field(default=ListenAddress("127.0.0.1", 9901))


@dataclass(frozen=True)
class Route(_Checked):
    """``prefix`` of the ``/package.Service/Method`` path -> ``cluster``; first match wins.

    ``timeout`` is the deadline applied when the caller set none (overrides the cluster's).

    ``kind`` is the RPC kind of every method the route takes: ``stream_stream`` (the default,
    correct for any method: the kind of a method is not on the wire), or a hint for a cheaper
    forwarding path -- ``unary_unary``, ``unary_stream`` (server streaming) or
    ``stream_unary`` (client streaming). Hint per method with a route per method path
    (``/pkg.Svc/Method``) ahead of the service's route. A wrong hint breaks calls: a unary
    request hint on a client- or bidi-streaming method forwards only the first request
    message, a unary response hint on a streaming method fails the call; only declare what
    the service definition says.
    """

    prefix: str
    cluster: str
    timeout: Duration | None = None
    kind: str = "stream_stream"

    def matches(self, method: str) -> bool:
        """True when this route takes the call to ``method`` (``/pkg.Service/Method``)."""
        return method.startswith(self.prefix)

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
        if self.kind not in RPC_KINDS:
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
        """The first route matching ``method``, or ``None``."""
        return next((r for r in self.routes if r.matches(method)), None)

    def _normalize(self) -> None:
        self._set("routes", tuple(self.routes))

    def _problems(self) -> Iterator[FieldError]:
        if not self.routes:
            yield FieldError("routes", "must list at least one route")
        for j, later in enumerate(self.routes):
            for i, earlier in enumerate(self.routes[:j]):
                if earlier.prefix and later.prefix.startswith(earlier.prefix):
                    yield FieldError(
                        f"routes[{j}].prefix",
                        f"unreachable: routes[{i}] (prefix {earlier.prefix!r}) matches"
                        f" {later.prefix!r} first",
                    )
                    break
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
class InboundConfig(_Checked):
    """The listener remote peers call, forwarding to the local ``app``."""

    app: HostPort
    listen: ListenAddress = field(default=ListenAddress("0.0.0.0", 15006))
    app_health: AppHealthConfig = AppHealthConfig()
    tls: InboundTlsConfig | None = None
    auth: AuthConfig | None = None
    keepalive: ServerKeepaliveConfig = ServerKeepaliveConfig()
    max_concurrent_streams: int = 1000

    def _problems(self) -> Iterator[FieldError]:
        if self.listen.overlaps(self.app):
            yield FieldError(
                "app", f"{self.app} is the inbound listener itself ({self.listen}): a loop"
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
class RetryPolicy(_Checked):
    """Retries as in gRPC's retry policy: up to ``max_attempts`` in all (the first included),
    only for ``retryable_status_codes``, with jittered exponential backoff."""

    max_attempts: int = 3
    retryable_status_codes: tuple[str, ...] = ("UNAVAILABLE",)
    initial_backoff: Duration = field(default=Duration(0.05))
    max_backoff: Duration = field(default=Duration(1))
    backoff_multiplier: float = 2.0

    def _normalize(self) -> None:
        codes = tuple(str(c).upper() for c in self.retryable_status_codes)
        self._set("retryable_status_codes", codes)

    def _problems(self) -> Iterator[FieldError]:
        yield from _range("max_attempts", self.max_attempts, 2, 5)
        yield from _status_codes("retryable_status_codes", self.retryable_status_codes)
        yield from _positive("initial_backoff", self.initial_backoff)
        if self.max_backoff < self.initial_backoff:
            yield FieldError(
                "max_backoff",
                f"must be >= initial_backoff ({self.initial_backoff})"
                f" (got {show(self.max_backoff)})",
            )
        yield from _positive("backoff_multiplier", self.backoff_multiplier)

    @property
    def codes(self) -> frozenset[Any]:
        """``retryable_status_codes`` as ``grpc.StatusCode`` members."""
        return frozenset(grpc.StatusCode[name] for name in self.retryable_status_codes)

    def backoff_ceiling(self, retry: int) -> float:
        """Upper bound of the random delay before retry number ``retry`` (1-based), seconds."""
        ceiling = self.initial_backoff * self.backoff_multiplier ** (max(retry, 1) - 1)
        return min(ceiling, float(self.max_backoff))


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
    """A named upstream: resolver ``target``, load-balancing policy, health and resilience."""

    target: str
    lb_policy: str = "round_robin"
    health_check: HealthCheckConfig | None = None
    outlier_detection: OutlierDetectionConfig | None = None
    retry: RetryPolicy | None = None
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
        yield from _positive("timeout", self.timeout)
        yield from _positive("connect_timeout", self.connect_timeout)


def _target_problems(target: str) -> Iterator[FieldError]:
    try:
        parsed = resolvers.Target.parse(target)
    except ValueError as exc:
        yield FieldError("target", str(exc))
        return
    try:
        resolvers.get(parsed.scheme)
    except Exception as exc:  # a plugin failing to import must be an error, not a crash
        if parsed.scheme not in _BUILTIN_SCHEMES:
            reason = str(exc) if isinstance(exc, LookupError) else f"failed to load: {exc}"
            yield FieldError("target", f"{show(target)}: {reason}")
            return
    try:
        if parsed.scheme == "static":
            if parsed.authority:
                raise ValueError("authority must be empty (static:///host:port,...)")
            parse_static_endpoint(parsed.endpoint)
        elif parsed.scheme == "dns":
            resolvers.split_host_port(parsed.endpoint, default_port=443)
    except ValueError as exc:
        yield FieldError("target", f"{show(target)}: {exc}")


def _policy_names() -> frozenset[str]:
    # The built-ins are always accepted: a registry still being filled (or a policy module
    # failing to import) must not turn every config invalid.
    try:
        names = frozenset(balancers.policy_names())
    except Exception:
        names = frozenset()
    return names | _BUILTIN_POLICIES


@dataclass(frozen=True)
class TracingConfig(_Checked):
    """OpenTelemetry tracing; off while ``otlp_endpoint`` (``host:port`` or URL) is null."""

    otlp_endpoint: str | None = None
    sample_ratio: float = 0.1
    service_name: str = "meshkit-sidecar"

    def _problems(self) -> Iterator[FieldError]:
        if self.otlp_endpoint is not None:
            yield from _endpoint_problems("otlp_endpoint", self.otlp_endpoint)
        yield from _range("sample_ratio", self.sample_ratio, 0.0, 1.0)
        yield from _not_empty("service_name", self.service_name)


def _endpoint_problems(name: str, endpoint: str) -> Iterator[FieldError]:
    scheme, sep, rest = endpoint.partition("://")
    if sep:
        if scheme not in ("http", "https") or not rest.strip("/"):
            yield FieldError(name, f'must be "host:port" or an http(s) URL (got {show(endpoint)})')
        return
    try:
        HostPort.parse(endpoint)
    except ValueError as exc:
        yield FieldError(name, str(exc))


@dataclass(frozen=True)
class TelemetryConfig(_Checked):
    """Prometheus metrics on the admin ``/metrics`` endpoint, and tracing."""

    prometheus: bool = True
    tracing: TracingConfig = TracingConfig()


@dataclass(frozen=True)
class DrainConfig(_Checked):
    """On SIGTERM: report not ready and NOT_SERVING, wait ``drain_delay`` (load balancers
    notice), stop accepting, let in-flight calls finish for up to ``grace_period``."""

    drain_delay: Duration = field(default=Duration(5))
    grace_period: Duration = field(default=Duration(20))


@dataclass(frozen=True)
class SidecarConfig(_Checked):
    """The whole sidecar: at least one of ``outbound`` / ``inbound``, plus what they need."""

    admin: AdminConfig = AdminConfig()
    outbound: OutboundConfig | None = None
    inbound: InboundConfig | None = None
    clusters: Mapping[str, ClusterConfig] = field(
        default_factory=lambda: types.MappingProxyType({})
    )
    telemetry: TelemetryConfig = TelemetryConfig()
    drain: DrainConfig = DrainConfig()
    workers: int = 1
    log_level: str = "info"

    def _normalize(self) -> None:
        self._set("clusters", types.MappingProxyType(dict(self.clusters)))
        self._set("log_level", self.log_level.lower())

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
        (private key and token file paths) read ``"<redacted>"``.
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
    (unreadable, YAML syntax with line:column, not a mapping).
    """
    env = os.environ if environ is None else environ
    chosen = resolve_config_path(path, env)
    try:
        with open(chosen, encoding="utf-8") as stream:
            text = stream.read()
    except OSError as exc:
        raise ConfigError([FieldError(chosen, f"cannot read: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([FieldError(chosen, f"not UTF-8 text ({exc.reason})")]) from None
    try:
        raw = yaml.load(text, Loader=_parse.Loader)
    except yaml.YAMLError as exc:
        raise ConfigError([_parse.yaml_error(chosen, exc)]) from None
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
    machine). Raises :class:`ConfigError` listing every problem found.
    """
    env = os.environ if environ is None else environ
    if not isinstance(mapping, Mapping):
        raise ConfigError([FieldError("", f"must be a mapping of sections (got {show(mapping)})")])
    raw, sources, errors = _parse.env_overrides(mapping, env, _SECTIONS)
    parser = _parse.Parser(base_dir or os.getcwd(), check_files)
    config = parser.section(SidecarConfig, raw, "")
    errors.extend(_parse.blame(e, sources) for e in parser.errors)
    if errors:
        raise ConfigError(errors)
    assert isinstance(config, SidecarConfig)
    return config
