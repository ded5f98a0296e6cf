"""The config's bounds at their edges: each value just inside and just outside its bound, the
exact error path and message of every check, how values are shown and redacted in messages,
and the reading limits (entries, nesting, values, sizes) at exactly their numbers."""

from __future__ import annotations

import copy
import datetime
import math
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar import _config_parse

# Reaches inside: unit tests of the config value types (durations, addresses) themselves.
from sidecar._config_values import (
    ConfigError,
    Duration,
    FieldError,
    HostPort,
    ListenAddress,
    control_characters,
    control_problem,
    join_path,
    redact_url,
    show,
)
from sidecar.config import SidecarConfig, load_config, parse_config

# --------------------------------------------------------------------------- show()


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (HostPort("::1", 80), "[::1]:80"),
        (HostPort("a.example", 1), "a.example:1"),
        (ListenAddress("0.0.0.0", 0), "0.0.0.0:0"),
        ([HostPort("fd00::2", 9)], "[[fd00::2]:9]"),
        (Duration(0.05), "50ms"),
        (b"ab", "b'ab'"),
        ((1,), "(1,)"),
        (("a", "b"), "('a', 'b')"),
        ({1}, "{1}"),
        (frozenset(), "{}"),
        ({"k": ("a",)}, "{'k': ('a',)}"),
        (1j, "1j"),
        (2**300, "<an integer of ~91 digits>"),
        (datetime.date(2020, 1, 2), "datetime.date(2020, 1, 2)"),
        (object(), "<object>"),
        ("x" * 78, "'" + "x" * 78 + "'"),  # 80 characters: shown whole
        ("x" * 79, "'" + "x" * 76 + "..."),
        ("x" * 80 + "'", '"' + "x" * 76 + "..."),  # quoted as repr() quotes the whole
        (("x" * 75,), "('" + "x" * 75 + "',)"),  # 80 characters
        (("x" * 76,), "('" + "x" * 75 + "..."),  # 81 with its comma: cut, never "('x...x')"
    ],
)
def test_show_renders_values_as_messages_quote_them(value: object, shown: str) -> None:
    assert show(value) == shown


def test_show_cuts_a_list_that_fills_the_width_exactly_before_its_next_item() -> None:
    # 80 characters are written when the second item comes: the text is cut, never passed
    # off as a complete list.
    assert show(["x" * 77, "y"]) == "['" + "x" * 75 + "..."


# --------------------------------------------------------------------------- control characters


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a\x1fb", "must not contain control characters (got '\\x1f' at 1)"),
        ("\x7f", "must not contain control characters (got '\\x7f' at 0)"),
        ("ok\x9f", "must not contain control characters (got '\\x9f' at 2)"),
        ("a b~\xa0", None),  # space, tilde and NBSP are printable
    ],
)
def test_control_characters_are_c0_del_and_c1(text: str, problem: str | None) -> None:
    assert control_problem(text) == problem
    assert control_characters(text) is (problem is not None)


# --------------------------------------------------------------------------- URL redaction


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://a@b@host/p", "http://<redacted>@host/p"),  # all of the userinfo, "@" too
        ("http://@host/", "http://@host/"),  # empty userinfo: nothing to hide
        ("http://h/p?a=1?b=2", "http://h/p?a=<redacted>"),  # the first "?" starts the query
        ("http://h/?a=b=c", "http://h/?a=<redacted>"),
        ("http://h/?a=1&&b=2", "http://h/?a=<redacted>&&b=<redacted>"),
        ("http://h/?TOKEN", "http://h/?<redacted>"),
        ("https://h/?next=http://u:p@x/", "https://h/?next=<redacted>"),
        ("http:///path?k=v", "http:///path?k=<redacted>"),
        ("http://h#f?x=1", "http://h#f?x=1"),  # a "?" in the fragment is no query
        ("http://u:p@h?q=1/x", "http://<redacted>@h?q=<redacted>"),
        ("http://h:1/a/b?k=v/w#x", "http://h:1/a/b?k=<redacted>#x"),
        ("http://collector:4318/v1/user@x/traces", "http://collector:4318/v1/user@x/traces"),
        ("http://Xuser:pw@h/", "http://<redacted>@h/"),
        ("http:///a@b/c?k=v", "http:///a@b/c?k=<redacted>"),  # "@" in a path is no userinfo
    ],
)
def test_redact_url_hides_userinfo_and_query_values_only(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# --------------------------------------------------------------------------- errors


def test_field_errors_join_their_paths() -> None:
    assert str(FieldError("", "whole config")) == "whole config"
    assert str(FieldError("a.b", "m")) == "a.b: m"
    assert FieldError("b[0]", "m").under("a") == FieldError("a.b[0]", "m")
    assert FieldError("[2]", "m").under("a") == FieldError("a[2]", "m")
    assert FieldError("", "m").under("a") == FieldError("a", "m")
    assert FieldError("b", "m").under("") == FieldError("b", "m")
    assert (join_path("", "a"), join_path("a", ""), join_path("a", "[0]")) == ("a", "a", "a[0]")


def test_config_error_lists_at_most_100_errors() -> None:
    exactly = ConfigError([FieldError(f"f{i}", "bad") for i in range(100)])
    assert len(exactly.errors) == 100 and exactly.errors[-1] == FieldError("f99", "bad")
    over = ConfigError([FieldError(f"f{i}", "bad") for i in range(102)])
    assert len(over.errors) == 101
    assert over.errors[-1] == FieldError("", "... and 2 more")
    assert str(over).splitlines()[-2:] == ["f99: bad", "... and 2 more"]
    assert str(ConfigError([])) == "invalid config"


def test_config_error_cuts_paths_and_messages_past_500_characters() -> None:
    kept = FieldError("p" * 500, "m" * 500)
    assert ConfigError([kept]).errors == [kept]
    (cut,) = ConfigError([FieldError("p" * 501, "m" * 501)]).errors
    assert cut == FieldError("p" * 497 + "...", "m" * 497 + "...")
    (one,) = ConfigError([FieldError("p", "m" * 501)]).errors
    assert one == FieldError("p", "m" * 497 + "...")
    (other,) = ConfigError([FieldError("p" * 501, "m")]).errors
    assert other == FieldError("p" * 497 + "...", "m")
    # each is cut on its own: 500 characters are kept beside a part that is cut
    assert ConfigError([FieldError("p" * 500, "m" * 501)]).errors == [
        FieldError("p" * 500, "m" * 497 + "...")
    ]
    assert ConfigError([FieldError("p" * 501, "m" * 500)]).errors == [
        FieldError("p" * 497 + "...", "m" * 500)
    ]


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1h1m1s1ms", 3661.001),
        ("1.5ms", 0.0015),
        ("1e3ms", 1.0),
        (" 5 ", 5.0),
        ("1" * 64, float("1" * 64)),  # 64 characters: the longest text read
        (-0.0, 0.0),
    ],
)
def test_duration_parse_takes(value: object, seconds: float) -> None:
    assert Duration.parse(value) == seconds


def test_duration_parse_returns_a_duration_as_it_is() -> None:
    given = Duration(3)
    assert Duration.parse(given) is given


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1" * 65, 'must be a duration like "1.5s", not 65 characters'),
        (
            True,
            'must be a duration like "50ms", "1.5s", "2m", "1h" or a number of seconds (got True)',
        ),
        (
            "inf",
            'must be a duration like "50ms", "1.5s", "2m", "1h" or a number of seconds'
            " (got 'inf')",
        ),
        (10**400, "must be a finite duration (got <an integer of ~400 digits>)"),
        ("-1s", "must not be negative (got '-1s')"),
        (" -5", "must not be negative (got ' -5')"),
        (-1, "must be a finite, non-negative duration (got -1)"),
        (math.nan, "must be a finite, non-negative duration (got nan)"),
        ("1e400s", "must be a finite, non-negative duration (got '1e400s')"),
    ],
)
def test_duration_parse_says_what_is_wrong(value: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        Duration.parse(value)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (86400, "24h"),
        (18000, "5h"),
        (420, "7m"),
        (0.001, "1ms"),
        (0.0005, "0.0005s"),
        (1.0005, "1.0005s"),
        (7200.5, "7200.5s"),
        (59.999, "59.999s"),
        (1e11, "100000000000s"),
        (1e12, "1000000000000.0s"),
        (math.inf, "infs"),
    ],
)
def test_duration_text(seconds: float, text: str) -> None:
    assert str(Duration(seconds)) == text
    assert repr(Duration(seconds)) == f"Duration({text!r})"


def test_duration_ms_rounds() -> None:
    assert [Duration(s).ms for s in (0.0015, 0.0025, 0.0004, 1.5)] == [2, 2, 0, 1500]


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (5, 'must be a "host:port" string (got 5)'),
        ("h", "must be \"host:port\", the port is missing (got 'h')"),
        ("h:", "port must be a number, ASCII digits (got 'h:')"),
        (":80", "invalid host '' (got ':80')"),
        ("[::1]", "must be \"[ipv6]:port\" (got '[::1]')"),
        ("[::1]80", "must be \"[ipv6]:port\" (got '[::1]80')"),
        ("[::1]]:80", "must be \"[ipv6]:port\" (got '[::1]]:80')"),
        ("[::1]:", "port must be a number, ASCII digits (got '[::1]:')"),
        ("[zz]:1", "'zz' is not an IPv6 address (got '[zz]:1')"),
        ("::1:80", "IPv6 addresses need brackets: [ipv6]:port (got '::1:80')"),
        ("a b:80", "invalid host 'a b' (got 'a b:80')"),
        ("-a:80", "invalid host '-a' (got '-a:80')"),
        ("a-:80", "invalid host 'a-' (got 'a-:80')"),
        ("1.2.3:80", "'1.2.3' is not an IPv4 address: four numbers 0..255 (got '1.2.3:80')"),
        ("h:-1", "port must be a number, ASCII digits (got 'h:-1')"),
        ("h\x00:1", "must not contain control characters (got '\\x00' at 1)"),
        ("h:65536", "port must be 1..65535 (got 65536)"),
        ("h:123456", "port must be 1..65535 (got 'h:123456')"),
        ("h:0", "port must be 1..65535 (got 0)"),
    ],
)
def test_host_port_parse_says_what_is_wrong(text: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        HostPort.parse(text)
    assert str(caught.value) == message


def test_listen_addresses_take_port_zero_and_say_so() -> None:
    assert ListenAddress.parse("h:0") == ListenAddress("h", 0)
    for text, message in [
        ("h:65536", "port must be 0..65535 (got 65536)"),
        ("h:123456", "port must be 0..65535 (got 'h:123456')"),
    ]:
        with pytest.raises(ValueError) as caught:
            ListenAddress.parse(text)
        assert str(caught.value) == message
    with pytest.raises(ValueError, match=r"^port must be 0\.\.65535 \(got -1\)$"):
        ListenAddress("a", -1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("_a_:80", HostPort("_a_", 80)),
        ("h:080", HostPort("h", 80)),
        ("h:65535", HostPort("h", 65535)),
        (" h:1 ", HostPort("h", 1)),
        ("h:1", HostPort("h", 1)),
        ("a" * 253 + ":1", HostPort("a" * 253, 1)),  # the longest DNS name
    ],
)
def test_host_port_parse_takes(text: str, expected: HostPort) -> None:
    assert HostPort.parse(text) == expected


def test_host_port_checks_itself_when_built_in_code() -> None:
    with pytest.raises(ValueError, match=r"^host is empty$"):
        HostPort("", 1)
    with pytest.raises(ValueError, match=r"^port must be 1\.\.65535 \(got 0\)$"):
        HostPort("a", 0)
    with pytest.raises(ValueError, match=r"invalid host"):
        HostPort.parse("a" * 254 + ":1")


def test_listeners_overlap_on_the_same_port_of_the_same_host_or_a_wildcard() -> None:
    a1, b1 = ListenAddress("127.0.0.1", 1), ListenAddress("127.0.0.2", 1)
    assert a1.overlaps(ListenAddress("127.0.0.1", 1))
    assert not a1.overlaps(b1)
    assert ListenAddress("0.0.0.0", 1).overlaps(b1) and b1.overlaps(ListenAddress("::", 1))
    assert not a1.overlaps(ListenAddress("127.0.0.1", 2))
    assert not ListenAddress("0.0.0.0", 0).overlaps(ListenAddress("0.0.0.0", 0))
    assert [HostPort(h, 1).is_wildcard for h in ("0.0.0.0", "::", "::1")] == [True, True, False]


# --------------------------------------------------------------------------- the model's checks

MINIMAL: dict[str, Any] = {
    "outbound": {"listen": "127.0.0.1:15001", "routes": [{"prefix": "/", "cluster": "backend"}]},
    "clusters": {"backend": {"target": "static:///127.0.0.1:10000"}},
}


def merged(base: dict[str, Any], patch: dict[Any, Any]) -> dict[str, Any]:
    """``base`` with ``patch`` deep-merged in; a ``...`` value deletes the key."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is ...:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def parse(patch: dict[Any, Any]) -> SidecarConfig:
    return parse_config(merged(MINIMAL, patch), {}, check_files=False)


def errors(patch: dict[Any, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(patch)
    return [str(e) for e in caught.value.errors]


def cluster(**fields: Any) -> dict[str, Any]:
    return {"clusters": {"backend": fields}}


def inbound(**fields: Any) -> dict[str, Any]:
    return {"inbound": {"app": "127.0.0.1:8080", "listen": "127.0.0.1:15006", **fields}}


def route(**fields: Any) -> dict[str, Any]:
    return {"outbound": {"routes": [{"prefix": "/", "cluster": "backend", **fields}]}}


CODE = "expected a grpc.StatusCode name such as UNAVAILABLE or DEADLINE_EXCEEDED"
PINGS = "servers answer faster pings with GOAWAY too_many_pings"
PREFIX = 'must be "/", "/pkg.Service/" or "/pkg.Service/Method"'

REFUSED: list[tuple[str, dict[str, Any], list[str]]] = [
    # (id, patch onto MINIMAL, every error, exactly)
    ("workers-0", {"workers": 0}, ["workers: must be 1..128 (got 0)"]),
    ("workers-129", {"workers": 129}, ["workers: must be 1..128 (got 129)"]),
    (
        "outbound-streams-2^31",
        {"outbound": {"max_concurrent_streams": 2**31}},
        ["outbound.max_concurrent_streams: must be 1..2147483647 (got 2147483648)"],
    ),
    (
        "inbound-streams-0",
        inbound(max_concurrent_streams=0),
        ["inbound.max_concurrent_streams: must be 1..2147483647 (got 0)"],
    ),
    (
        "outlier-failures-0",
        cluster(outlier_detection={"consecutive_failures": 0}),
        ["clusters.backend.outlier_detection.consecutive_failures: must be >= 1 (got 0)"],
    ),
    (
        "outlier-failures-2^31",
        cluster(outlier_detection={"consecutive_failures": 2**31}),
        [
            "clusters.backend.outlier_detection.consecutive_failures: must be at most"
            " 2147483647 (got 2147483648)"
        ],
    ),
    (
        "outlier-percent--1",
        cluster(outlier_detection={"max_ejection_percent": -1}),
        ["clusters.backend.outlier_detection.max_ejection_percent: must be 0..100 (got -1)"],
    ),
    (
        "outlier-percent-101",
        cluster(outlier_detection={"max_ejection_percent": 101}),
        ["clusters.backend.outlier_detection.max_ejection_percent: must be 0..100 (got 101)"],
    ),
    (
        "outlier-base-0",
        cluster(outlier_detection={"base_ejection_time": 0}),
        ["clusters.backend.outlier_detection.base_ejection_time: must be greater than 0 (got 0s)"],
    ),
    (
        "outlier-max-below-base",
        cluster(outlier_detection={"base_ejection_time": "40s", "max_ejection_time": "39s"}),
        [
            "clusters.backend.outlier_detection.max_ejection_time: must be >="
            " base_ejection_time (40s) (got 39s)"
        ],
    ),
    (
        "outlier-no-codes",
        cluster(outlier_detection={"failure_codes": []}),
        ["clusters.backend.outlier_detection.failure_codes: must list at least one status code"],
    ),
    (
        "outlier-unknown-code",
        cluster(outlier_detection={"failure_codes": ["unavailable", "nope"]}),
        [
            "clusters.backend.outlier_detection.failure_codes[1]: unknown status code 'NOPE';"
            f" {CODE}"
        ],
    ),
    (
        "retry-attempts-1",
        cluster(retry={"max_attempts": 1}),
        ["clusters.backend.retry.max_attempts: must be 2..5 (got 1)"],
    ),
    (
        "retry-attempts-6",
        cluster(retry={"max_attempts": 6}),
        ["clusters.backend.retry.max_attempts: must be 2..5 (got 6)"],
    ),
    (
        "retry-code-ok",
        cluster(retry={"retryable_status_codes": ["ok"]}),
        [f"clusters.backend.retry.retryable_status_codes[0]: unknown status code 'OK'; {CODE}"],
    ),
    (
        "retry-no-codes",
        cluster(retry={"retryable_status_codes": []}),
        ["clusters.backend.retry.retryable_status_codes: must list at least one status code"],
    ),
    (
        "retry-initial-0",
        cluster(retry={"initial_backoff": 0}),
        ["clusters.backend.retry.initial_backoff: must be greater than 0 (got 0s)"],
    ),
    (
        "retry-max-below-initial",
        cluster(retry={"initial_backoff": "2s", "max_backoff": "1999ms"}),
        ["clusters.backend.retry.max_backoff: must be >= initial_backoff (2s) (got 1.999s)"],
    ),
    (
        "retry-multiplier-0",
        cluster(retry={"backoff_multiplier": 0}),
        ["clusters.backend.retry.backoff_multiplier: must be greater than 0 (got 0.0)"],
    ),
    (
        "retry-multiplier-100.5",
        cluster(retry={"backoff_multiplier": 100.5}),
        ["clusters.backend.retry.backoff_multiplier: must be at most 100.0 (got 100.5)"],
    ),
    (
        "sample-ratio-negative",
        {"telemetry": {"tracing": {"sample_ratio": -0.1}}},
        ["telemetry.tracing.sample_ratio: must be 0.0..1.0 (got -0.1)"],
    ),
    (
        "sample-ratio-over-1",
        {"telemetry": {"tracing": {"sample_ratio": 1.01}}},
        ["telemetry.tracing.sample_ratio: must be 0.0..1.0 (got 1.01)"],
    ),
    (
        "service-name-blank",
        {"telemetry": {"tracing": {"service_name": " "}}},
        ["telemetry.tracing.service_name: must not be empty"],
    ),
    (
        "otlp-no-host",
        {"telemetry": {"tracing": {"otlp_endpoint": "http:///"}}},
        [
            'telemetry.tracing.otlp_endpoint: must be "host:port" or an http(s) URL'
            " (got 'http:///')"
        ],
    ),
    (
        "otlp-no-port",
        {"telemetry": {"tracing": {"otlp_endpoint": "collector"}}},
        [
            'telemetry.tracing.otlp_endpoint: must be "host:port", the port is missing'
            " (got 'collector')"
        ],
    ),
    (
        "client-keepalive-9.999s",
        cluster(keepalive={"time": "9.999s"}),
        [f"clusters.backend.keepalive.time: must be >= 10s (got 9.999s): {PINGS}"],
    ),
    (
        "client-keepalive-timeout-0",
        cluster(keepalive={"timeout": 0}),
        ["clusters.backend.keepalive.timeout: must be greater than 0 (got 0s)"],
    ),
    (
        "server-keepalive-0",
        {"outbound": {"keepalive": {"time": 0, "timeout": 0}}},
        [
            "outbound.keepalive.time: must be greater than 0 (got 0s)",
            "outbound.keepalive.timeout: must be greater than 0 (got 0s)",
        ],
    ),
    (
        "server-min-ping-25h",
        {"outbound": {"keepalive": {"min_ping_interval": "25h"}}},
        ["outbound.keepalive.min_ping_interval: must be at most 24h (got 25h)"],
    ),
    (
        "app-health-0",
        inbound(app_health={"interval": 0, "timeout": 0}),
        [
            "inbound.app_health.interval: must be greater than 0 (got 0s)",
            "inbound.app_health.timeout: must be greater than 0 (got 0s)",
        ],
    ),
    (
        "app-health-timeout-over-interval",
        inbound(app_health={"interval": "1s", "timeout": "1.5s"}),
        ["inbound.app_health.timeout: must not exceed interval (1s) (got 1.5s)"],
    ),
    (
        "resolver-min-0",
        cluster(resolver={"min_refresh": 0}),
        ["clusters.backend.resolver.min_refresh: must be greater than 0 (got 0s)"],
    ),
    (
        "resolver-max-below-min",
        cluster(resolver={"min_refresh": "2s", "max_refresh": "1s"}),
        ["clusters.backend.resolver.max_refresh: must be >= min_refresh (2s) (got 1s)"],
    ),
    (
        "cluster-timeouts-0",
        cluster(timeout=0, connect_timeout=0),
        [
            "clusters.backend.timeout: must be greater than 0 (got 0s)",
            "clusters.backend.connect_timeout: must be greater than 0 (got 0s)",
        ],
    ),
    (
        "cluster-timeout-25h",
        cluster(timeout="25h"),
        ["clusters.backend.timeout: must be at most 24h (got 25h)"],
    ),
    (
        "target-scheme",
        cluster(target="bogus:///x"),
        [
            "clusters.backend.target: target 'bogus:///x': no resolver for scheme 'bogus';"
            " known: dns, dns+srv, ipv4, ipv6, static, unix"
        ],
    ),
    (
        "cluster-tls-cert-alone",
        cluster(tls={"cert": "/c"}),
        ["clusters.backend.tls.key: required together with cert"],
    ),
    (
        "cluster-tls-key-alone",
        cluster(tls={"key": "/k"}),
        ["clusters.backend.tls.cert: required together with key"],
    ),
    (
        "cluster-tls-server-name-blank",
        cluster(tls={"server_name": " "}),
        ["clusters.backend.tls.server_name: must not be empty"],
    ),
    (
        "route-timeout-0",
        route(timeout=0),
        ["outbound.routes[0].timeout: must be greater than 0 (got 0s)"],
    ),
    (
        "route-timeout-25h",
        route(timeout="25h"),
        ["outbound.routes[0].timeout: must be at most 24h (got 25h)"],
    ),
    (
        "route-kind",
        route(kind="bidi"),
        [
            "outbound.routes[0].kind: must be one of stream_stream, unary_unary, unary_stream,"
            " stream_unary (got 'bidi')"
        ],
    ),
    (
        "route-prefix-empty",
        route(prefix=""),
        [f"outbound.routes[0].prefix: {PREFIX} (got ''); did you mean '/'?"],
    ),
    (
        "route-prefix-hint",
        route(prefix="/pkg.Svc"),
        [f"outbound.routes[0].prefix: {PREFIX} (got '/pkg.Svc'); did you mean '/pkg.Svc/'?"],
    ),
    (
        "route-prefix-relative",
        route(prefix="pkg"),
        [f"outbound.routes[0].prefix: {PREFIX} (got 'pkg')"],
    ),
    (
        "route-prefix-space",
        route(prefix="/a b/"),
        [f"outbound.routes[0].prefix: {PREFIX} (got '/a b/')"],
    ),
    ("route-cluster-empty", route(cluster=""), ["outbound.routes[0].cluster: must not be empty"]),
    (
        "route-cluster-blank",
        route(cluster=" "),
        [
            "outbound.routes[0].cluster: must not be empty",
            "outbound.routes[0].cluster: no cluster named ' ' (clusters: backend)",
        ],
    ),
    ("no-routes", {"outbound": {"routes": []}}, ["outbound.routes: must list at least one route"]),
    (
        "route-cluster-missing",  # only "required": no lookup of a cluster it does not name
        {"outbound": {"routes": [{"prefix": "/"}]}},
        ["outbound.routes[0].cluster: required"],
    ),
    (
        "route-repeated",
        {
            "outbound": {
                "routes": [
                    {"prefix": "/a.B/", "cluster": "backend"},
                    {"prefix": "/a.B/", "cluster": "backend"},
                ]
            }
        },
        [
            "outbound.routes[1].prefix: unreachable: routes[0] (prefix '/a.B/') takes every"
            " call '/a.B/' would, first"
        ],
    ),
    (
        "route-cluster-unknown",
        {
            "clusters": {
                "backend": ...,
                "b": {"target": "static:///127.0.0.1:1"},
                "a": {"target": "static:///127.0.0.1:1"},
            },
            **route(cluster="x"),
        },
        ["outbound.routes[0].cluster: no cluster named 'x' (clusters: a, b)"],
    ),
    (
        "route-cluster-none-defined",
        {"clusters": ..., **route(cluster="x")},
        ["outbound.routes[0].cluster: no cluster named 'x' (clusters: none defined)"],
    ),
    (
        "cluster-name",
        {"clusters": {"Bad": {"target": "static:///127.0.0.1:1"}}},
        ["clusters.Bad: cluster names must match [a-z0-9_.-]+"],
    ),
    (
        "listeners-collide",
        {"admin": {"listen": "0.0.0.0:15001"}, **inbound(listen="[::]:15001")},
        [
            "outbound.listen: 127.0.0.1:15001 collides with admin.listen (0.0.0.0:15001)",
            "inbound.listen: [::]:15001 collides with admin.listen (0.0.0.0:15001)",
            "inbound.listen: [::]:15001 collides with outbound.listen (127.0.0.1:15001)",
        ],
    ),
    (
        "port-0-workers",
        {"workers": 2, "outbound": {"listen": "127.0.0.1:0"}, "admin": {"listen": "127.0.0.1:0"}},
        [
            "admin.listen: port 0 needs workers: 1 (each worker would get its own port)",
            "outbound.listen: port 0 needs workers: 1 (each worker would get its own port)",
        ],
    ),
    (
        "log-level",
        {"log_level": "LOUD"},
        ["log_level: must be one of debug, info, warning, error, critical (got 'loud')"],
    ),
    (
        "data-plane",
        {"data_plane": "Rust"},
        ["data_plane: must be one of envoy, python, or null to pick envoy when found (got 'rust')"],
    ),
    (
        "no-listener",
        {"outbound": ...},
        ["at least one of 'outbound' or 'inbound' must be configured"],
    ),
    (
        "inbound-loop",
        {"inbound": {"app": "127.0.0.1:8080", "listen": "0.0.0.0:8080"}},
        ["inbound.app: 127.0.0.1:8080 is the inbound listener itself (0.0.0.0:8080): a loop"],
    ),
    (
        "inbound-tls-client-ca",
        inbound(tls={"cert": "/c", "key": "/k"}),
        [
            "inbound.tls.client_ca: required when require_client_cert is true"
            " (set require_client_cert: false for TLS without client certificates)"
        ],
    ),
    (
        "auth-header-bin",
        inbound(auth={"tokens_file": "/t", "header": "x-tok-bin"}),
        ["inbound.auth.header: must be an ASCII metadata key, not -bin (got 'x-tok-bin')"],
    ),
    (
        "auth-header-space",
        inbound(auth={"tokens_file": "/t", "header": "X Tok"}),
        ["inbound.auth.header: must be an ASCII metadata key, not -bin (got 'x tok')"],
    ),
    (
        "auth-header-grpc",
        inbound(auth={"tokens_file": "/t", "header": "grpc-token"}),
        ["inbound.auth.header: grpc-* keys are reserved (got 'grpc-token')"],
    ),
    (
        "auth-scheme-words",
        inbound(auth={"tokens_file": "/t", "scheme": "two words"}),
        ["inbound.auth.scheme: must be one word or empty (got 'two words')"],
    ),
    (
        "auth-scheme-padded",
        inbound(auth={"tokens_file": "/t", "scheme": "Bearer "}),
        ["inbound.auth.scheme: must be one word or empty (got 'Bearer ')"],
    ),
    (
        "drain-61m",
        {"drain": {"drain_delay": "61m"}},
        ["drain.drain_delay: must be at most 1h (got 61m)"],
    ),
    (
        "envoy-log-level",
        {"envoy": {"log_level": "LOUD"}},
        [
            "envoy.log_level: must be one of trace, debug, info, warning, error, critical, off"
            " (got 'loud')"
        ],
    ),
]


@pytest.mark.parametrize(
    ("patch", "expected"), [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED]
)
def test_each_check_names_its_field_and_says_exactly_what_is_wrong(
    patch: dict[str, Any], expected: list[str]
) -> None:
    assert errors(patch) == expected


ACCEPTED: list[tuple[str, dict[str, Any]]] = [
    # every bound, exactly at its edge
    ("workers-1", {"workers": 1}),
    ("workers-128", {"workers": 128}),
    ("streams-max", {"outbound": {"max_concurrent_streams": 2**31 - 1}}),
    ("streams-1", inbound(max_concurrent_streams=1)),
    ("outlier-failures-1", cluster(outlier_detection={"consecutive_failures": 1})),
    ("outlier-percent-0", cluster(outlier_detection={"max_ejection_percent": 0})),
    ("outlier-percent-100", cluster(outlier_detection={"max_ejection_percent": 100})),
    (
        "outlier-max-equals-base",
        cluster(outlier_detection={"base_ejection_time": "40s", "max_ejection_time": "40s"}),
    ),
    ("retry-attempts-2", cluster(retry={"max_attempts": 2})),
    ("retry-attempts-5", cluster(retry={"max_attempts": 5})),
    ("retry-max-equals-initial", cluster(retry={"initial_backoff": "1s", "max_backoff": "1s"})),
    ("retry-multiplier-100", cluster(retry={"backoff_multiplier": 100})),
    ("retry-multiplier-tiny", cluster(retry={"backoff_multiplier": 1e-9})),
    ("sample-ratio-0", {"telemetry": {"tracing": {"sample_ratio": 0}}}),
    ("sample-ratio-1", {"telemetry": {"tracing": {"sample_ratio": 1}}}),
    ("client-keepalive-10s", cluster(keepalive={"time": "10s", "timeout": "1ms"})),
    ("app-health-timeout-equals-interval", inbound(app_health={"interval": "1s", "timeout": "1s"})),
    ("resolver-max-equals-min", cluster(resolver={"min_refresh": "2s", "max_refresh": "2s"})),
    ("route-timeout-24h", route(timeout="24h")),
    ("drain-1h", {"drain": {"drain_delay": "1h", "grace_period": "1h"}}),
    ("auth-header-binary", inbound(auth={"tokens_file": "/t", "header": "binary", "scheme": ""})),
    ("otlp-url-in-query", {"telemetry": {"tracing": {"otlp_endpoint": "http://a/?x=ftp://b"}}}),
    ("otlp-host-port", {"telemetry": {"tracing": {"otlp_endpoint": "collector:4317"}}}),
    ("otlp-url-one-letter-host", {"telemetry": {"tracing": {"otlp_endpoint": "http://X/"}}}),
    (
        "log-level-any-case",
        {"log_level": "DEBUG", "data_plane": "ENVOY", "envoy": {"log_level": "Off"}},
    ),
]


@pytest.mark.parametrize(
    "patch", [case[1] for case in ACCEPTED], ids=[case[0] for case in ACCEPTED]
)
def test_values_at_each_edge_are_accepted(patch: dict[str, Any]) -> None:
    assert isinstance(parse(patch), SidecarConfig)


def test_names_are_normalized() -> None:
    config = parse(
        {
            "log_level": "DEBUG",
            "data_plane": "ENVOY",
            "envoy": {"log_level": "Off"},
            **inbound(auth={"tokens_file": "/t", "header": "X-Token"}),
            **cluster(
                retry={"retryable_status_codes": ["unavailable", "Internal"]},
                outlier_detection={"failure_codes": ["data_loss"]},
            ),
        }
    )
    assert (config.log_level, config.data_plane, config.envoy.log_level) == (
        "debug",
        "envoy",
        "off",
    )
    assert config.inbound is not None and config.inbound.auth is not None
    assert config.inbound.auth.header == "x-token"
    backend = config.clusters["backend"]
    assert backend.retry is not None and backend.outlier_detection is not None
    assert backend.retry.retryable_status_codes == ("UNAVAILABLE", "INTERNAL")
    assert backend.outlier_detection.failure_codes == ("DATA_LOSS",)
    assert config.listeners() == {
        "admin.listen": ListenAddress("127.0.0.1", 9901),
        "outbound.listen": ListenAddress("127.0.0.1", 15001),
        "inbound.listen": ListenAddress("127.0.0.1", 15006),
    }


def test_sections_built_in_code_check_every_field_after_the_first_bad_one() -> None:
    from sidecar.config import HealthCheckConfig, KeepaliveConfig, RetryConfig, TracingConfig

    def refused(build: Any, **fields: Any) -> list[str]:
        with pytest.raises(ConfigError) as caught:
            build(**fields)
        return [str(e) for e in caught.value.errors]

    assert refused(KeepaliveConfig, time=Duration(math.inf), timeout=Duration(90_000)) == [
        "time: must be a finite number (got infs)",
        "timeout: must be at most 24h (got 25h)",
    ]
    assert refused(HealthCheckConfig, service="a\nb") == [
        "service: must not contain control characters (got '\\n' at 1)"
    ]
    assert refused(RetryConfig, backoff_multiplier=math.inf) == [
        "backoff_multiplier: must be a finite number (got inf)"
    ]
    # a field its own checks already named is not named twice
    assert refused(TracingConfig, sample_ratio=math.nan) == [
        "sample_ratio: must be 0.0..1.0 (got nan)"
    ]


def test_sections_built_in_code_are_normalized() -> None:
    from sidecar.config import ClusterConfig, OutboundConfig, RetryConfig, Route

    retry = RetryConfig(retryable_status_codes=["unavailable"])  # type: ignore[arg-type]
    assert retry.retryable_status_codes == ("UNAVAILABLE",)
    outbound = OutboundConfig(routes=[Route(prefix="/", cluster="a")])  # type: ignore[arg-type]
    assert outbound.routes == (Route(prefix="/", cluster="a"),)
    config = SidecarConfig(
        outbound=outbound,
        clusters={"a": ClusterConfig(target="static:///127.0.0.1:1")},
        log_level="INFO",
        data_plane="Python",
    )
    assert (config.log_level, config.data_plane) == ("info", "python")
    with pytest.raises(TypeError):
        config.clusters["b"] = config.clusters["a"]  # type: ignore[index]


def test_an_unknown_policy_lists_the_registered_ones() -> None:
    import balancers

    # other tests may register policies of their own: the list is the registry's, sorted
    known = ", ".join(sorted(set(balancers.policy_names()) | {"pick_first", "round_robin"}))
    assert {"pick_first", "round_robin", "weighted_round_robin"} <= set(known.split(", "))
    assert errors(cluster(lb_policy="magic")) == [
        f"clusters.backend.lb_policy: unknown policy 'magic' (known: {known})"
    ]


def test_the_envoy_binary_must_be_executable(tmp_path: Path) -> None:
    plain = tmp_path / "envoy"
    plain.write_text("#!/bin/sh\n")
    assert errors({"envoy": {"binary": str(plain)}}) == [
        f"envoy.binary: '{plain}' is not an executable file"
    ]
    plain.chmod(plain.stat().st_mode | stat.S_IXUSR)
    assert parse({"envoy": {"binary": str(plain)}}).envoy.binary == str(plain)
    assert parse({"envoy": {"binary": sys.executable}}).envoy.binary == sys.executable


# --------------------------------------------------------------------------- warnings

DRAIN = (
    "drain_delay + grace_period = {} exceeds Kubernetes' default terminationGracePeriodSeconds"
    " (30s); raise it in the pod spec"
)
FAST_PINGS = (
    "{} is below 5m, the default gRPC server's minimum ping interval; unless the upstream"
    " permits it (min_ping_interval), it answers GOAWAY too_many_pings"
)


@pytest.mark.parametrize(
    ("patch", "warnings"),
    [
        ({}, []),
        ({"drain": {"drain_delay": "10s", "grace_period": "20s"}}, []),  # exactly 30s
        (
            {"drain": {"drain_delay": "10s", "grace_period": "20.001s"}},
            ["drain: " + DRAIN.format("30.001s")],
        ),
        (cluster(keepalive={"time": "300s"}), []),
        (
            cluster(keepalive={"time": "299s"}),
            ["clusters.backend.keepalive.time: " + FAST_PINGS.format("299s")],
        ),
        (
            {"clusters": {"unused": {"target": "static:///127.0.0.1:1"}}},
            ["clusters.unused: defined but no route uses it"],
        ),
        (
            {"outbound": ..., **inbound()},
            ["clusters.backend: defined but no route uses it"],
        ),
        (
            {"outbound": {"listen": "0.0.0.0:15001"}},
            ["outbound.listen: not a loopback address: other hosts can use it"],
        ),
        ({"outbound": {"listen": "[::1]:15001"}}, []),
        ({"outbound": {"listen": "localhost:15001"}}, []),
        (
            inbound(listen="0.0.0.0:15006", auth={"tokens_file": "/t"}),
            [
                "inbound.tls: absent: peers talk to this pod in clear",
                "inbound.auth: tokens travel in clear without tls",
            ],
        ),
        (
            inbound(auth={"tokens_file": "/t"}),
            ["inbound.auth: tokens travel in clear without tls"],
        ),
        (inbound(listen="0.0.0.0:15006", tls={"cert": "/c", "key": "/k", "client_ca": "/a"}), []),
    ],
)
def test_warnings_name_the_risky_setting(patch: dict[str, Any], warnings: list[str]) -> None:
    assert [str(w) for w in parse(patch).warnings()] == warnings


# --------------------------------------------------------------------------- loading


def test_the_config_path_comes_from_the_process_environment_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    monkeypatch.setenv("MESHKIT_CONFIG", str(path))
    monkeypatch.setenv("MESHKIT_LOG_LEVEL", "debug")
    assert load_config(None).log_level == "debug"
    monkeypatch.delenv("MESHKIT_CONFIG")
    with pytest.raises(ConfigError) as caught:
        load_config(None)
    assert caught.value.errors == [
        FieldError("", "no config file: pass --config FILE or set MESHKIT_CONFIG")
    ]


def test_an_explicit_environment_replaces_the_process_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sidecar.config import resolve_config_path

    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    monkeypatch.setenv("MESHKIT_CONFIG", str(path))
    monkeypatch.setenv("MESHKIT_WORKERS", "3")
    assert resolve_config_path(None) == str(path)
    assert resolve_config_path(None, {"MESHKIT_CONFIG": "/other.yaml"}) == "/other.yaml"
    assert load_config(str(path), environ={}).workers == 1
    assert load_config(str(path)).workers == 3


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    secret = tmp_path / "tokens"
    secret.write_text("t\n")
    secret.chmod(0)
    raw = merged(MINIMAL, inbound(auth={"tokens_file": str(secret)}))
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, {})
    assert [str(e) for e in caught.value.errors] == [
        f"inbound.auth.tokens_file: not readable: {secret}"
    ]


def test_parse_config_reads_overrides_from_the_process_environment_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MESHKIT_WORKERS", "3")
    assert parse_config(MINIMAL, check_files=False).workers == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty; expected a mapping of sections"),
        ("# nothing\n", "empty; expected a mapping of sections"),
        ("[1, 2]\n", "top level must be a mapping of sections (got [1, 2])"),
    ],
)
def test_a_file_without_sections_is_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), environ={})
    assert caught.value.errors == [FieldError(str(path), message)]


def test_files_are_checked_unless_told_otherwise(tmp_path: Path) -> None:
    raw = merged(
        MINIMAL, inbound(tls={"cert": "c.crt", "key": "k.key", "require_client_cert": False})
    )
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), environ={})
    assert [str(e) for e in caught.value.errors] == [
        f"inbound.tls.cert: no such file: {tmp_path / 'c.crt'}",
        f"inbound.tls.key: no such file: {tmp_path / 'k.key'}",
    ]
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, {})
    assert [e.path for e in caught.value.errors] == ["inbound.tls.cert", "inbound.tls.key"]
    # relative paths: from the config file's directory, else the working directory
    loaded = load_config(str(path), environ={}, check_files=False)
    assert loaded.inbound is not None and loaded.inbound.tls is not None
    assert loaded.inbound.tls.cert == str(tmp_path / "c.crt")
    parsed = parse_config(raw, {}, check_files=False)
    assert parsed.inbound is not None and parsed.inbound.tls is not None
    assert parsed.inbound.tls.key == os.path.join(os.getcwd(), "k.key")


def test_parse_config_refuses_what_is_not_a_mapping() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config([1], {})  # type: ignore[arg-type]
    assert caught.value.errors == [FieldError("", "must be a mapping of sections (got [1])")]


def test_errors_an_override_causes_name_its_variable() -> None:
    environ = {
        "MESHKIT_WORKERS": "0",
        "MESHKIT_ADMN__LISTEN": "x",
        "MESHKIT_INBOUND__TLS": "{cert: /nope.crt, key: /nope.key, require_client_cert: false}",
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(merged(MINIMAL, inbound()), environ)
    assert [str(e) for e in caught.value.errors] == [
        "MESHKIT_ADMN__LISTEN: no config section 'admn'; 'admin'?",
        "inbound.tls.cert: no such file: /nope.crt (set by MESHKIT_INBOUND__TLS)",
        "inbound.tls.key: no such file: /nope.key (set by MESHKIT_INBOUND__TLS)",
        "workers: must be 1..128 (got 0) (set by MESHKIT_WORKERS)",
    ]


def test_a_mapping_past_the_limits_is_refused_before_it_is_read() -> None:
    clusters = {f"c{i}": {"target": "static:///127.0.0.1:1"} for i in range(1001)}
    with pytest.raises(ConfigError) as caught:
        parse_config({**MINIMAL, "clusters": clusters}, {})
    assert [str(e) for e in caught.value.errors] == [
        "clusters: 1001 entries; at most 1000 in one mapping or list"
    ]
    # an override can push a mapping past them too: named by the variable
    del clusters["c0"]
    with pytest.raises(ConfigError) as caught:
        parse_config(
            {**MINIMAL, "clusters": clusters}, {"MESHKIT_CLUSTERS__EXTRA__TARGET": "static:///a:1"}
        )
    assert [str(e) for e in caught.value.errors] == [
        "clusters: 1001 entries; at most 1000 in one mapping or list"
        " (set by MESHKIT_CLUSTERS__EXTRA__TARGET)"
    ]


# --------------------------------------------------------------------------- reading: types

READ: list[tuple[str, dict[Any, Any], list[str]]] = [
    ("key-not-a-string", {1: 2}, ["1: keys must be strings"]),
    (
        "unknown-key-close",
        {"admin": {"lissen": "x"}},
        ["admin.lissen: unknown key (did you mean 'listen'?)"],
    ),
    (
        "unknown-key-far",
        {"admin": {"zzz": 1}},
        ["admin.zzz: unknown key (known: listen, expose_debug)"],
    ),
    (
        "unknown-keys-known",
        {"drain": {"zzz": 1}},
        [
            "drain.zzz: unknown key (known: drain_delay, grace_period, outbound_idle,"
            " outbound_max_wait)"
        ],
    ),
    (
        "name-not-a-string",
        {"clusters": {5: {"target": "x"}}},
        ["clusters.5: names must be strings"],
    ),
    (
        "name-control",
        {"clusters": {"a\x01": {"target": "static:///127.0.0.1:1"}}},
        ["clusters.'a\\x01': names must not contain control characters"],
    ),
    ("names-not-a-mapping", {"clusters": "x"}, ["clusters: must be a mapping of names (got 'x')"]),
    (
        "list-not-a-list",
        {"outbound": {"routes": "x"}},
        ["outbound.routes: must be a list (got 'x')"],
    ),
    (
        "list-item",
        {"outbound": {"routes": ["x"]}},
        ["outbound.routes[0]: must be a mapping (got 'x')"],
    ),
    (
        "list-item-type",
        cluster(outlier_detection={"failure_codes": [5]}),
        ["clusters.backend.outlier_detection.failure_codes[0]: must be a string (got 5); quote it"],
    ),
    (
        "key-64",
        {"admin": {"k" * 64: 1}},
        [f"admin.{'k' * 64}: unknown key (known: listen, expose_debug)"],
    ),
    (
        "key-65",
        {"admin": {"k" * 65: 1}},
        [f"admin.'{'k' * 65}': unknown key (known: listen, expose_debug)"],
    ),
    ("section-not-a-mapping", {"drain": 5}, ["drain: must be a mapping (got 5)"]),
    (
        "bool",
        {"telemetry": {"prometheus": "yes"}},
        ["telemetry.prometheus: must be true or false (got 'yes')"],
    ),
    ("int-float", {"workers": 1.5}, ["workers: must be an integer (got 1.5)"]),
    ("int-bool", {"workers": True}, ["workers: must be an integer (got True)"]),
    (
        "float-bool",
        {"telemetry": {"tracing": {"sample_ratio": True}}},
        ["telemetry.tracing.sample_ratio: must be a number (got True)"],
    ),
    (
        "float-65-bits",
        {"telemetry": {"tracing": {"sample_ratio": 2**64}}},
        ["telemetry.tracing.sample_ratio: must be a finite number (got 18446744073709551616)"],
    ),
    (
        "float-64-bits",
        {"telemetry": {"tracing": {"sample_ratio": 2**64 - 1}}},
        ["telemetry.tracing.sample_ratio: must be 0.0..1.0 (got 1.8446744073709552e+19)"],
    ),
    (
        "float-inf",
        {"telemetry": {"tracing": {"sample_ratio": math.inf}}},
        ["telemetry.tracing.sample_ratio: must be a finite number (got inf)"],
    ),
    ("str-int", {"log_level": 5}, ["log_level: must be a string (got 5); quote it"]),
    (
        "str-control",
        {"log_level": "a\x1bb"},
        ["log_level: must not contain control characters (got '\\x1b' at 1)"],
    ),
    (
        "file-blank",
        inbound(tls={"cert": " ", "key": "/k", "require_client_cert": False}),
        ["inbound.tls.cert: must be a file path"],
    ),
    (
        "required-and-broken",
        {"inbound": {"listen": "127.0.0.1:15006", "app": 5, "auth": {}}},
        ['inbound.app: must be a "host:port" string (got 5)', "inbound.auth.tokens_file: required"],
    ),
]


@pytest.mark.parametrize(
    ("patch", "expected"), [case[1:] for case in READ], ids=[case[0] for case in READ]
)
def test_each_value_is_read_as_its_type_or_named(
    patch: dict[Any, Any], expected: list[str]
) -> None:
    assert errors(patch) == expected


def test_a_home_relative_file_is_expanded() -> None:
    config = parse(inbound(auth={"tokens_file": "~/tokens"}))
    assert config.inbound is not None and config.inbound.auth is not None
    assert config.inbound.auth.tokens_file == os.path.expanduser("~/tokens")


def test_past_100_errors_unknown_keys_skip_the_suggestion() -> None:
    parser = _config_parse.Parser("/", check_files=False)
    parser.section(SidecarConfig, {f"lisen{i}": 1 for i in range(102)}, "")
    messages = [e.message for e in parser.errors[:102]]
    assert messages[99].startswith("unknown key (")
    assert messages[100:] == ["unknown key", "unknown key"]


# --------------------------------------------------------------------------- reading: limits


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def test_shape_limits_hold_exactly_at_their_numbers() -> None:
    shape = _config_parse.shape_problem
    assert shape(nested(64)) is None
    assert shape(nested(65)) == FieldError("[0]" * 64, "nesting deeper than 64 levels")
    assert shape({"a": nested(63)}) is None
    assert shape(["x"] * 1000) is None
    assert shape(["x"] * 1001) == FieldError(
        "", "1001 entries; at most 1000 in one mapping or list"
    )
    assert shape("x" * 65536) is None and shape({"k" * 65536: 1}) is None
    assert shape({"a": [1, "x" * 65537]}) == FieldError(
        "a[1]", "a value of 65537 characters; at most 65536"
    )
    assert shape(b"x" * 65537) == FieldError("", "a value of 65537 characters; at most 65536")
    assert shape({"k" * 65537: 1}) == FieldError("", "a key of 65537 characters")
    long_key = "k" * 65
    assert shape({long_key: {"b": "x" * 65537}}) == FieldError(
        f"{show(long_key)}.b", "a value of 65537 characters; at most 65536"
    )
    assert shape({5: {"b": "x" * 65537}}, "root") == FieldError(
        "root.5.b", "a value of 65537 characters; at most 65536"
    )
    assert shape(["x", ("y", {"z": [nested(0)]}), {"a", "b"}, frozenset()]) is None


def test_shape_counts_every_key_and_value() -> None:
    # 1 + 20 x (1 key + 1 list + 998 items) = 20001 values
    wide = {f"k{i}": ["x"] * 998 for i in range(20)}
    problem = _config_parse.shape_problem(wide)
    assert problem is not None and problem.message == "more than 20000 values in all"
    wide["k19"] = wide["k19"][:-1]
    assert _config_parse.shape_problem(wide) is None
    lists = [["x"] * 999 for _ in range(20)]  # 1 + 20 x 1000
    problem = _config_parse.shape_problem(lists)
    assert problem is not None and problem.message == "more than 20000 values in all"
    lists[-1] = lists[-1][:-1]
    assert _config_parse.shape_problem(lists) is None


LOADERS = [_config_parse.PureLoader, _config_parse.Loader]


def load(text: str, loader: Any) -> Any:
    return _config_parse.load_yaml(text, loader)


def refused_at(text: str, loader: Any) -> tuple[str, int, int]:
    """The problem and the (line, column) of the YAML error ``text`` raises."""
    with pytest.raises(yaml.MarkedYAMLError) as caught:
        load(text, loader)
    mark = caught.value.problem_mark
    assert mark is not None
    return str(caught.value.problem), mark.line, mark.column


def depth_of(value: Any) -> int:
    """Nodes from the top of ``value`` down to its first innermost one."""
    return 1 + depth_of(value[0]) if isinstance(value, list) and value else 1


def block(depth: int) -> str:
    """Block sequences ``depth`` deep around a null: ``depth + 1`` nodes."""
    return "".join("  " * i + "-\n" for i in range(depth))


@pytest.mark.parametrize("loader", LOADERS)
def test_yaml_limits_hold_exactly_at_their_numbers(loader: Any) -> None:
    assert load("[" + ",".join(["1"] * 1000) + "]", loader) == [1] * 1000
    assert refused_at("[" + ",".join(["1"] * 1001) + "]", loader) == (
        "more than 1000 entries in one mapping or list",
        0,
        2001,
    )
    assert refused_at("\n".join(["- 1"] * 1001), loader) == (
        "more than 1000 entries in one mapping or list",
        1000,
        2,
    )
    assert depth_of(load(block(63), loader)) == 64  # 63 sequences around a null
    assert depth_of(load("[" * 64 + "]" * 64, loader)) == 64
    # the 65th node: the null inside 64 sequences, or the 65th sequence
    assert refused_at(block(64), loader) == ("nesting deeper than 64 levels", 63, 127)
    for depth in (65, 66, 100):
        assert refused_at(block(depth), loader) == ("nesting deeper than 64 levels", 64, 128)
    assert refused_at("[" * 65 + "]" * 65, loader) == ("nesting deeper than 64 levels", 0, 64)
    assert load("a: " + "1" * 100, loader) == {"a": int("1" * 100)}
    assert refused_at("a: " + "1" * 101, loader) == ("an integer of 101 characters", 0, 3)


@pytest.mark.parametrize("loader", LOADERS)
def test_yaml_nesting_is_counted_after_a_sibling_too(loader: Any) -> None:
    # a chain beside a scalar, two levels down: 64 nodes deep is read, 65 refused
    assert depth_of(load("[[x, " + "[" * 62 + "]" * 62 + "]]", loader)[0][1]) == 62
    assert refused_at("[[x, " + "[" * 63 + "]" * 63 + "]]", loader) == (
        "nesting deeper than 64 levels",
        0,
        67,
    )


@pytest.mark.parametrize("loader", LOADERS)
def test_yaml_values_count_aliases_in_full(loader: Any) -> None:
    def document(aliases: int, tail: int) -> str:
        # 1 root + 1000 for the anchored list + 1000 per alias + (1 + tail) for the last list
        anchored = "&a [" + ",".join(["1"] * 999) + "]"
        return (
            "[" + ", ".join([anchored, *["*a"] * aliases, "[" + ",".join(["2"] * tail) + "]"]) + "]"
        )

    assert len(load(document(18, 998), loader)) == 20  # 20000 values
    problem, _, _ = refused_at(document(18, 999), loader)  # 20001
    assert (
        problem == "more than 20000 values in all (an alias counts as a full copy of what it names)"
    )
    assert load("[&s x, *s, *s]", loader) == ["x", "x", "x"]
    assert refused_at("a: &x [*x]\n", loader) == (
        "alias *x is inside the node it names (a recursive structure)",
        0,
        7,
    )


@pytest.mark.parametrize("loader", LOADERS)
def test_yaml_mappings_refuse_duplicate_keys_only(loader: Any) -> None:
    assert refused_at("a: 1\nb: 2\na: 3\n", loader) == ("duplicate key 'a'", 2, 0)
    merged_twice = load("x: &x {b: 1}\ny: &y {c: 2}\nz: {<<: *x, <<: *y}\n", loader)
    assert merged_twice["z"] == {"b": 1, "c": 2}
    assert refused_at("? [a, b]\n: 1\n", loader) == ("found unhashable key", 0, 2)
    assert refused_at("a: 2020-13-45\n", loader) == (
        "cannot read this value: month must be in 1..12",
        0,
        3,
    )


def write(tmp_path: Path, content: str | bytes) -> Path:
    path = tmp_path / "sidecar.yaml"
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("content", "where", "message"),
    [
        (
            "a: 2020-13-45\n",
            ":1:4",
            "YAML syntax error: cannot read this value: month must be in 1..12",
        ),
        (
            "a: 1\na: 2\n",
            ":2:1",
            "YAML syntax error: duplicate key 'a' (while constructing a mapping)",
        ),
        (
            "a: [1\n",
            ":2:1",
            "YAML syntax error: did not find expected ',' or ']' (while parsing a flow sequence)",
        ),
        (
            "a: \x07\n",
            "",
            "YAML syntax error: unacceptable character #x0007: control characters are not allowed",
        ),
        ("a: " + "1" * 101, ":1:4", "YAML syntax error: an integer of 101 characters"),
        (block(65), ":65:129", "refused: nesting deeper than 64 levels"),
        (b"\xff\xfe", "", "not UTF-8 text (invalid start byte)"),
    ],
)
def test_file_errors_name_the_file_line_and_column(
    tmp_path: Path, content: str | bytes, where: str, message: str
) -> None:
    path = write(tmp_path, content)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), environ={})
    assert caught.value.errors == [FieldError(f"{path}{where}", message)]


def test_a_file_of_exactly_the_size_limit_is_read(tmp_path: Path) -> None:
    text = yaml.safe_dump(MINIMAL)
    path = write(tmp_path, text + "#" * (_config_parse.MAX_FILE_BYTES - len(text) - 1) + "\n")
    assert path.stat().st_size == _config_parse.MAX_FILE_BYTES
    assert load_config(str(path), environ={}).workers == 1
    path.write_text(path.read_text() + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), environ={})
    assert caught.value.errors == [
        FieldError(str(path), "larger than 1048576 bytes; a sidecar config is a few KiB")
    ]


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(str(tmp_path), environ={})
    assert caught.value.errors == [FieldError(str(tmp_path), "cannot read: Is a directory")]


# --------------------------------------------------------------------------- overrides

SECTIONS = ("admin", "outbound", "clusters", "workers", "log_level")
RAW: dict[str, Any] = {
    "outbound": {"routes": [{"prefix": "/", "cluster": "a"}]},
    "clusters": {"Echo": {"target": "x"}},
    "workers": 1,
}


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"MESHKIT_OUTBOUND__ROUTES__1__CLUSTER": "b"},
            "outbound.routes has 1 items; no index '1'",
        ),
        (
            {"MESHKIT_OUTBOUND__ROUTES__X__CLUSTER": "b"},
            "outbound.routes has 1 items; no index 'X'",
        ),
        (
            {"MESHKIT_OUTBOUND__ROUTES__0000000000__CLUSTER": "b"},
            "outbound.routes has 1 items; no index '0000000000'",
        ),
        (
            {"MESHKIT_OUTBOUND__ROUTES__\u0660__CLUSTER": "b"},
            "outbound.routes has 1 items; no index '\u0660'",
        ),
        ({"MESHKIT_WORKERS__X": "1"}, "workers is 1, not a mapping"),
        (
            {"MESHKIT_CLUSTERS____TARGET": "t"},
            "expected MESHKIT_SECTION__FIELD with non-empty parts",
        ),
        ({"MESHKIT_ADMN": "1"}, "no config section 'admn'; 'admin'?"),
        ({"MESHKIT_LOG_LEVEL": "x" * (64 << 10 | 1)}, "65537 characters long; at most 65536"),
        (
            {"MESHKIT_LOG_LEVEL": "[1"},
            "not a valid YAML value: did not find expected ',' or ']'"
            " (while parsing a flow sequence)",
        ),
        (
            {"MESHKIT_LOG_LEVEL": "a: b: c"},
            "not a valid YAML value: mapping values are not allowed in this context",
        ),
        (
            {"MESHKIT_LOG_LEVEL": "[" * 65 + "]" * 65},
            "refused: nesting deeper than 64 levels",
        ),
    ],
)
def test_overrides_that_cannot_apply_name_their_variable(
    environ: dict[str, str], message: str
) -> None:
    data, sources, problems = _config_parse.env_overrides(RAW, environ, SECTIONS)
    ((variable, _),) = environ.items()
    assert problems == [FieldError(variable, message)]
    assert data == RAW and sources == {}


def test_variables_of_others_are_left_alone_and_one_bad_variable_spoils_no_other() -> None:
    environ = {
        "NOTMINE_WORKERS": "5",  # not MESHKIT_ at all
        "MESHKIT_WORK": "1",  # tooling: too far from "workers" to be its typo
        "MESHKIT_CLUSTERS____TARGET": "t",
        "MESHKIT_LOG_LEVEL": "x" * (64 << 10 | 1),
        "MESHKIT_ADMIN": "x" * (64 << 10),  # exactly the longest value
        "MESHKIT_WORKERS": "2",
    }
    data, sources, problems = _config_parse.env_overrides(RAW, environ, SECTIONS)
    assert [e.path for e in problems] == ["MESHKIT_CLUSTERS____TARGET", "MESHKIT_LOG_LEVEL"]
    assert data["workers"] == 2 and data["admin"] == "x" * (64 << 10)
    assert sources == {"admin": "MESHKIT_ADMIN", "workers": "MESHKIT_WORKERS"}


def test_the_parser_builds_any_dataclass_section() -> None:
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Probe:
        name: str
        wait: Duration
        tags: tuple[str, ...] = ()
        limit: int | None = None

    parser = _config_parse.Parser("/", check_files=False)
    built = parser.section(Probe, {"name": "p", "wait": "2s", "tags": ["a"]}, "probe")
    assert built == Probe("p", Duration(2), ("a",), None) and parser.errors == []
    parser.section(Probe, {"wait": "soon", "tags": [1], "limit": "x"}, "probe")
    assert [str(e) for e in parser.errors] == [
        "probe.name: required",
        'probe.wait: must be a duration like "50ms", "1.5s", "2m", "1h" or a number of seconds'
        " (got 'soon')",
        "probe.tags[0]: must be a string (got 1); quote it",
        "probe.limit: must be an integer (got 'x')",
    ]


def test_overrides_apply_case_insensitively_shallow_paths_first() -> None:
    environ = {
        "MESHKIT_OUTBOUND__ROUTES__000000000__CLUSTER": "b",
        "MESHKIT_CLUSTERS__ECHO__TIMEOUT": "1s",
        "meshkit_workers": "2",
        "MESHKIT_ADMIN__LISTEN": "9.9.9.9:9",
        "MESHKIT_ADMIN": "{listen: 1.2.3.4:5}",
        "MESHKIT_SKIP_DEPLOY_TOOLS": "1",
        "MESHKIT_CONFIG": "/x",
        "MESHKIT_LOG_LEVEL__X__Y": "1",
    }
    data, sources, problems = _config_parse.env_overrides(RAW, environ, SECTIONS)
    assert problems == []
    assert data == {
        "outbound": {"routes": [{"prefix": "/", "cluster": "b"}]},
        "clusters": {"Echo": {"target": "x", "timeout": "1s"}},
        "workers": 2,
        "admin": {"listen": "9.9.9.9:9"},
        "log_level": {"x": {"y": 1}},
    }
    assert sources == {
        "outbound.routes[0].cluster": "MESHKIT_OUTBOUND__ROUTES__000000000__CLUSTER",
        "clusters.Echo.timeout": "MESHKIT_CLUSTERS__ECHO__TIMEOUT",
        "workers": "meshkit_workers",
        "admin": "MESHKIT_ADMIN",
        "admin.listen": "MESHKIT_ADMIN__LISTEN",
        "log_level.x.y": "MESHKIT_LOG_LEVEL__X__Y",
    }
    assert RAW["clusters"] == {"Echo": {"target": "x"}}  # the input is left as it was


@pytest.mark.parametrize(
    ("path", "blamed"),
    [
        ("clusters.echo.retry.max_attempts", "V2"),  # the deepest variable that set it
        ("clusters.echo.target", "V1"),
        ("clusters.echo[0]", "V1"),
        ("clusters", "V2"),  # a variable set something inside it
        ("clusters.echox", None),
        ("workers", "V3"),
        ("workers[0]", "V3"),
        ("", None),
    ],
)
def test_blame_names_the_variable_behind_a_field(path: str, blamed: str | None) -> None:
    sources = {"clusters.echo": "V1", "clusters.echo.retry": "V2", "workers": "V3"}
    found = _config_parse.blame(FieldError(path, "m"), sources)
    assert found == FieldError(path, "m" if blamed is None else f"m (set by {blamed})")


# --------------------------------------------------------------------------- TLS files

PEM_KEY = "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n"


def test_a_key_that_is_not_a_key_inside_its_pem_block_is_named(tmp_path: Path) -> None:
    from tests.support.certs import make_ca, server_cert

    cert, _ = server_cert(make_ca()).write(str(tmp_path), "tls")
    key = tmp_path / "bad.key"
    key.write_text(PEM_KEY.format("bm90IGEga2V5"))
    (error,) = _config_parse.tls_problems(
        "inbound.tls", cert=cert, key=str(key), ca=None, ca_field="client_ca"
    )
    assert error.path == "inbound.tls.key"
    # OpenSSL gives no reason code here: the message falls back to the whole error
    assert error.message.startswith("not a usable private key ([SSL] PEM lib")


def test_a_missing_key_beside_a_good_cert_is_left_to_the_loader(tmp_path: Path) -> None:
    from tests.support.certs import make_ca, server_cert

    cert, _ = server_cert(make_ca()).write(str(tmp_path), "tls")
    missing = str(tmp_path / "missing.key")
    assert _config_parse.tls_problems("t", cert=cert, key=missing, ca=None, ca_field="ca") == []


def test_a_certificate_with_a_non_ascii_byte_is_broken_not_a_crash(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\n\xffbm90\n-----END CERTIFICATE-----\n")
    (error,) = _config_parse.tls_problems(
        "clusters.a.tls", cert=None, key=None, ca=str(ca), ca_field="ca"
    )
    assert error.path == "clusters.a.tls.ca"
    assert error.message == f"{ca}: a broken PEM certificate (not ASCII)"


def test_tls_files_of_exactly_the_size_limit_are_read(tmp_path: Path) -> None:
    from tests.support.certs import make_ca, server_cert

    cert, key = server_cert(make_ca()).write(str(tmp_path), "tls")
    for path in (cert, key):
        with open(path, "ab") as f:
            f.write(b"\n" * (_config_parse.MAX_PEM_BYTES - os.path.getsize(path)))
        assert os.path.getsize(path) == _config_parse.MAX_PEM_BYTES
    assert _config_parse.tls_problems("t", cert=cert, key=key, ca=cert, ca_field="ca") == []
    with open(key, "ab") as f:
        f.write(b"\n")
    assert _config_parse.tls_problems(
        "inbound.tls", cert=cert, key=key, ca=None, ca_field="ca"
    ) == [FieldError("inbound.tls.key", f"{key}: larger than 1048576 bytes")]


def test_a_ca_bundle_of_several_certificates_is_read_whole(tmp_path: Path) -> None:
    from tests.support.certs import make_ca

    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes(make_ca("one").cert_pem + make_ca("two").cert_pem)
    assert _config_parse.tls_problems("t", cert=None, key=None, ca=str(bundle), ca_field="ca") == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/mem is Linux's")
def test_a_tls_file_that_cannot_be_read_is_named() -> None:
    # A regular file whose first page cannot be read: EIO
    problems = _config_parse.tls_problems(
        "inbound.tls", cert=None, key=None, ca="/proc/self/mem", ca_field="client_ca"
    )
    assert problems == [FieldError("inbound.tls.client_ca", "cannot read: Input/output error")]


def test_a_legacy_encrypted_key_is_refused_without_asking_for_a_pass_phrase(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from cryptography.hazmat.primitives import serialization

    from tests.support.certs import make_ca, server_cert

    leaf = server_cert(make_ca())
    cert, _ = leaf.write(str(tmp_path), "tls")
    key = tmp_path / "legacy.key"
    key.write_bytes(
        leaf.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    (error,) = _config_parse.tls_problems(
        "inbound.tls", cert=cert, key=str(key), ca=None, ca_field="client_ca"
    )
    assert error.path == "inbound.tls.key"
    assert error.message.startswith("not a usable private key (")
    assert "pass phrase" not in capfd.readouterr().err


def test_a_huge_tls_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    import tracemalloc

    big = tmp_path / "big.crt"
    with open(big, "wb") as f:
        f.truncate(64 << 20)  # sparse: 64 MiB of zeros on no disk
    tracemalloc.start()
    try:
        problems = _config_parse.tls_problems("t", cert=None, key=None, ca=str(big), ca_field="ca")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert problems == [FieldError("t.ca", f"{big}: larger than 1048576 bytes")]
    assert peak < 8 << 20, f"peak {peak} bytes"
