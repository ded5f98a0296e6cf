"""What ``validate`` accepts, ``run`` can start: every duration and count is bounded, numbers
are finite, strings hold no control characters, ports are ASCII digits, dotted-quad hosts are
real IPv4 addresses, and TLS files are PEM with keys matching their certificates."""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import resolvers
from sidecar.config import (
    MAX_COUNT,
    MAX_DURATION,
    ConfigError,
    Duration,
    FieldError,
    HostPort,
    ListenAddress,
    SidecarConfig,
    load_config,
    parse_config,
)
from tests.support.certs import Pki, issue, make_ca, make_pki

MINIMAL_YAML = """\
outbound: {listen: 127.0.0.1:15001, routes: [{prefix: /, cluster: backend}]}
clusters: {backend: {target: static:///127.0.0.1:10000}}
"""


def minimal() -> dict[str, Any]:
    raw = yaml.safe_load(MINIMAL_YAML)
    assert isinstance(raw, dict)
    return raw


def merged(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def errors_of(raw: dict[str, Any], **kwargs: Any) -> list[FieldError]:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, {}, **kwargs)
    return caught.value.errors


def _cluster(**patch: Any) -> dict[str, Any]:
    return {"clusters": {"backend": patch}}


def _inbound(**patch: Any) -> dict[str, Any]:
    return {"inbound": {"app": "127.0.0.1:8080", "listen": "127.0.0.1:15006", **patch}}


# --------------------------------------------------------------------------- bounds


BAD_VALUES: list[tuple[str, dict[str, Any], str, str]] = [
    # (id, patch onto the minimal config, error path, text the message must contain)
    (
        "client-keepalive-1e12s",
        _cluster(keepalive={"time": "1e12s"}),
        "clusters.backend.keepalive.time",
        "must be at most 24h",
    ),
    (
        "server-keepalive-1e308",
        _inbound(keepalive={"time": "1e308"}),
        "inbound.keepalive.time",
        "must be at most 24h (got 1e+308s)",
    ),
    (
        "server-keepalive-25h",
        {"outbound": {"keepalive": {"time": "25h"}}},
        "outbound.keepalive.time",
        "must be at most 24h (got 25h)",
    ),
    (
        "min-ping-interval",
        {"outbound": {"keepalive": {"min_ping_interval": "48h"}}},
        "outbound.keepalive.min_ping_interval",
        "at most 24h",
    ),
    (
        "keepalive-timeout",
        _cluster(keepalive={"timeout": "1000h"}),
        "clusters.backend.keepalive.timeout",
        "at most 24h",
    ),
    ("drain-delay-1e300s", {"drain": {"drain_delay": "1e300s"}}, "drain.drain_delay", "at most 1h"),
    ("grace-period-2h", {"drain": {"grace_period": "2h"}}, "drain.grace_period", "(got 2h)"),
    ("cluster-timeout", _cluster(timeout="25h"), "clusters.backend.timeout", "at most 24h"),
    (
        "connect-timeout",
        _cluster(connect_timeout=10**6),
        "clusters.backend.connect_timeout",
        "at most 24h",
    ),
    (
        "route-timeout",
        {"outbound": {"routes": [{"prefix": "/", "cluster": "backend", "timeout": "90000s"}]}},
        "outbound.routes[0].timeout",
        "at most 24h",
    ),
    (
        "retry-backoff",
        _cluster(retry={"initial_backoff": "30h", "max_backoff": "30h"}),
        "clusters.backend.retry.initial_backoff",
        "at most 24h",
    ),
    (
        "retry-multiplier",
        _cluster(retry={"backoff_multiplier": 1e300}),
        "clusters.backend.retry.backoff_multiplier",
        "at most 100.0",
    ),
    (
        "retry-multiplier-inf",
        _cluster(retry={"backoff_multiplier": math.inf}),
        "clusters.backend.retry.backoff_multiplier",
        "must be a finite number (got inf)",
    ),
    (
        "ejection-time",
        _cluster(outlier_detection={"base_ejection_time": "25h", "max_ejection_time": "25h"}),
        "clusters.backend.outlier_detection.max_ejection_time",
        "at most 24h",
    ),
    (
        "consecutive-failures",
        _cluster(outlier_detection={"consecutive_failures": 2**31}),
        "clusters.backend.outlier_detection.consecutive_failures",
        "must be at most 2147483647 (got 2147483648)",
    ),
    (
        "max-refresh",
        _cluster(resolver={"max_refresh": "1e9"}),
        "clusters.backend.resolver.max_refresh",
        "at most 24h",
    ),
    (
        "app-health-interval",
        _inbound(app_health={"interval": "48h", "timeout": "1s"}),
        "inbound.app_health.interval",
        "at most 24h",
    ),
    ("duration-inf", {"drain": {"grace_period": math.inf}}, "drain.grace_period", "finite"),
    ("duration-nan", {"drain": {"grace_period": math.nan}}, "drain.grace_period", "finite"),
    ("duration-1e400", {"drain": {"grace_period": "1e400s"}}, "drain.grace_period", "finite"),
    (
        "duration-huge-int",
        {"drain": {"grace_period": 10**400}},
        "drain.grace_period",
        "must be a finite duration",
    ),
    (
        "sample-ratio-nan",
        {"telemetry": {"tracing": {"sample_ratio": math.nan}}},
        "telemetry.tracing.sample_ratio",
        "must be a finite number (got nan)",
    ),
    (
        "max-concurrent-streams",
        {"outbound": {"max_concurrent_streams": 2**31}},
        "outbound.max_concurrent_streams",
        "(got 2147483648)",
    ),
    # strings: control characters
    (
        "target-nul",
        _cluster(target="\0"),
        "clusters.backend.target",
        "must not contain control characters (got '\\x00' at 0)",
    ),
    (
        "target-control-inside",
        _cluster(target="static:///a\x01b:80"),
        "clusters.backend.target",
        "control characters",
    ),
    (
        "target-newline",
        _cluster(target="static:///127.0.0.1:80\nx"),
        "clusters.backend.target",
        "control characters",
    ),
    ("log-level-newline", {"log_level": "info\n"}, "log_level", "control characters"),
    (
        "route-prefix-nul",
        {"outbound": {"routes": [{"prefix": "/a\0/", "cluster": "backend"}]}},
        "outbound.routes[0].prefix",
        "control characters",
    ),
    (
        "server-name-c1",
        _cluster(tls={"server_name": "a\x85b"}),
        "clusters.backend.tls.server_name",
        "control characters",
    ),
    (
        "listen-control",
        {"admin": {"listen": "127.0.0.1\x00:80"}},
        "admin.listen",
        "control characters",
    ),
    # ports and IPv4 addresses
    ("app-arabic-port", _inbound(app="host:٨٠"), "inbound.app", "ASCII digits"),
    ("app-superscript-port", _inbound(app="host:²"), "inbound.app", "ASCII digits"),
    (
        "listen-fullwidth-port",
        {"admin": {"listen": "127.0.0.1:\uff19\uff19"}},
        "admin.listen",
        "ASCII",
    ),
    ("app-256", _inbound(app="256.1.1.1:80"), "inbound.app", "not an IPv4 address"),
    ("app-three-parts", _inbound(app="10.1.2:80"), "inbound.app", "not an IPv4 address"),
    ("app-all-digits", _inbound(app="1234:80"), "inbound.app", "not an IPv4 address"),
    ("app-long-port", _inbound(app="host:" + "8" * 50), "inbound.app", "1..65535"),
    (
        "target-static-256",
        _cluster(target="static:///256.1.1.1:80"),
        "clusters.backend.target",
        "'256.1.1.1' is not an IPv4 address",
    ),
    (
        "target-dns-256",
        _cluster(target="dns:///256.1.1.1:80"),
        "clusters.backend.target",
        "not an IPv4 address",
    ),
    (
        "target-bare-256",
        _cluster(target="256.1.1.1:80"),
        "clusters.backend.target",
        "not an IPv4 address",
    ),
    (
        "target-arabic-port",
        _cluster(target="dns:///host:٨٠"),
        "clusters.backend.target",
        "port must be 1..65535",
    ),
    (
        "target-static-arabic-port",
        _cluster(target="static:///127.0.0.1:٨٠"),
        "clusters.backend.target",
        "port must be 1..65535",
    ),
]


@pytest.mark.parametrize(
    ("patch", "path", "fragment"),
    [case[1:] for case in BAD_VALUES],
    ids=[case[0] for case in BAD_VALUES],
)
def test_each_out_of_bounds_value_is_an_error_naming_its_field(
    patch: dict[str, Any], path: str, fragment: str
) -> None:
    errors = errors_of(merged(minimal(), patch))
    matching = [e for e in errors if e.path == path]
    assert matching, f"no error at {path!r}; got {[str(e) for e in errors]}"
    assert any(fragment in e.message for e in matching), [str(e) for e in matching]


def test_values_at_the_bounds_are_accepted() -> None:
    raw = merged(
        minimal(),
        {
            "clusters": {
                "backend": {
                    "keepalive": {"time": "24h", "timeout": "24h"},
                    "timeout": "24h",
                    "connect_timeout": 86_400,
                    "retry": {
                        "initial_backoff": "24h",
                        "max_backoff": "24h",
                        "backoff_multiplier": 100,
                    },
                    "outlier_detection": {"consecutive_failures": 2**31 - 1},
                }
            },
            "drain": {"drain_delay": "1h", "grace_period": "60m"},
            "inbound": {"app": "255.255.255.255:65535", "listen": "127.0.0.1:15006"},
        },
    )
    config = parse_config(raw, {})
    assert config.clusters["backend"].keepalive.time == MAX_DURATION
    assert float(config.drain.grace_period) == 3600
    assert config.inbound is not None and config.inbound.app == HostPort("255.255.255.255", 65535)


def test_one_error_per_field_even_when_two_checks_object() -> None:
    # workers has its own range (1..128); the generic count bound does not repeat it.
    errors = errors_of(merged(minimal(), {"workers": 2**40}))
    assert [str(e) for e in errors] == ["workers: must be 1..128 (got 1099511627776)"]


def test_sections_built_in_code_are_bounded_too() -> None:
    from sidecar.config import ClusterConfig, DrainConfig, KeepaliveConfig

    with pytest.raises(ConfigError) as caught:
        DrainConfig(grace_period=Duration(7200))
    assert caught.value.errors == [FieldError("grace_period", "must be at most 1h (got 2h)")]
    with pytest.raises(ConfigError, match="finite"):
        KeepaliveConfig(time=Duration(math.inf))
    with pytest.raises(ConfigError, match="control characters"):
        ClusterConfig(target="static:///a\x01b:80")


@pytest.mark.parametrize(
    "text", ["host:٨٠", "host:²", "256.1.1.1:80", "1.2.3:80", "1234:80", "[::1]:٨٠", "h:" + "9" * 9]
)
def test_split_host_port_refuses_lookalike_ports_and_bad_ipv4(text: str) -> None:
    with pytest.raises(ValueError):
        resolvers.split_host_port(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1:80", ("10.0.0.1", 80)),
        ("a1.example:00080", ("a1.example", 80)),
        ("[::1]:443", ("::1", 443)),
        ("1e100.net:80", ("1e100.net", 80)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
    ],
)
def test_split_host_port_still_takes_real_addresses(text: str, expected: tuple[str, int]) -> None:
    assert resolvers.split_host_port(text) == expected


def test_host_port_parse_matches() -> None:
    assert HostPort.parse("10.0.0.1:80") == HostPort("10.0.0.1", 80)
    assert ListenAddress.parse("0.0.0.0:0") == ListenAddress("0.0.0.0", 0)
    for bad in ("256.1.1.1:80", "host:٨٠", "01.1.1.1:80", "[::1\x00]:80"):
        with pytest.raises(ValueError):
            HostPort.parse(bad)


# --------------------------------------------------------------------------- TLS files


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(str(tmp_path_factory.mktemp("pki")))


def _with_tls(tmp_path: Path, inbound_tls: dict[str, Any] | None, cluster_tls: Any = None) -> Path:
    raw = minimal()
    if inbound_tls is not None:
        raw["inbound"] = {"app": "127.0.0.1:8080", "listen": "127.0.0.1:15006", "tls": inbound_tls}
    if cluster_tls is not None:
        raw["clusters"]["backend"]["tls"] = cluster_tls
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _load_errors(path: Path, check_files: bool = True) -> list[FieldError]:
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), environ={}, check_files=check_files)
    return caught.value.errors


def test_real_pem_files_pass(tmp_path: Path, pki: Pki) -> None:
    path = _with_tls(
        tmp_path,
        {"cert": pki.server_cert, "key": pki.server_key, "client_ca": pki.ca},
        {"ca": pki.ca, "cert": pki.client_cert, "key": pki.client_key},
    )
    config = load_config(str(path), environ={})
    assert config.inbound is not None and config.inbound.tls is not None
    assert config.inbound.tls.cert == pki.server_cert


def test_files_that_are_not_pem_are_errors_naming_the_field(tmp_path: Path, pki: Pki) -> None:
    (tmp_path / "junk.crt").write_text("not a certificate\n")
    (tmp_path / "junk.key").write_text("not a key\n")
    path = _with_tls(
        tmp_path,
        {"cert": "junk.crt", "key": "junk.key", "client_ca": "junk.crt"},
        {"ca": "junk.key", "cert": pki.client_cert, "key": pki.client_cert},
    )
    errors = {e.path: e.message for e in _load_errors(path)}
    junk_crt, junk_key = tmp_path / "junk.crt", tmp_path / "junk.key"
    assert errors == {
        "inbound.tls.cert": f"{junk_crt}: not a PEM certificate (no BEGIN CERTIFICATE)",
        "inbound.tls.client_ca": f"{junk_crt}: not a PEM certificate (no BEGIN CERTIFICATE)",
        "inbound.tls.key": f"{junk_key}: not a PEM private key (no BEGIN PRIVATE KEY)",
        "clusters.backend.tls.ca": f"{junk_key}: not a PEM certificate (no BEGIN CERTIFICATE)",
        "clusters.backend.tls.key": (
            f"{pki.client_cert}: not a PEM private key (no BEGIN PRIVATE KEY)"
        ),
    }


def test_a_key_that_does_not_match_its_cert_is_an_error(tmp_path: Path, pki: Pki) -> None:
    path = _with_tls(
        tmp_path,
        {"cert": pki.server_cert, "key": pki.client_key, "client_ca": pki.ca},
        {"cert": pki.client_cert, "key": pki.server_key},
    )
    errors = {e.path: e.message for e in _load_errors(path)}
    assert errors == {
        "inbound.tls.key": f"does not belong to the certificate in cert ({pki.server_cert})",
        "clusters.backend.tls.key": (
            f"does not belong to the certificate in cert ({pki.client_cert})"
        ),
    }


def test_a_broken_certificate_body_is_an_error(tmp_path: Path, pki: Pki) -> None:
    broken = tmp_path / "broken.crt"
    broken.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    path = _with_tls(tmp_path, None, {"ca": str(broken)})
    (error,) = _load_errors(path)
    assert error.path == "clusters.backend.tls.ca"
    assert error.message.startswith(f"{broken}: a broken PEM certificate")


def test_an_encrypted_key_is_an_error_not_a_password_prompt(tmp_path: Path) -> None:
    ca = make_ca()
    leaf = issue(ca, "server")
    encrypted = leaf.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (tmp_path / "tls.crt").write_bytes(leaf.cert_pem)
    (tmp_path / "tls.key").write_bytes(encrypted)
    path = _with_tls(tmp_path, {"cert": "tls.crt", "key": "tls.key", "require_client_cert": False})
    (error,) = _load_errors(path)
    assert error.path == "inbound.tls.key" and "encrypted private key" in error.message


def test_a_huge_tls_file_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.crt"
    with open(big, "wb") as f:
        f.truncate(64 << 20)  # sparse: 64 MiB of zeros on no disk
    path = _with_tls(tmp_path, None, {"ca": str(big)})
    (error,) = _load_errors(path)
    assert error == FieldError("clusters.backend.tls.ca", f"{big}: larger than 1048576 bytes")


def test_skip_file_checks_skips_the_pem_checks_too(tmp_path: Path) -> None:
    (tmp_path / "junk").write_text("junk\n")
    path = _with_tls(tmp_path, {"cert": "junk", "key": "junk", "require_client_cert": False})
    config = load_config(str(path), environ={}, check_files=False)
    assert config.inbound is not None and config.inbound.tls is not None


# --------------------------------------------------------------------------- property


HOSTILE_DURATIONS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-10, max_value=10**400),
    st.sampled_from(["1e308", "1e12s", "24h1ms", "3601s", "-1s", "1e400s", ".5", "1s\x00"]),
)
HOSTILE_COUNTS = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([0, 2**31 - 1, 2**31, 1.5, "3", True]),
)
HOSTILE_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e300, 101, -1, "2"])
)
HOSTILE_ADDRESSES = st.one_of(
    st.builds(
        "{}:{}".format,
        st.sampled_from(["256.1.1.1", "1.2.3", "1234", "host\x00", "a b", "", "::1", "[::1"]),
        st.sampled_from(["80", "0"]),
    ),
    st.builds("h:{}".format, st.sampled_from(["٨٠", "²", "\uff10", "", "8o", "65536", "9" * 30])),
    st.text(max_size=20),
)
HOSTILE_TARGETS = st.one_of(
    st.sampled_from(["\0", "static:///a\x01b:80", "dns:///host:٨٠", "static:///256.1.1.1:80"]),
    HOSTILE_ADDRESSES.map("static:///{}".format),
    HOSTILE_ADDRESSES.map("dns:///{}".format),
    st.text(max_size=30),
)
HOSTS = st.one_of(
    st.sampled_from(["127.0.0.1", "10.1.2.3", "255.255.255.255", "localhost", "svc.ns.svc"]),
    st.sampled_from(["::1", "2001:db8::1"]).map("[{}]".format),
    st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,10}){0,2}", fullmatch=True),
)
ADDRESSES = st.builds("{}:{}".format, HOSTS, st.integers(min_value=1, max_value=65535))
TARGETS = st.one_of(
    ADDRESSES.map("static:///{}".format),
    st.lists(ADDRESSES, min_size=1, max_size=3).map(lambda a: "static:///" + ",".join(a)),
    ADDRESSES.map("dns:///{}".format),
    ADDRESSES,
)


def _text(seconds: float, unit: str) -> str | float:
    if unit == "number":
        return seconds
    scale = {"ms": 1000.0, "s": 1.0, "m": 1 / 60, "h": 1 / 3600}[unit]
    return f"{seconds * scale:.6g}{unit}"


@st.composite
def raw_configs(draw: st.DrawFn) -> dict[str, Any]:
    """Configs mostly right, each value hostile one time in ten: durations (text and numbers,
    some past a bound), counts, floats, addresses and targets."""

    def mostly(valid: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> Any:
        return draw(hostile if draw(st.integers(0, 9)) == 0 else valid)

    def seconds(low: float, high: float) -> float:
        return draw(st.floats(min_value=low, max_value=high, allow_nan=False))

    def duration(value: float) -> Any:
        unit = draw(st.sampled_from(["ms", "s", "m", "h", "number"]))
        return mostly(st.just(_text(value, unit)), HOSTILE_DURATIONS)

    def ordered(low: float, high: float) -> tuple[Any, Any]:
        a, b = sorted((seconds(low, high), seconds(low, high)))
        return duration(a), duration(b)

    def count(low: int, high: int) -> Any:
        return mostly(st.integers(min_value=low, max_value=high), HOSTILE_COUNTS)

    def some(section: dict[str, Any]) -> dict[str, Any]:
        """A random subset of ``section``'s fields (the rest take their defaults)."""
        return {k: v for k, v in section.items() if draw(st.booleans())}

    backoff = ordered(0.01, 100)
    ejection = ordered(0.01, 90_000)
    refresh = ordered(0.01, 90_000)
    cluster = {
        "target": mostly(TARGETS, HOSTILE_TARGETS),
        **some(
            {
                "timeout": duration(seconds(0.001, 90_000)),
                "connect_timeout": duration(seconds(0.001, 90_000)),
                "keepalive": some(
                    {
                        "time": duration(seconds(10, 90_000)),
                        "timeout": duration(seconds(0.001, 90_000)),
                    }
                ),
                "retry": some(
                    {
                        "max_attempts": count(2, 5),
                        "initial_backoff": backoff[0],
                        "max_backoff": backoff[1],
                        "backoff_multiplier": mostly(
                            st.floats(min_value=0.1, max_value=100), HOSTILE_FLOATS
                        ),
                    }
                ),
                "outlier_detection": some(
                    {
                        "consecutive_failures": count(1, 2**32),
                        "base_ejection_time": ejection[0],
                        "max_ejection_time": ejection[1],
                        "max_ejection_percent": count(0, 100),
                    }
                ),
                "resolver": some({"min_refresh": refresh[0], "max_refresh": refresh[1]}),
            }
        ),
    }
    health = ordered(0.001, 90_000)
    server_keepalive = {
        "time": duration(seconds(0.001, 90_000)),
        "timeout": duration(seconds(0.001, 90_000)),
        "min_ping_interval": duration(seconds(0, 90_000)),
    }
    raw: dict[str, Any] = {
        "outbound": {
            "listen": "127.0.0.1:0",
            "routes": [{"prefix": "/", "cluster": "backend"}],
            **some(
                {
                    "max_concurrent_streams": count(1, 2**32),
                    "keepalive": some(server_keepalive),
                }
            ),
        },
        "clusters": {"backend": cluster},
    }
    inbound = {
        "app": mostly(ADDRESSES, HOSTILE_ADDRESSES),
        "listen": "127.0.0.1:0",
        **some(
            {
                "keepalive": some(server_keepalive),
                "app_health": some({"timeout": health[0], "interval": health[1]}),
                "max_concurrent_streams": count(1, 2**32),
            }
        ),
    }
    drain = {"drain_delay": duration(seconds(0, 4000)), "grace_period": duration(seconds(0, 4000))}
    tracing = {"sample_ratio": mostly(st.floats(min_value=0, max_value=1), HOSTILE_FLOATS)}
    raw.update(some({"inbound": inbound, "drain": some(drain), "telemetry": {"tracing": tracing}}))
    return raw


_DOTTED = re.compile(r"^[0-9.]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def assert_within_bounds(section: Any, path: str = "") -> None:
    """Every value of ``section`` (recursively) within the bounds the model declares."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        where = f"{path}.{f.name}" if path else f.name
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, str):
            assert not _CONTROL.search(value), where
        elif isinstance(value, HostPort):
            assert 0 <= value.port <= 65535, where
            assert not _CONTROL.search(value.host), where
            if _DOTTED.match(value.host):
                ipaddress.IPv4Address(value.host)
        elif isinstance(value, (int, float)):
            assert math.isfinite(value), where
            high = f.metadata.get("max")
            if high is None:
                high = MAX_DURATION if isinstance(value, Duration) else MAX_COUNT
            if isinstance(value, (Duration, int)):
                assert value <= high, where
            if isinstance(value, Duration):
                assert value >= 0 and value.ms < 2**31, where  # fits grpc's int32 ms
        elif dataclasses.is_dataclass(value):
            assert_within_bounds(value, where)
        elif isinstance(value, tuple):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    assert_within_bounds(item, f"{where}[{i}]")
        elif f.name == "clusters":
            for name, cluster in value.items():
                assert_within_bounds(cluster, f"{where}.{name}")
                resolvers.check_target(cluster.target)  # what a balanced channel runs


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_configs())
def test_accepted_configs_round_trip_and_stay_within_bounds(raw: dict[str, Any]) -> None:
    try:
        config = parse_config(raw, {}, check_files=False)
    except ConfigError:
        return  # refused with field errors, which is fine; any other exception fails
    assert isinstance(config, SidecarConfig)
    assert parse_config(config.to_dict(redact=False), {}, check_files=False) == config
    assert parse_config(yaml.safe_load(yaml.safe_dump(config.to_dict(redact=False))), {}) == config
    assert_within_bounds(config)


def test_otlp_url_host_and_port_are_checked_as_envoy_would() -> None:
    # these passed validation, then became an Envoy cluster Envoy rejects (or a bare
    # ValueError in the translation)
    from sidecar.config import ConfigError, parse_config

    base = {
        "outbound": {"routes": [{"prefix": "/", "cluster": "a"}]},
        "clusters": {"a": {"target": "static:///127.0.0.1:1"}},
    }
    for bad in ("http://:4317", "http://a b:80", "http://collector:abc", "http://collector:99999"):
        config = {**base, "telemetry": {"tracing": {"otlp_endpoint": bad}}}
        try:
            parse_config(config, {})
        except ConfigError as error:
            assert [e.path for e in error.errors] == ["telemetry.tracing.otlp_endpoint"], bad
        else:
            raise AssertionError(f"{bad} accepted")
    good = {**base, "telemetry": {"tracing": {"otlp_endpoint": "http://collector:4318/v1/traces"}}}
    assert parse_config(good, {}).telemetry.tracing.otlp_endpoint == "http://collector:4318/v1/traces"
