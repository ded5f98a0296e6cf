"""Outbound clusters: ``Cluster``, ``ClusterLoadAssignment``, upstream TLS and route retries.

Mapping of :class:`~sidecar.config.ClusterConfig` (see ``translate`` for the whole picture):

- ``lb_policy``: ``round_robin`` -> ``ROUND_ROBIN`` over equal weights; ``weighted_round_robin``
  -> ``ROUND_ROBIN`` with each endpoint's weight (Envoy's round robin is weighted, smoothly
  interleaved as the Python policy is). Envoy 1.40 has no ``pick_first`` policy (it
  rejects the ``PickFirst`` type), and plugin policies are meshkit's own: :func:`problems`
  names them; translated anyway, they are round robin.
- ``health_check`` -> each endpoint's EDS ``health_status``, from the control plane's own
  ``grpc.health.v1/Watch`` of it (``sidecar.envoy.endpoint_health``, the watcher the Python
  plane's balanced channel uses): ``HEALTHY`` while it says SERVING (or has no health service),
  ``UNHEALTHY`` once it says anything else or its stream breaks; no status (``UNKNOWN``,
  routable) before its first answer. The cluster has no Envoy active health check: a Watch
  stream hears NOT_SERVING at once, where a ``Check`` every few seconds misses a draining
  backend's NOT_SERVING period and keeps sending it calls until it stops (measured: 15-20
  failed calls per rolling restart of three backends, 0 with the watch); one source of
  verdicts also keeps both planes' rules alike (UNIMPLEMENTED: checking off, not a failure)
  and a backend back from a restart routable on its first SERVING, not at the next poll.
- Envoy's panic mode (routing to every host when under 50 % are healthy) is off: the Python
  plane never sends calls to an unhealthy or ejected endpoint either.
- ``outlier_detection``: see :func:`_outlier`. ``retry``: a route ``retry_policy`` on every
  route to the cluster plus a retry budget (20 % of active requests, at least 3 concurrent
  retries) in the circuit breakers, so retries cannot multiply load in an outage. Every route
  also retries, policy or not, the calls that never reached the upstream (gRPC's transparent
  retries; see :data:`TRANSPARENT_RETRY_ON`), with no bound on concurrent retries for a
  cluster without a policy (see ``unlimited_circuit_breakers``). A retry avoids the hosts
  already tried (``previous_hosts``), as the Python plane's re-pick moves on.
- ``timeout`` (default deadline): on the routes, see ``_translate_listeners``.
- ``keepalive``: HTTP/2 PINGs every ``time``, connection dropped after ``timeout`` without an
  answer. Envoy pings idle connections too (``permit_without_calls: false`` has no Envoy
  equivalent); a server whose ping policy objects answers GOAWAY and Envoy reconnects on the
  next call.
- ``tls``: an ``UpstreamTlsContext`` whose CA and client certificate are SDS secrets
  (``cluster|<name>|ca``, ``cluster|<name>|cert``), ALPN ``h2``, the server certificate checked
  against ``server_name`` or the target's host (a DNS or IP SAN, as gRPC checks it), which is
  also the SNI (for a name) and the ``:authority`` sent upstream. No ``ca``: the system bundle.
- ``resolver``: meshkit's resolvers feed EDS; nothing for Envoy.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence

from resolvers import default_authority, split_host_port
from sidecar._config_values import FieldError, join_path
from sidecar.config import (
    ClusterConfig,
    ClusterTlsConfig,
    KeepaliveConfig,
    OutlierDetectionConfig,
    RetryConfig,
)
from sidecar.envoy._translate_common import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    SYSTEM_CA_BUNDLE,
    Endpoint,
    Json,
    ads,
    ca_secret,
    certificate_secret,
    duration,
    http2_upstream,
    is_ip,
    sds,
    socket_address,
    typed,
    unlimited_circuit_breakers,
)

#: Retry conditions per retryable gRPC code. UNAVAILABLE also covers what gRPC reports as
#: UNAVAILABLE without an answer from the server (connect failure, refused or reset stream
#: before any response), which Envoy names separately.
RETRY_ON: Mapping[str, tuple[str, ...]] = {
    "CANCELLED": ("cancelled",),
    "DEADLINE_EXCEEDED": ("deadline-exceeded",),
    "INTERNAL": ("internal",),
    "RESOURCE_EXHAUSTED": ("resource-exhausted",),
    "UNAVAILABLE": ("unavailable", "connect-failure", "refused-stream", "reset"),
}
# Envoy's retry back-off doubles per retry (full jitter); the multiplier is fixed.
_ENVOY_BACKOFF_MULTIPLIER = 2.0

# Outlier detection sees a gRPC status as the HTTP code Envoy maps it to: UNAVAILABLE 503,
# DEADLINE_EXCEEDED 504 (Envoy's "gateway failures", with local connect failures and
# resets); UNKNOWN, INTERNAL, DATA_LOSS 500 and UNIMPLEMENTED 501 (with those, all 5xx).
# Other codes map to 4xx and cannot eject a host.
_GATEWAY_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})
_5XX_CODES = _GATEWAY_CODES | {"UNKNOWN", "INTERNAL", "DATA_LOSS", "UNIMPLEMENTED"}

_ENVOY_POLICIES = frozenset({"round_robin", "weighted_round_robin"})


#: What :func:`cluster_name` puts before a config cluster's name.
OUTBOUND_PREFIX = "outbound|"


def cluster_name(name: str) -> str:
    """The Envoy cluster (and EDS resource) of the config's cluster ``name``."""
    return f"{OUTBOUND_PREFIX}{name}"


def ca_secret_name(name: str) -> str:
    """The SDS secret holding cluster ``name``'s trusted CA."""
    return f"cluster|{name}|ca"


def cert_secret_name(name: str) -> str:
    """The SDS secret holding cluster ``name``'s client certificate and key."""
    return f"cluster|{name}|cert"


def authority(config: ClusterConfig) -> str | None:
    """The ``:authority`` the Python plane sends upstream: ``tls.server_name``, else the
    target's service name (``None`` for a static target listing several addresses)."""
    if config.tls is not None and config.tls.server_name is not None:
        return config.tls.server_name
    return default_authority(config.parsed_target)


def server_host(config: ClusterConfig) -> str | None:
    """The host name a server certificate must carry (``None``: none can be named)."""
    if config.tls is not None and config.tls.server_name is not None:
        return config.tls.server_name
    found = default_authority(config.parsed_target)
    if found is None:
        return None
    try:
        host, _ = split_host_port(found, default_port=443)
    except ValueError:
        return found
    return host


def outbound_cluster(name: str, config: ClusterConfig) -> Json:
    """The EDS cluster for the config's cluster ``name``."""
    envoy_name = cluster_name(name)
    cluster: Json = {
        "@type": CLUSTER,
        "name": envoy_name,
        "type": "EDS",
        "eds_cluster_config": {"eds_config": ads()},
        "connect_timeout": duration(config.connect_timeout),
        "common_lb_config": {"healthy_panic_threshold": {"value": 0.0}},
        "typed_extension_protocol_options": http2_upstream(
            (config.keepalive.time, config.keepalive.timeout)
        ),
        "lb_policy": "ROUND_ROBIN",
        "circuit_breakers": unlimited_circuit_breakers(
            None
            if config.retry is None
            else {"budget_percent": {"value": 20.0}, "min_retry_concurrency": 3}
        ),
    }
    if config.outlier_detection is not None:
        cluster["outlier_detection"] = _outlier(config.outlier_detection)
    if config.tls is not None:
        cluster["transport_socket"] = _upstream_tls(name, config, config.tls)
    return cluster


def _outlier(od: OutlierDetectionConfig) -> Json:
    """Ejection after ``consecutive_failures`` calls ending in ``failure_codes``.

    Codes all within UNAVAILABLE/DEADLINE_EXCEEDED use Envoy's gateway-failure counter;
    any other 5xx-mapped code (UNKNOWN, INTERNAL, ...) needs the 5xx counter, which counts
    every 5xx-mapped code, listed or not (the default list thereby also counts UNIMPLEMENTED
    and DATA_LOSS). Connect failures and resets count in both, as UNAVAILABLE does in the
    Python plane. Envoy reads the gRPC status of trailers-only answers (how servers fail a
    call before answering anything) and of its own local failures; a status sent after
    response messages does not count. Success-rate ejection (an Envoy default) is off.
    """
    codes = set(od.failure_codes)
    gateway_only = codes <= _GATEWAY_CODES
    return {
        "consecutive_5xx": od.consecutive_failures,
        "enforcing_consecutive_5xx": 0 if gateway_only else 100,
        "consecutive_gateway_failure": od.consecutive_failures,
        "enforcing_consecutive_gateway_failure": 100 if gateway_only else 0,
        "enforcing_success_rate": 0,
        # the sweep that returns ejected hosts: Envoy's 10 s, or sooner for a shorter ejection
        "interval": duration(min(10.0, float(od.base_ejection_time))),
        "base_ejection_time": duration(od.base_ejection_time),
        "max_ejection_time": duration(od.max_ejection_time),
        "max_ejection_percent": od.max_ejection_percent,
    }


def _upstream_tls(name: str, config: ClusterConfig, tls: ClusterTlsConfig) -> Json:
    host = server_host(config)
    default_context: Json = {}
    if host is not None:
        san_type = "IP_ADDRESS" if is_ip(host) else "DNS"
        default_context["match_typed_subject_alt_names"] = [
            {"san_type": san_type, "matcher": {"exact": host}}
        ]
    common: Json = {"alpn_protocols": ["h2"]}
    if tls.ca is not None:
        common["combined_validation_context"] = {
            "default_validation_context": default_context,
            "validation_context_sds_secret_config": sds(ca_secret_name(name)),
        }
    else:
        default_context["trusted_ca"] = {"filename": SYSTEM_CA_BUNDLE}
        common["validation_context"] = default_context
    if tls.cert is not None:
        common["tls_certificate_sds_secret_configs"] = [sds(cert_secret_name(name))]
    context: Json = {"common_tls_context": common}
    if host is not None and not is_ip(host):
        context["sni"] = host
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": typed(
            "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", **context
        ),
    }


def cluster_secrets(name: str, config: ClusterConfig, files: Mapping[str, bytes]) -> list[Json]:
    """The SDS secrets cluster ``name``'s TLS refers to (file contents inline)."""
    tls = config.tls
    if tls is None:
        return []
    where = join_path(join_path("clusters", name), "tls")
    secrets = []
    if tls.ca is not None:
        secrets.append(ca_secret(ca_secret_name(name), files, tls.ca, f"{where}.ca"))
    if tls.cert is not None and tls.key is not None:
        secrets.append(certificate_secret(cert_secret_name(name), files, tls.cert, tls.key, where))
    return secrets


def _address(endpoint: Endpoint) -> Json | None:
    if endpoint.port == 0:  # a Unix domain socket (``unix:`` targets)
        return {"pipe": {"path": endpoint.host}}
    if not is_ip(endpoint.host):
        return None  # EDS takes no names: problems() reports static targets listing names
    return socket_address(endpoint.host, endpoint.port)


def load_assignment(
    name: str,
    config: ClusterConfig,
    endpoints: Sequence[Endpoint],
    health: Mapping[tuple[str, int], str] | None = None,
) -> Json:
    """The ``ClusterLoadAssignment`` of cluster ``name`` (possibly without endpoints).

    Duplicates and host names (EDS takes IP addresses only) are dropped, the rest sorted.
    Weights are sent for ``weighted_round_robin`` only (at least 1). With ``health_check``,
    each endpoint's ``health_status`` is its entry in ``health`` (``(host, port)`` -> an
    ``envoy.config.core.v3.HealthStatus`` name), none when it has no entry.
    """
    seen: dict[tuple[str, int], Endpoint] = {}
    for endpoint in endpoints:
        seen.setdefault((endpoint.host, endpoint.port), endpoint)
    ordered = sorted(seen.values(), key=lambda e: (e.host, e.port))
    weighted = config.lb_policy == "weighted_round_robin"
    lb_endpoints = []
    for endpoint in ordered:
        address = _address(endpoint)
        if address is None:
            continue
        entry: Json = {"endpoint": {"address": address}}
        if weighted:
            entry["load_balancing_weight"] = max(1, endpoint.weight)
        status = health.get((endpoint.host, endpoint.port)) if health is not None else None
        if status is not None and config.health_check is not None:
            entry["health_status"] = status
        lb_endpoints.append(entry)
    return {
        "@type": CLUSTER_LOAD_ASSIGNMENT,
        "cluster_name": cluster_name(name),
        "endpoints": [{"lb_endpoints": lb_endpoints}] if lb_endpoints else [],
    }


#: Failures where the request never reached the upstream's application: a refused or failed
#: connection, a refused stream (GOAWAY, max streams), a reset before the request was sent.
#: gRPC clients retry these transparently whatever the retry policy (gRFC A6), and the Python
#: plane's balancer never picks an endpoint that is not READY; without them Envoy would keep
#: sending calls to a killed backend until it came back (measured: 20-60 failed calls per
#: kill -9 under load, against 1-4 in flight on the Python plane).
TRANSPARENT_RETRY_ON = ("connect-failure", "refused-stream", "reset-before-request")
#: Retries of :data:`TRANSPARENT_RETRY_ON` failures for a cluster without a retry policy.
TRANSPARENT_RETRIES = 2
#: How many times a retry's pick may be redrawn to avoid a host already tried.
HOST_SELECTION_ATTEMPTS = 5


def _avoid_previous_hosts() -> Json:
    """A retry goes to a host the call has not tried yet, when there is one: the host that
    just refused or reset it is most likely stopping (a pick is redrawn up to
    :data:`HOST_SELECTION_ATTEMPTS` times, then kept)."""
    return {
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": typed(
                    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                ),
            }
        ],
        "host_selection_retry_max_attempts": HOST_SELECTION_ATTEMPTS,
    }


def retry_policy(retry: RetryConfig | None) -> Json:
    """The route ``retry_policy`` for a cluster's ``retry``: its codes and back-off, plus the
    transparent retries of calls that never reached the upstream (:data:`TRANSPARENT_RETRY_ON`,
    also without a policy: :data:`TRANSPARENT_RETRIES`, Envoy's default back-off).

    Envoy retries only before any response reached the caller, as the Python plane does; a
    retry is a new pick, of a host the call has not tried when there is one.
    """
    conditions: set[str] = set(TRANSPARENT_RETRY_ON)
    if retry is None:
        return {
            "retry_on": ",".join(sorted(conditions)),
            "num_retries": TRANSPARENT_RETRIES,
            **_avoid_previous_hosts(),
        }
    for code in retry.retryable_status_codes:
        conditions.update(RETRY_ON.get(code, ()))
    return {
        "retry_on": ",".join(sorted(conditions)),
        "num_retries": retry.max_attempts - 1,  # the policy bounds every retry it shares
        "retry_back_off": {
            "base_interval": duration(retry.initial_backoff),
            "max_interval": duration(retry.max_backoff),
        },
        **_avoid_previous_hosts(),
    }


#: Envoy's smallest HTTP/2 keepalive interval and timeout (KeepaliveSettings' constraint).
_ENVOY_MIN_DURATION = 0.001


def _codes_outside(
    path: str, codes: Iterable[str], allowed: Collection[str], says: str
) -> Iterator[FieldError]:
    """An error per status code of the list at ``path`` that Envoy cannot act on;
    ``says`` is the message with ``{}`` for the codes it can."""
    for i, code in enumerate(codes):
        if code not in allowed:
            yield FieldError(
                f"{path}[{i}]", f"{says.format(', '.join(sorted(allowed)))} (got {code})"
            )


def keepalive_problems(path: str, keepalive: KeepaliveConfig) -> Iterator[FieldError]:
    """Keepalive durations (a listener's or a cluster's) below Envoy's 1 ms minimum."""
    for field in ("time", "timeout"):
        value = getattr(keepalive, field)
        if value < _ENVOY_MIN_DURATION:
            yield FieldError(f"{path}.{field}", f"Envoy takes at least 1ms (got {value})")


def problems(name: str, config: ClusterConfig) -> Iterator[FieldError]:
    """Settings of cluster ``name`` that Envoy cannot express."""
    path = join_path("clusters", name)
    if config.lb_policy not in _ENVOY_POLICIES:
        yield FieldError(
            f"{path}.lb_policy",
            f"Envoy has round_robin and weighted_round_robin only (got {config.lb_policy})",
        )
    retry = config.retry
    if retry is not None:
        yield from _codes_outside(
            f"{path}.retry.retryable_status_codes",
            retry.retryable_status_codes,
            RETRY_ON,
            "Envoy retries only on {}",
        )
        if retry.backoff_multiplier != _ENVOY_BACKOFF_MULTIPLIER:
            yield FieldError(
                f"{path}.retry.backoff_multiplier",
                f"Envoy's back-off always doubles (got {retry.backoff_multiplier})",
            )
    od = config.outlier_detection
    if od is not None:
        yield from _codes_outside(
            f"{path}.outlier_detection.failure_codes",
            od.failure_codes,
            _5XX_CODES,
            "Envoy ejects on {} only",
        )
    yield from keepalive_problems(f"{path}.keepalive", config.keepalive)
    if config.tls is not None and server_host(config) is None:
        yield FieldError(
            f"{path}.tls.server_name",
            "required for Envoy with a target of several addresses: Envoy checks one name"
            " for every endpoint",
        )
