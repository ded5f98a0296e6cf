"""Config fuzz: random and mutated documents never end in a traceback (only ConfigError) and
each is judged in under a second; and the promise "any config ``validate`` accepts, ``run``
starts", held by starting accepted random configs in process on each data plane."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from sidecar.app import Sidecar
from sidecar.config import ConfigError, SidecarConfig, load_config, parse_config

# Reaches inside: the codes Envoy can retry on decide which random configs the Envoy plane takes.
from sidecar.envoy._translate_clusters import RETRY_ON
from sidecar.envoy.translate import unsupported
from tests.faults.conftest import Figures, skip_without_plane
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

BASE = """\
admin: {listen: 127.0.0.1:0}
outbound:
  listen: 127.0.0.1:0
  routes: [{prefix: /echo.Echo/, cluster: echo}, {prefix: /, cluster: default}]
inbound: {listen: 127.0.0.1:0, app: 127.0.0.1:8080}
clusters:
  echo:
    target: dns:///echo.default.svc.cluster.local:50051
    retry: {max_attempts: 3, retryable_status_codes: [UNAVAILABLE], initial_backoff: 50ms}
    keepalive: {time: 30s, timeout: 10s}
    outlier_detection: {consecutive_failures: 5, base_ejection_time: 30s}
  default: {target: "static:///127.0.0.1:9000,127.0.0.1:9001", lb_policy: pick_first}
telemetry: {prometheus: true, tracing: {otlp_endpoint: 127.0.0.1:4317, sample_ratio: 0.1}}
drain: {drain_delay: 1s, grace_period: 5s}
"""

#: Pieces of YAML and of values that have broken config loaders: anchors and aliases, merge
#: keys, tags, nesting, flow/block mixes, huge and odd numbers, control and non-ASCII digits.
FRAGMENTS = [
    "&a ",
    "*a",
    "<<: *a",
    "!!python/object:os.system ",
    "!!binary ",
    "!!float ",
    "[",
    "]",
    "{",
    "}",
    ": ",
    "- ",
    "\n  ",
    "\t",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "? ",
    "|",
    ">",
    "'",
    '"',
    "#",
    ",",
    "1e308",
    "1e12s",
    "-1",
    "0x10",
    "nan",
    ".inf",
    "~",
    "null",
    "yes",
    "\x00",
    "\u0668\u0660",
    "256.1.1.1:80",
    "ms",
    "h",
    "99999999999999999999",
    "static:///",
    "dns:///",
    "::1",
    "[::1]:0",
    "\ufeff",
    "\u2028",
    "%",
    "@",
    "`",
]
MUTATION = st.tuples(
    st.floats(0, 1), st.integers(0, 20), st.lists(st.sampled_from(FRAGMENTS), max_size=4)
)
MESHKIT_NAMES = [
    "MESHKIT_OUTBOUND__LISTEN",
    "MESHKIT_CLUSTERS__ECHO__TARGET",
    "MESHKIT_DRAIN__DRAIN_DELAY",
    "MESHKIT_CLUSTERS__ECHO__RETRY__MAX_ATTEMPTS",
    "MESHKIT_ADMIN",
    "MESHKIT_OUTBOND__X",
    "MESHKIT_TELEMETRY__TRACING__OTLP_ENDPOINT",
    "MESHKIT_CLUSTERS__",
    "MESHKIT_WORKERS",
]
MAX_SECONDS = 1.0


def _mutate(text: str, mutations: list[tuple[float, int, list[str]]]) -> str:
    for where, cut, inserted in mutations:
        at = int(where * len(text))
        text = text[:at] + "".join(inserted) + text[at + cut :]
    return text


def _judge(call: typing.Callable[[], object]) -> float:
    """Run ``call``: it returns or raises ConfigError, nothing else; the seconds it took."""
    start = time.perf_counter()
    try:
        call()
    except ConfigError as error:
        assert error.errors and len(str(error)) < 100_000
    return time.perf_counter() - start


documents = st.one_of(
    st.lists(MUTATION, min_size=1, max_size=6).map(lambda m: _mutate(BASE, m)),
    st.text(max_size=400),
    st.lists(st.sampled_from(FRAGMENTS), max_size=60).map("".join),
)
environments = st.dictionaries(
    st.sampled_from(MESHKIT_NAMES),
    st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=40)),
    max_size=3,
)


@settings(
    max_examples=1000,
    deadline=1000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=documents, environ=environments)
def test_random_config_files_fail_only_with_config_error(
    tmp_path: Path, text: str, environ: dict[str, str]
) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    assert _judge(lambda: load_config(str(path), environ, check_files=False)) < MAX_SECONDS


# -- structured: plausible shapes with wrong values, through the mapping loader ---------------


def _field_names(cls: type[Any], seen: set[str]) -> set[str]:
    for f in dataclasses.fields(cls):
        seen.add(f.name)
        hint = typing.get_type_hints(cls).get(f.name)
        for arg in (*typing.get_args(hint), hint):
            if dataclasses.is_dataclass(arg) and isinstance(arg, type):
                _field_names(arg, seen)
    return seen


FIELD_NAMES = sorted(_field_names(SidecarConfig, set()) | {"echo", "x", "prefix", ""})
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(FRAGMENTS),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(FIELD_NAMES), inner, max_size=5),
    ),
    max_leaves=12,
)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _paths(item, (*path, i))
    return found


BASE_PATHS = _paths(yaml.safe_load(BASE))[1:]


def _replaced(changes: list[tuple[tuple[Any, ...], Any]]) -> dict[str, Any]:
    """The base document with the value at each path replaced (a valid shape, a bad value);
    a path an earlier change removed is skipped."""
    document: dict[str, Any] = yaml.safe_load(BASE)
    for path, value in changes:
        with contextlib.suppress(LookupError, TypeError):
            parent: Any = document
            for step in path[:-1]:
                parent = parent[step]
            parent[path[-1]] = value
    return document


@settings(
    max_examples=1000,
    deadline=1000,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    mapping=st.one_of(
        st.dictionaries(st.sampled_from(FIELD_NAMES), values, max_size=6),
        st.lists(st.tuples(st.sampled_from(BASE_PATHS), values), min_size=1, max_size=3).map(
            _replaced
        ),
    ),
    environ=environments,
)
def test_random_config_mappings_fail_only_with_config_error(
    mapping: dict[str, Any], environ: dict[str, str]
) -> None:
    assert _judge(lambda: parse_config(mapping, environ, check_files=False)) < MAX_SECONDS


def _laughs(levels: int) -> str:
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


HOSTILE_FILES = {
    "alias_bomb": _laughs(10),
    "alias_bomb_deeper": _laughs(12),
    "nesting_2000": "outbound: " + "[" * 2000 + "\n",
    "nesting_2000_maps": "a: " + "{b: " * 2000 + "\n",
    "scalar_50MB": "clusters: {x: {target: '" + "x" * (50 * 1024 * 1024) + "'}}\n",
    "keys_200k": "outbound: {" + ",".join(f"k{i}: 1" for i in range(200_000)) + "}\n",
    "errors_flood": "clusters:\n" + "".join(f"  c{i}: {{target: 1}}\n" for i in range(20_000)),
    "not_utf8": "outbound: \udcff\n",
    # Empty tagged scalars: PyYAML's constructors index into the empty value.
    "empty_float_tag": "!!float",
    "empty_int_tag": "!!int",
    "empty_bool_tag": "a: !!bool",
    "empty_timestamp_tag": 'a: !!timestamp ""',
}
HOSTILE_ENV = {
    "alias_bomb": {"MESHKIT_CLUSTERS__ECHO__TARGET": _laughs(10)},
    "nesting": {"MESHKIT_OUTBOUND__ROUTES": "[" * 2000},
    "long": {"MESHKIT_DRAIN__DRAIN_DELAY": "1" * 1_000_000},
}


@pytest.mark.parametrize("name", sorted(HOSTILE_FILES))
def test_hostile_config_files_are_refused_fast(tmp_path: Path, name: str) -> None:
    path = tmp_path / "hostile.yaml"
    path.write_text(HOSTILE_FILES[name], encoding="utf-8", errors="surrogateescape")
    with pytest.raises(ConfigError):
        load_config(str(path), {}, check_files=False)
    assert _judge(lambda: load_config(str(path), {}, check_files=False)) < MAX_SECONDS


@pytest.mark.parametrize("name", sorted(HOSTILE_ENV))
def test_hostile_meshkit_variables_are_refused_fast(name: str) -> None:
    mapping = yaml.safe_load(BASE)
    with pytest.raises(ConfigError):
        parse_config(mapping, HOSTILE_ENV[name], check_files=False)
    assert _judge(lambda: parse_config(mapping, HOSTILE_ENV[name], check_files=False)) < MAX_SECONDS


# -- "any config validate accepts, run starts" -------------------------------------------------


def _duration(low: float, high: float) -> st.SearchStrategy[str]:
    return st.floats(low, high).map(lambda s: f"{s:.3f}s")


def _wild_duration(low: float, high: float) -> st.SearchStrategy[str]:
    """Mostly sane, sometimes huge (validation must refuse what ``run`` cannot take)."""
    sane = _duration(low, high)
    return st.one_of(
        sane,
        sane,
        sane,
        sane,
        sane,
        sane,
        sane,
        st.sampled_from(["1e7s", "1e12s", "24h", "0.0001ms"]),
    )


CODES = ["UNAVAILABLE", "RESOURCE_EXHAUSTED", "INTERNAL", "UNKNOWN", "DEADLINE_EXCEEDED"]
ports = st.integers(1, 65535)


@st.composite
def clusters(draw: st.DrawFn, plane: str) -> dict[str, Any]:
    """A cluster; on Envoy only what Envoy can express (else `validate` refuses it)."""
    envoy = plane == "envoy"
    retry_codes = [c for c in CODES if c in RETRY_ON] if envoy else CODES
    outlier_codes = ["UNAVAILABLE", "INTERNAL", "UNKNOWN"] if envoy else CODES
    cluster: dict[str, Any] = {
        "target": "static:///"
        + ",".join(
            f"127.0.0.1:{p}" for p in draw(st.lists(ports, min_size=1, max_size=3, unique=True))
        ),
        "lb_policy": draw(
            st.sampled_from(["round_robin"] if envoy else ["round_robin", "pick_first"])
        ),
        "connect_timeout": draw(_wild_duration(0.01, 30)),
        "keepalive": {
            "time": draw(_wild_duration(10, 3600)),
            "timeout": draw(_wild_duration(0.01, 60)),
            "permit_without_calls": draw(st.booleans()),
        },
        "resolver": {"min_refresh": "1s", "max_refresh": draw(_duration(1, 600))},
    }
    if draw(st.booleans()):
        initial = draw(st.floats(0.001, 1))
        cluster["retry"] = {
            "max_attempts": draw(st.integers(2, 5)),
            "retryable_status_codes": draw(
                st.lists(st.sampled_from(retry_codes), min_size=1, max_size=3)
            ),
            "initial_backoff": f"{initial:.3f}s",
            "max_backoff": f"{initial * draw(st.floats(1, 100)):.3f}s",
        }
        if not envoy:
            cluster["retry"]["backoff_multiplier"] = draw(st.floats(1, 10))
    if draw(st.booleans()):
        base = draw(st.floats(0.01, 100))
        cluster["outlier_detection"] = {
            "consecutive_failures": draw(st.integers(1, 100)),
            "base_ejection_time": f"{base:.3f}s",
            "max_ejection_time": f"{base * draw(st.floats(1, 10)):.3f}s",
            "max_ejection_percent": draw(st.integers(0, 100)),
            "failure_codes": draw(st.lists(st.sampled_from(outlier_codes), min_size=1, max_size=3)),
        }
    if draw(st.booleans()):
        cluster["timeout"] = draw(_wild_duration(0.01, 600))
    if draw(st.booleans()):
        cluster["health_check"] = {"service": draw(st.sampled_from(["", "echo.Echo"]))}
    return cluster


@st.composite
def valid_configs(draw: st.DrawFn, plane: str) -> dict[str, Any]:
    """A config for ``plane``, valid but for the odd out-of-bounds duration."""
    names = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True))
    prefixes = draw(
        st.lists(st.sampled_from(["/x.A/", "/x.B/", "/y.C/Get"]), max_size=2, unique=True)
    )
    routes = [{"prefix": p, "cluster": draw(st.sampled_from(names))} for p in prefixes]
    routes.append({"prefix": "/", "cluster": names[0]})
    server_keepalive = {
        "time": draw(_wild_duration(1, 7200)),
        "timeout": draw(_wild_duration(0.01, 60)),
    }
    if plane == "python" and draw(st.booleans()):  # Envoy cannot express it
        server_keepalive["min_ping_interval"] = draw(_wild_duration(0.01, 600))
    config: dict[str, Any] = {
        "admin": {"listen": "127.0.0.1:0"},
        "outbound": {
            "listen": "127.0.0.1:0",
            "routes": routes,
            "keepalive": server_keepalive,
            "max_concurrent_streams": draw(st.integers(1, 100_000)),
        },
        "clusters": {name: draw(clusters(plane)) for name in names},
        "drain": {"drain_delay": draw(_duration(0, 0.2)), "grace_period": draw(_duration(0, 1))},
        "telemetry": {"prometheus": draw(st.booleans())},
        "log_level": draw(st.sampled_from(["debug", "info", "warning", "error"])),
    }
    if draw(st.booleans()):
        config["inbound"] = {
            "listen": "127.0.0.1:0",
            "app": f"127.0.0.1:{draw(ports)}",
            "max_concurrent_streams": draw(st.integers(1, 100_000)),
        }
    return config


async def _start_and_stop(config: SidecarConfig) -> None:
    sidecar = Sidecar(config)
    task = asyncio.create_task(sidecar.run())
    await wait_until(
        lambda: task.done() or (sidecar.admin is not None and "outbound" in sidecar.addresses),
        timeout=20,
        message="sidecar started",
    )
    assert not task.done(), f"run() ended with {task.result()} on an accepted config"
    host, port = sidecar.addresses["outbound"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5):
        pass  # the outbound listener accepts
    assert sidecar.drain is not None
    sidecar.drain.request()
    assert await asyncio.wait_for(task, 20) == 0


STARTED: dict[str, int] = {}


@pytest.mark.parametrize("plane", ["python", "envoy"])
def test_any_config_validate_accepts_run_starts(plane: str, figures: Figures) -> None:
    skip_without_plane(plane)
    STARTED[plane] = 0

    @settings(
        max_examples=15,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
        # No shrinking: each step would start a sidecar (and an Envoy); the failing config
        # is printed whole.
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
    )
    @given(raw=valid_configs(plane))
    def starts(raw: dict[str, Any]) -> None:
        try:
            config = parse_config({**raw, "data_plane": plane}, {}, check_files=True)
        except ConfigError:
            assume(False)
            raise
        # what `sidecar validate` adds for a config pinned to Envoy
        assume(plane != "envoy" or not unsupported(config))
        asyncio.run(_start_and_stop(config))
        STARTED[plane] += 1

    started = time.monotonic()
    starts()
    figures.record(started_and_stopped=STARTED[plane], seconds=round(time.monotonic() - started, 1))
    assert STARTED[plane] >= 10
