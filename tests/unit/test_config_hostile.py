"""Hostile config input: YAML alias bombs, deep nesting, huge values, floods of keys and errors,
credentials in URLs. Each is refused (or shown redacted) fast, in bounded memory, with a
ConfigError naming the file, the field or the variable -- never a hang or a traceback."""

from __future__ import annotations

import contextlib
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar import _config_parse

# Reaches inside: how a hostile value is shown in an error is the unit under test.
from sidecar._config_values import show as show_value
from sidecar.config import REDACTED, ConfigError, FieldError, load_config, parse_config

MINIMAL_YAML = """\
outbound: {listen: 127.0.0.1:15001, routes: [{prefix: /, cluster: backend}]}
clusters: {backend: {target: static:///127.0.0.1:10000}}
"""

# Budgets: the "well under 1 s", and memory far below the 256Mi a pod is given.
MAX_SECONDS = 1.0
MAX_PEAK_BYTES = 50 * 1024 * 1024


def minimal() -> dict[str, Any]:
    raw = yaml.safe_load(MINIMAL_YAML)
    assert isinstance(raw, dict)
    return raw


def laughs(levels: int = 9, key: str = "lol") -> str:
    """A "billion laughs" document: each level an anchor listing the previous one 9 times,
    so ``levels`` levels expand to 9**levels strings from ~70 bytes a level."""
    lines = [f'{key}0: &{key}0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        prev = f"*{key}{i - 1}"
        lines.append(f"{key}{i}: &{key}{i} [{','.join([prev] * 9)}]")
    return "\n".join(lines) + "\n"


def assert_cheap(call: Callable[[], object]) -> None:
    """Assert that ``call()`` (refusing with ConfigError or a YAML error, or returning) takes
    under MAX_SECONDS, and under MAX_PEAK_BYTES in a second run traced by tracemalloc (which
    slows it down too much to time it as well)."""
    start = time.perf_counter()
    _quietly(call)
    elapsed = time.perf_counter() - start
    tracemalloc.start()
    try:
        _quietly(call)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < MAX_SECONDS, f"took {elapsed:.2f}s"
    assert peak < MAX_PEAK_BYTES, f"peak {peak / 1e6:.0f} MB"


def _quietly(call: Callable[[], object]) -> None:
    with contextlib.suppress(ConfigError, yaml.YAMLError):
        call()


def refused(call: Callable[[], object]) -> list[FieldError]:
    """The errors ``call`` raises as a ConfigError, cheaply (see assert_cheap)."""
    assert_cheap(call)
    with pytest.raises(ConfigError) as caught:
        call()
    errors = caught.value.errors
    assert errors and len(str(caught.value)) < 20_000
    return errors


def refused_file(tmp_path: Path, text: str) -> tuple[Path, list[FieldError]]:
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    return path, refused(lambda: load_config(str(path), environ={}))


# --------------------------------------------------------------------------- alias bombs


def test_alias_bomb_in_a_file_is_refused_naming_the_line(tmp_path: Path) -> None:
    text = MINIMAL_YAML + laughs()
    assert len(text) < 1000  # ~700 bytes of document that would expand to 387M strings
    path, errors = refused_file(tmp_path, text)
    (error,) = errors
    assert error.path.startswith(f"{path}:")
    assert "more than 20000 values" in error.message and "alias" in error.message


def test_alias_bomb_under_a_field_is_refused(tmp_path: Path) -> None:
    # The anchors tucked away inside a section, the bomb set off by a field naming one.
    hidden = "".join(f"    {line}\n" for line in laughs().splitlines())
    text = MINIMAL_YAML + f"admin:\n  listen: 127.0.0.1:9901\n  x:\n{hidden}workers: *lol8\n"
    _, errors = refused_file(tmp_path, text)
    assert any("more than 20000 values" in e.message for e in errors)


def test_alias_bomb_in_a_variable_is_refused_naming_it() -> None:
    bomb = "{" + laughs().replace("\n", ", ").rstrip(", ") + "}"
    errors = refused(lambda: parse_config(minimal(), {"MESHKIT_WORKERS": bomb}))
    assert [e.path for e in errors] == ["MESHKIT_WORKERS"]
    assert "more than 20000 values" in errors[0].message


def test_alias_bomb_built_in_python_is_refused() -> None:
    bomb: Any = ["lol"] * 9
    for _ in range(8):
        bomb = [bomb] * 9  # shared lists: tiny in memory, 9**9 items when walked
    errors = refused(lambda: parse_config({**minimal(), "workers": bomb}, {}))
    assert errors[0].path.startswith("workers")
    assert "more than 20000 values" in errors[0].message


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    _, errors = refused_file(tmp_path, MINIMAL_YAML + "admin: &x {listen: *x}\n")
    assert "inside the node it names" in errors[0].message


def test_self_referencing_mapping_is_refused() -> None:
    loop: dict[str, Any] = {}
    loop["listen"] = loop
    errors = refused(lambda: parse_config({**minimal(), "admin": loop}, {}))
    assert "nesting deeper than 64 levels" in errors[0].message


def test_a_few_aliases_still_work(tmp_path: Path) -> None:
    path = tmp_path / "anchors.yaml"
    path.write_text(
        "outbound: {listen: 127.0.0.1:15001, routes: [{prefix: /a.A/, cluster: a},"
        " {prefix: /, cluster: b}]}\n"
        "clusters:\n"
        "  a: &base {target: 'static:///127.0.0.1:1', retry: {max_attempts: 3}}\n"
        "  b: {<<: *base, target: 'static:///127.0.0.1:2'}\n"
    )
    config = load_config(str(path), environ={})
    assert config.clusters["b"].retry == config.clusters["a"].retry
    assert config.clusters["b"].target == "static:///127.0.0.1:2"


# --------------------------------------------------------------------------- nesting


def test_deep_flow_nesting_is_a_config_error_not_a_recursion_error(tmp_path: Path) -> None:
    path, errors = refused_file(tmp_path, MINIMAL_YAML + "admin: " + "[" * 2000 + "]" * 2000)
    (error,) = errors
    assert error.path.startswith(f"{path}:3:")
    assert error.message == "refused: nesting deeper than 64 levels"


def test_deep_block_nesting_is_a_config_error(tmp_path: Path) -> None:
    nested = "".join("  " * i + "- \n" for i in range(1, 300))
    _, errors = refused_file(tmp_path, MINIMAL_YAML + "admin:\n" + nested)
    assert errors[0].message == "refused: nesting deeper than 64 levels"


def test_nesting_up_to_the_limit_is_read(tmp_path: Path) -> None:
    # 64 levels are fine for the reader (the field then says what it wants).
    text = MINIMAL_YAML + "admin: " + "[" * 63 + "]" * 63 + "\n"
    _, errors = refused_file(tmp_path, text)
    (error,) = errors
    assert error.path == "admin" and error.message.startswith("must be a mapping (got [[[[[")


def test_deep_nesting_in_a_variable_names_it() -> None:
    deep = "[" * 2000 + "]" * 2000
    errors = refused(lambda: parse_config(minimal(), {"MESHKIT_ADMIN": deep}))
    assert errors == [FieldError("MESHKIT_ADMIN", "refused: nesting deeper than 64 levels")]


def test_deep_nesting_built_in_python_is_refused() -> None:
    deep: list[Any] = []
    inner = deep
    for _ in range(5000):
        inner.append([])
        inner = inner[0]
    errors = refused(lambda: parse_config({**minimal(), "admin": deep}, {}))
    assert errors[0].message == "nesting deeper than 64 levels"


def test_deep_path_through_variables_is_blamed_on_them() -> None:
    value = "[" * 62 + "]" * 62  # within the limit alone, past it under clusters.x.retry
    errors = refused(lambda: parse_config(minimal(), {"MESHKIT_CLUSTERS__X__RETRY": value}))
    assert "nesting deeper than 64 levels" in errors[0].message
    assert errors[0].message.endswith("(set by MESHKIT_CLUSTERS__X__RETRY)")


# --------------------------------------------------------------------------- sizes


def test_file_larger_than_the_limit_is_refused_before_parsing(tmp_path: Path) -> None:
    path, errors = refused_file(tmp_path, MINIMAL_YAML + "log_level: " + "x" * (50 << 20))
    assert errors == [
        FieldError(str(path), "larger than 1048576 bytes; a sidecar config is a few KiB")
    ]


def test_long_string_in_a_file_is_refused(tmp_path: Path) -> None:
    _, errors = refused_file(tmp_path, MINIMAL_YAML + "log_level: " + "x" * 500_000 + "\n")
    assert errors == [FieldError("log_level", "a value of 500000 characters; at most 65536")]


def test_huge_variable_is_refused_naming_it() -> None:
    environ = {"MESHKIT_LOG_LEVEL": "x" * (50 << 20)}
    errors = refused(lambda: parse_config(minimal(), environ))
    assert errors == [FieldError("MESHKIT_LOG_LEVEL", "52428800 characters long; at most 65536")]


def test_huge_string_handed_to_parse_config_is_refused() -> None:
    raw = {**minimal(), "log_level": "x" * (50 << 20)}
    errors = refused(lambda: parse_config(raw, {}))
    assert errors == [FieldError("log_level", "a value of 52428800 characters; at most 65536")]


def test_200k_unknown_keys_fail_fast() -> None:
    raw = {**minimal(), **{f"key{i}": i for i in range(200_000)}}
    errors = refused(lambda: parse_config(raw, {}))
    assert errors == [FieldError("", "200002 entries; at most 1000 in one mapping or list")]


def test_too_many_keys_in_a_file_fail_fast(tmp_path: Path) -> None:
    keys = "".join(f"k{i}: {i}\n" for i in range(100_000))  # ~1 MiB of keys
    _, errors = refused_file(tmp_path, MINIMAL_YAML + keys[: (1 << 20) - 200])
    assert "more than 1000 entries in one mapping or list" in errors[0].message


def test_many_values_in_small_mappings_fail_fast(tmp_path: Path) -> None:
    cluster = "{target: 'static:///127.0.0.1:%d', retry: {max_attempts: 3, initial_backoff: 1s},"
    cluster += " keepalive: {time: 5m, timeout: 20s}}"
    clusters = "".join(f"  c{i}: {cluster % (i + 1)}\n" for i in range(999))
    routes = "".join(f"    - {{prefix: /s{i}.S/, cluster: c{i}}}\n" for i in range(999))
    _, errors = refused_file(tmp_path, f"outbound:\n  routes:\n{routes}clusters:\n{clusters}")
    assert "more than 20000 values in all" in errors[0].message


# --------------------------------------------------------------------------- errors


def test_errors_stop_at_100_with_a_count_of_the_rest() -> None:
    raw = {**minimal(), "admin": {f"unknown{i}": 0 for i in range(900)}}
    errors = refused(lambda: parse_config(raw, {}))
    assert len(errors) == 101
    assert errors[0] == FieldError("admin.unknown0", "unknown key (known: listen, expose_debug)")
    assert errors[-1] == FieldError("", "... and 800 more")


def test_errors_name_long_keys_shortly() -> None:
    key = "k" * 10_000
    errors = refused(lambda: parse_config({**minimal(), key: 1}, {}))
    (error,) = errors
    assert error.path.startswith("'kkkk") and len(error.path) <= 80
    assert error.message == "unknown key (known: " + error.message.split("(known: ")[1]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("log_level: 2020-13-45\n", "cannot read this value: month must be in 1..12"),
        ("workers: " + "1" * 5000 + "\n", "an integer of 5000 characters"),
        ("workers: " + "9" * 99 + "\n", "workers: must be 1..128 (got <an integer of ~99 digits>)"),
    ],
    ids=["impossible-date", "5000-digit-int", "99-digit-int"],
)
def test_values_python_cannot_build_are_config_errors(
    tmp_path: Path, text: str, fragment: str
) -> None:
    _, errors = refused_file(tmp_path, MINIMAL_YAML + text)
    assert fragment in "\n".join(str(e) for e in errors)


# --------------------------------------------------------------------------- show()


def test_show_bounds_its_work_before_rendering() -> None:
    bomb: Any = ["lol"] * 9
    for _ in range(12):
        bomb = [bomb] * 9  # 9**13 items when rendered in full
    loop: dict[str, Any] = {}
    loop["x"] = loop
    values = (bomb, loop, "x" * (50 << 20), 10**4000, b"y" * 10**7)
    shown: list[str] = []
    assert_cheap(lambda: shown.extend(show_value(v) for v in values))
    assert all(len(text) <= 80 for text in shown)
    assert shown[0].startswith("[[[[[[[[[[[[['lol', 'lol'") and shown[0].endswith("...")
    assert shown[1].startswith("{'x': {'x': ")
    assert shown[2] == "'" + "x" * 76 + "..."
    assert shown[3] == "<an integer of ~4000 digits>"


def test_show_keeps_small_values_as_repr_shows_them() -> None:
    for value in ("echo", 7, 1.5, None, True, ["a", 1], {"x": 1}, ("a",), ()):
        assert show_value(value) == repr(value)


# --------------------------------------------------------------------------- the pure loader


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (laughs(), "more than 20000 values in all"),
        ("a: " + "[" * 2000 + "]" * 2000, "nesting deeper than 64 levels"),
        ("a:\n" + "".join("  " * i + "- \n" for i in range(1, 300)), "nesting deeper than 64"),
        ("a: &x [*x]\n", "inside the node it names"),
        ("{" + ", ".join(f"k{i}: 0" for i in range(5000)) + "}", "more than 1000 entries"),
    ],
    ids=["laughs", "deep-flow", "deep-block", "recursive", "wide"],
)
def test_both_loaders_enforce_the_limits(text: str, message: str) -> None:
    for loader in (_config_parse.PureLoader, _config_parse.Loader):
        assert_cheap(lambda loader=loader: _config_parse.load_yaml(text, loader))  # type: ignore[misc]
        with pytest.raises(_config_parse.LimitError) as caught:
            _config_parse.load_yaml(text, loader)
        assert message in str(caught.value.problem)


# --------------------------------------------------------------------------- credentials


OTLP_WITH_CREDENTIALS = "http://user:PASSWORD@collector:4318/v1/traces?api_key=SECRET&tenant=t1"


def test_otlp_endpoint_credentials_are_redacted_in_dumps() -> None:
    raw = {**minimal(), "telemetry": {"tracing": {"otlp_endpoint": OTLP_WITH_CREDENTIALS}}}
    config = parse_config(raw, {})
    shown = config.to_dict(redact=True)
    assert shown["telemetry"]["tracing"]["otlp_endpoint"] == (
        f"http://{REDACTED}@collector:4318/v1/traces?api_key={REDACTED}&tenant={REDACTED}"
    )
    assert "PASSWORD" not in repr(shown) and "SECRET" not in repr(shown)
    # Without redact, the real value (it round-trips).
    assert config.to_dict(redact=False)["telemetry"]["tracing"]["otlp_endpoint"] == (
        OTLP_WITH_CREDENTIALS
    )
    assert parse_config(config.to_dict(redact=False), {}) == config


@pytest.mark.parametrize(
    ("endpoint", "shown"),
    [
        ("http://collector:4318/v1/traces", "http://collector:4318/v1/traces"),
        ("https://u@collector/", f"https://{REDACTED}@collector/"),
        ("http://collector:4318/path?token", f"http://collector:4318/path?{REDACTED}"),
        ("http://c/p?a=1&&b=#frag", f"http://c/p?a={REDACTED}&&b={REDACTED}#frag"),
        ("127.0.0.1:4317", "127.0.0.1:4317"),
    ],
)
def test_otlp_endpoint_redaction_keeps_everything_else(endpoint: str, shown: str) -> None:
    raw = {**minimal(), "telemetry": {"tracing": {"otlp_endpoint": endpoint}}}
    dumped = parse_config(raw, {}).to_dict(redact=True)
    assert dumped["telemetry"]["tracing"]["otlp_endpoint"] == shown


def test_otlp_endpoint_credentials_are_redacted_in_errors() -> None:
    for bad in ("ftp://user:PASSWORD@collector/?k=SECRET", "http://u:PASSWORD@c/?k=SECRET\x00"):
        raw = {**minimal(), "telemetry": {"tracing": {"otlp_endpoint": bad}}}
        errors = refused(lambda raw=raw: parse_config(raw, {}))  # type: ignore[misc]
        text = "\n".join(str(e) for e in errors)
        assert "telemetry.tracing.otlp_endpoint" in text
        assert "PASSWORD" not in text and "SECRET" not in text


# PyYAML's own constructors raise IndexError / KeyError / AttributeError on these.
EMPTY_TAGS = ['log_level: !!float ""', "!!int", "log_level: !!bool", 'log_level: !!timestamp ""']


@pytest.mark.parametrize("document", EMPTY_TAGS)
def test_tagged_values_yaml_cannot_build_are_config_errors(tmp_path: Path, document: str) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(MINIMAL_YAML + document + "\n" if ":" in document else document + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {})
    (error,) = info.value.errors
    assert error.path.startswith(str(path)) and "a value YAML cannot build" in error.message


@pytest.mark.parametrize("value", ["!!float", "!!bool", '!!timestamp ""'])
def test_tagged_values_in_a_variable_are_config_errors_naming_it(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(minimal(), {"MESHKIT_LOG_LEVEL": value})
    (error,) = info.value.errors
    assert error.path == "MESHKIT_LOG_LEVEL" and "YAML cannot build" in error.message
