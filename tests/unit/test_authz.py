"""Identity matching, its config validation, the RBAC translation deciding as the Python plane
does, and the access log's pure parts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.access_log import FIELDS, AccessLog, format_peer, format_time
from sidecar.authz import (
    IdentityPolicy,
    no_identity_details,
    pattern_problem,
    pattern_regex,
    peer_identities,
    spiffe_id_problem,
)
from sidecar.config import ConfigError, SidecarConfig, parse_config

# Reaches inside: the RBAC filter Envoy gets is checked against the Python plane's rule.
from sidecar.envoy._translate_listeners import (
    ACCESS_LOG_FORMAT,
    HEALTH_PREFIX,
    XFCC_SPIFFE,
    rbac_filter,
)

TD = "spiffe://cluster.local"


def config_of(inbound: dict[str, Any], **sections: Any) -> SidecarConfig:
    return parse_config(
        {"inbound": {"listen": "127.0.0.1:0", "app": "127.0.0.1:8080", **inbound}, **sections},
        {},
        check_files=False,
    )


MTLS = {"cert": "/c/tls.crt", "key": "/c/tls.key", "client_ca": "/c/ca.crt"}


def errors_of(inbound: dict[str, Any], **sections: Any) -> list[str]:
    with pytest.raises(ConfigError) as failure:
        config_of(inbound, **sections)
    return [str(e) for e in failure.value.errors]


# -- SPIFFE IDs and globs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [f"{TD}/ns/prod/sa/web", "spiffe://td", "spiffe://a-b_c.d/x.y/Z-1_2"],
)
def test_valid_spiffe_ids(text: str) -> None:
    assert spiffe_id_problem(text) is None
    assert pattern_problem(text) is None  # a literal ID is a glob matching itself


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("https://td/ns/x", "must start with 'spiffe://'"),
        ("spiffe://TD/ns/x", "trust domain"),
        ("spiffe:///ns/x", "trust domain"),
        ("spiffe://td/ns//x", "bad path segment ''"),
        ("spiffe://td/ns/x/", "bad path segment ''"),
        ("spiffe://td/ns/../x", "bad path segment '..'"),
        ("spiffe://td/ns/a b", "bad path segment 'a b'"),
        ("spiffe://td/ns/*", "bad path segment '*'"),
        ("spiffe://td/" + "a" * 2100, "longer than 2048"),
    ],
)
def test_invalid_spiffe_ids_say_why(text: str, problem: str) -> None:
    found = spiffe_id_problem(text)
    assert found is not None and problem in found


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("spiffe://*/ns/x", "trust domain"),
        ("spiffe://td/ns/***", "not '***'"),
        ("spiffe://td/ns/[ab]", "bad path segment"),
        ("spiffe://td/ns/a?", "bad path segment"),
        ("td/ns/*", "must start with"),
    ],
)
def test_invalid_globs_say_why(pattern: str, problem: str) -> None:
    found = pattern_problem(pattern)
    assert found is not None and problem in found


@pytest.mark.parametrize(
    ("pattern", "identity", "matches"),
    [
        (f"{TD}/ns/prod/*/*", f"{TD}/ns/prod/sa/web", True),
        (f"{TD}/ns/prod/*/*", f"{TD}/ns/prod/sa/web/x", False),
        (f"{TD}/ns/prod/*/*", f"{TD}/ns/prod/sa", False),
        (f"{TD}/ns/prod/**", f"{TD}/ns/prod/sa/web/x", True),
        (f"{TD}/ns/prod/**", f"{TD}/ns/production/sa/web", False),
        (f"{TD}/ns/prod/sa/web-*", f"{TD}/ns/prod/sa/web-canary", True),
        (f"{TD}/ns/prod/sa/web-*", f"{TD}/ns/prod/sa/webXcanary", False),
        # '.' is literal, not "any character"
        ("spiffe://a.b/x", "spiffe://aXb/x", False),
        # the trust domain is literal: another mesh's IDs never match
        (f"{TD}/**", "spiffe://cluster.local.evil/ns/prod/sa/web", False),
        (f"{TD}/**", f"{TD}/ns/any/sa/thing", True),
    ],
)
def test_glob_semantics(pattern: str, identity: str, matches: bool) -> None:
    assert pattern_problem(pattern) is None
    assert IdentityPolicy((), (pattern,)).allows(identity) is matches


def test_policy_check_details_name_the_reason() -> None:
    policy = IdentityPolicy([f"{TD}/ns/prod/sa/web"], [f"{TD}/ns/ops/**"])
    assert policy.check([f"{TD}/ns/prod/sa/web"]) is None
    assert policy.check([f"{TD}/ns/dev/sa/x", f"{TD}/ns/ops/sa/y"]) is None  # any one suffices
    assert policy.check([]) == no_identity_details()
    denied = policy.check([f"{TD}/ns/dev/sa/x"])
    assert denied is not None and f"{TD}/ns/dev/sa/x is not allowed" in denied


def test_peer_identities_are_the_spiffe_uri_sans_of_the_auth_context() -> None:
    context = {
        "peer_uri": [b"spiffe://td/a", b"https://example.com/x", b"spiffe://td/b"],
        "peer_dns": [b"spiffe.example.com"],
        "x509_common_name": [b"spiffe://td/cn"],
    }
    assert peer_identities(context) == ("spiffe://td/a", "spiffe://td/b")
    assert peer_identities({"peer_dns": [b"web.prod.svc"]}) == ()


# -- config validation --------------------------------------------------------------------------


def test_authorization_loads_and_dumps() -> None:
    section = {"allowed_ids": [f"{TD}/ns/a/sa/b"], "allowed_san_patterns": [f"{TD}/ns/c/*/*"]}
    config = config_of({"tls": MTLS, "authorization": section})
    assert config.inbound is not None and config.inbound.authorization is not None
    assert config.inbound.authorization.allowed_ids == (f"{TD}/ns/a/sa/b",)
    dumped = config.to_dict(redact=False)
    assert dumped["inbound"]["authorization"] == section
    assert parse_config(dumped, {}, check_files=False) == config


@pytest.mark.parametrize(
    "tls",
    [
        None,
        {**MTLS, "require_client_cert": False},
        {**MTLS, "require_client_cert": False, "client_ca": None},
    ],
)
def test_authorization_needs_verified_client_certificates(tls: dict[str, Any] | None) -> None:
    inbound: dict[str, Any] = {"authorization": {"allowed_ids": [f"{TD}/ns/a/sa/b"]}}
    if tls is not None:
        inbound["tls"] = tls
    (error,) = errors_of(inbound)
    assert error.startswith("inbound.authorization: needs verified client certificates")


def test_authorization_errors_name_each_field() -> None:
    errors = errors_of(
        {
            "tls": MTLS,
            "authorization": {
                "allowed_ids": [f"{TD}/ns/a/sa/b", "spiffe://td/x/*"],
                "allowed_san_patterns": ["spiffe://td/ok/*", "https://td/*"],
            },
        }
    )
    assert [e.split(":")[0] for e in errors] == [
        "inbound.authorization.allowed_ids[1]",
        "inbound.authorization.allowed_san_patterns[1]",
    ]
    (empty,) = errors_of({"tls": MTLS, "authorization": {}})
    assert empty.startswith("inbound.authorization: must list allowed_ids or allowed_san_patterns")


def test_access_log_config() -> None:
    config = config_of({})
    assert (config.telemetry.access_log.enabled, config.telemetry.access_log.path) == (False, "-")
    on = config_of({}, telemetry={"access_log": {"enabled": True, "path": "/var/log/a.log"}})
    assert on.telemetry.access_log.path == "/var/log/a.log"
    (error,) = errors_of({}, telemetry={"access_log": {"enabled": True, "path": "a.log"}})
    assert error.startswith("telemetry.access_log.path: must be")


# -- the RBAC translation decides as IdentityPolicy does --------------------------------------


def _string_match(matcher: dict[str, Any], value: str) -> bool:
    if "exact" in matcher:
        return bool(value == matcher["exact"])
    if "prefix" in matcher:
        return value.startswith(matcher["prefix"])
    return re.fullmatch(matcher["safe_regex"]["regex"], value) is not None


def _principal(principal: dict[str, Any], uris: list[str]) -> bool:
    # Envoy's authenticated.principal_name: any URI SAN matches (DNS SANs and the subject
    # never start with spiffe:// so they are left out here)
    if "not_id" in principal:
        return not _principal(principal["not_id"], uris)
    if "or_ids" in principal:
        return any(_principal(p, uris) for p in principal["or_ids"]["ids"])
    matcher = principal["authenticated"]["principal_name"]
    return any(_string_match(matcher, uri) for uri in uris)


def envoy_denies(rbac: dict[str, Any], path: str, uris: list[str]) -> str | None:
    """The DENY policy that matches (lexicographic order, as Envoy), or None."""
    rules = rbac["typed_config"]["rules"]
    assert rules["action"] == "DENY"
    for name in sorted(rules["policies"]):
        policy = rules["policies"][name]
        (permission,) = policy["permissions"]
        health = path.startswith(permission["not_rule"]["url_path"]["path"]["prefix"])
        if not health and any(_principal(p, uris) for p in policy["principals"]):
            return str(name)
    return None


segment = st.sampled_from(["ns", "prod", "dev", "sa", "web", "a.b", "x-1", "web-canary"])
ids = st.lists(segment, min_size=0, max_size=5).map(lambda parts: "/".join([TD, *parts]))
globs = st.lists(
    st.one_of(segment, st.just("*"), st.just("**"), st.just("web-*")), min_size=1, max_size=5
).map(lambda parts: "/".join([TD, *parts]))


@settings(max_examples=300, deadline=None)
@given(
    allowed=st.lists(ids.filter(lambda i: spiffe_id_problem(i) is None), max_size=3),
    patterns=st.lists(globs, max_size=3),
    caller=st.lists(st.one_of(ids, st.just("https://example.com/x")), max_size=2),
    health=st.booleans(),
)
def test_envoy_rbac_decides_as_the_python_plane(
    allowed: list[str], patterns: list[str], caller: list[str], health: bool
) -> None:
    if not allowed and not patterns:
        patterns = [f"{TD}/ns/prod/**"]
    config = config_of(
        {"tls": MTLS, "authorization": {"allowed_ids": allowed, "allowed_san_patterns": patterns}}
    )
    assert config.inbound is not None and config.inbound.authorization is not None
    rbac = rbac_filter(config.inbound.authorization)
    path = HEALTH_PREFIX + "Check" if health else "/pkg.Svc/Method"
    denied_by = envoy_denies(rbac, path, caller)
    spiffe_ids = [c for c in caller if c.startswith("spiffe://")]
    python = IdentityPolicy(allowed, patterns).check(spiffe_ids)
    if health or python is None:
        assert denied_by is None
    elif not spiffe_ids:
        assert denied_by == "no-spiffe-id"
    else:
        assert denied_by == "not-allowed"


@pytest.mark.parametrize(
    ("xfcc", "has_spiffe"),
    [
        ("Hash=ab12;URI=spiffe://td/ns/a/sa/b", True),
        ("By=spiffe://td/ns/x/sa/api;Hash=ab12;URI=spiffe://td/ns/a/sa/b", True),
        ('Hash=ab12;URI="spiffe://td/ns/a/sa/b"', True),
        ("Hash=ab12;URI=https://example.com/x;URI=spiffe://td/a", True),
        ("By=spiffe://td/ns/x/sa/api;Hash=ab12;URI=", False),
        ("By=spiffe://td/ns/x/sa/api;Hash=ab12", False),
        ("Hash=ab12;URI=https://example.com/spiffe://x", False),
    ],
)
def test_the_xfcc_pattern_tells_a_spiffe_id_from_none(xfcc: str, has_spiffe: bool) -> None:
    assert (re.fullmatch(XFCC_SPIFFE, xfcc) is not None) is has_spiffe


def test_pattern_regexes_are_anchored_by_full_matching() -> None:
    assert pattern_regex("spiffe://td/a/*") == r"spiffe://td/a/[^/]*"


# -- access log ---------------------------------------------------------------------------------


def test_envoy_and_python_lines_have_the_same_fields() -> None:
    assert tuple(ACCESS_LOG_FORMAT) == FIELDS


def test_time_and_peer_formats() -> None:
    assert format_time(0.123456) == "1970-01-01T00:00:00.123Z"
    assert format_peer("ipv4:127.0.0.1:5678") == "127.0.0.1:5678"
    assert format_peer("ipv6:[::1]:5678") == "[::1]:5678"
    assert format_peer("unix:/tmp/s") == "unix:/tmp/s"


def test_access_log_appends_one_json_line_per_record(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text('{"earlier": true}\n')
    log = AccessLog(str(path))
    log.write({"method": "/a.B/C", "grpc_status": "OK"})
    log.write({"method": "/a.B/D", "grpc_status": "INTERNAL"})
    log.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [
        {"earlier": True},
        {"method": "/a.B/C", "grpc_status": "OK"},
        {"method": "/a.B/D", "grpc_status": "INTERNAL"},
    ]
    with pytest.raises(OSError):
        AccessLog(str(tmp_path / "missing-dir" / "a.log"))
