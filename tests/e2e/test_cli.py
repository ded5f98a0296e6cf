"""The ``sidecar`` command as a real process: validate, errors, help, env overrides."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

GOOD = """\
outbound: {listen: 127.0.0.1:15001, routes: [{prefix: /, cluster: backend}]}
clusters: {backend: {target: static:///127.0.0.1:10000}}
admin: {listen: 127.0.0.1:9901}
"""

SIDECAR = str(Path(sys.executable).with_name("sidecar"))


def run(
    *args: str, env: dict[str, str] | None = None, module: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run the command with a clean MESHKIT_* environment plus ``env``."""
    environ = {k: v for k, v in os.environ.items() if not k.upper().startswith("MESHKIT_")}
    environ.update(env or {})
    command = [sys.executable, "-m", "sidecar"] if module else [SIDECAR]
    return subprocess.run(
        [*command, *args], env=environ, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    return path


def assert_config_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("config error: ") for line in lines), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


@pytest.mark.parametrize("module", [False, True], ids=["sidecar", "python-m"])
def test_validate_good_config(good: Path, module: bool) -> None:
    result = run("validate", "--config", str(good), module=module)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"config OK: {good}")
    assert "127.0.0.1:15001" in result.stdout and "backend" in result.stdout
    assert result.stderr == ""


def test_validate_prints_effective_config(good: Path) -> None:
    result = run("validate", "-c", str(good), "--print-config")
    assert result.returncode == 0, result.stderr
    assert "max_concurrent_streams: 1000" in result.stdout


def test_bad_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        GOOD.replace(
            "{target: static:///127.0.0.1:10000}",
            "{target: static:///127.0.0.1:10000, retry: {max_attempts: 7}}",
        )
        + "workers: 0\n"
    )
    result = run("validate", "--config", str(path))
    assert_config_error(
        result,
        "config error: clusters.backend.retry.max_attempts: must be 2..5 (got 7)",
        "config error: workers: must be 1..128 (got 0)",
    )


def test_run_with_bad_config_exits_2_before_starting(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace("cluster: backend", "cluster: nope"))
    assert_config_error(run("run", "--config", str(path)), "outbound.routes[0].cluster")


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("admin:\n  listen: [127.0.0.1:9901\noutbound: {}\n")
    result = run("validate", "--config", str(path))
    assert_config_error(result, f"{path}:3:", "YAML syntax error")


def test_missing_file(tmp_path: Path) -> None:
    result = run("validate", "--config", str(tmp_path / "nope.yaml"))
    assert_config_error(result, "nope.yaml: cannot read")


def test_non_mapping_top_level(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- outbound\n")
    assert_config_error(run("validate", "-c", str(path)), "top level must be a mapping")


def test_no_config_at_all() -> None:
    assert_config_error(run("validate"), "MESHKIT_CONFIG")


def test_config_path_from_meshkit_config(good: Path) -> None:
    result = run("validate", env={"MESHKIT_CONFIG": str(good)})
    assert result.returncode == 0, result.stderr


def test_env_override_makes_valid_config_invalid(good: Path) -> None:
    result = run(
        "validate",
        "--config",
        str(good),
        env={"MESHKIT_CLUSTERS__BACKEND__TARGET": "static:///no-port-here"},
    )
    assert_config_error(
        result, "clusters.backend.target", "set by MESHKIT_CLUSTERS__BACKEND__TARGET"
    )


def test_env_override_applies(good: Path) -> None:
    result = run("validate", "-c", str(good), env={"MESHKIT_ADMIN__LISTEN": "127.0.0.1:9999"})
    assert result.returncode == 0, result.stderr
    assert "127.0.0.1:9999" in result.stdout


def test_help_teaches_the_command() -> None:
    result = run("--help", module=True)
    assert result.returncode == 0
    for fragment in ("run", "validate", "MESHKIT_", "exit status", "static:///", "example"):
        assert fragment in result.stdout
    assert run("validate", "--help").returncode == 0


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0 and result.stdout.startswith("sidecar (meshkit) ")


def test_usage_error_exits_2() -> None:
    result = run("frobnicate")
    assert result.returncode == 2 and "Traceback" not in result.stderr


# -- hostile input: refused with one clear line, fast, never a traceback -----------------------


def _laughs(levels: int = 9) -> str:
    """A ~700-byte "billion laughs" YAML document (9**levels strings when expanded)."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_deeply_nested_yaml_is_one_config_error_line(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(GOOD + "workers: " + "[" * 2000 + "]" * 2000 + "\n")
    result = run("validate", "--config", str(path))
    assert_config_error(result, f"{path}:4:", "nesting deeper than 64 levels")
    assert len(result.stderr.splitlines()) == 1


def test_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    path = tmp_path / "laughs.yaml"
    path.write_text(GOOD + _laughs())
    result = run("validate", "--config", str(path))
    assert_config_error(result, str(path), "more than 20000 values")
    assert len(result.stderr.splitlines()) == 1


def test_alias_bomb_in_a_variable_is_refused_naming_it(good: Path) -> None:
    bomb = "{" + _laughs().replace("\n", ", ").rstrip(", ") + "}"
    result = run("validate", "-c", str(good), env={"MESHKIT_WORKERS": bomb})
    assert_config_error(result, "config error: MESHKIT_WORKERS: refused: more than 20000 values")


def test_print_config_redacts_credentials_in_the_otlp_endpoint(tmp_path: Path) -> None:
    path = tmp_path / "otlp.yaml"
    endpoint = "http://user:PASSWORD@collector:4318/v1/traces?api_key=SECRET"
    path.write_text(GOOD + f"telemetry: {{tracing: {{otlp_endpoint: '{endpoint}'}}}}\n")
    result = run("validate", "-c", str(path), "--print-config")
    assert result.returncode == 0, result.stderr
    assert "otlp_endpoint: http://<redacted>@collector:4318/v1/traces?api_key=<redacted>" in (
        result.stdout
    )
    assert "PASSWORD" not in result.stdout and "SECRET" not in result.stdout


def test_validate_parses_tls_files(tmp_path: Path) -> None:
    (tmp_path / "tls.crt").write_text("not a certificate\n")
    (tmp_path / "tls.key").write_text("not a key\n")
    path = tmp_path / "tls.yaml"
    path.write_text(
        GOOD + "inbound: {listen: 127.0.0.1:15006, app: 127.0.0.1:8080,"
        " tls: {cert: tls.crt, key: tls.key, require_client_cert: false}}\n"
    )
    result = run("validate", "-c", str(path))
    assert_config_error(
        result,
        f"config error: inbound.tls.cert: {tmp_path / 'tls.crt'}: not a PEM certificate",
        f"config error: inbound.tls.key: {tmp_path / 'tls.key'}: not a PEM private key",
    )
    assert run("validate", "-c", str(path), "--skip-file-checks").returncode == 0


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("drain: {drain_delay: 1e300s}", "drain.drain_delay: must be at most 1h"),
        (
            "inbound: {listen: 127.0.0.1:15006, app: 127.0.0.1:8080, keepalive: {time: 1e308}}",
            "inbound.keepalive.time: must be at most 24h",
        ),
        ("inbound: {listen: 127.0.0.1:15006, app: 'host:٨٠'}", "inbound.app: port must be"),
        ("inbound: {listen: 127.0.0.1:15006, app: '256.1.1.1:80'}", "not an IPv4 address"),
    ],
    ids=["drain-1e300s", "keepalive-1e308", "arabic-indic-port", "octet-256"],
)
def test_values_run_could_not_use_fail_validate(tmp_path: Path, line: str, fragment: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD + line + "\n")
    assert_config_error(run("validate", "-c", str(path)), fragment)


def test_nul_target_fails_validate(tmp_path: Path) -> None:
    path = tmp_path / "nul.yaml"
    path.write_text(GOOD.replace("static:///127.0.0.1:10000", '"\\0"'))
    assert_config_error(
        run("validate", "-c", str(path)), "clusters.backend.target: must not contain control"
    )


# -- data plane --------------------------------------------------------------------------------

PICK_FIRST = GOOD.replace("backend: {", "backend: {lb_policy: pick_first, ")


def test_validate_says_which_data_plane_runs(good: Path) -> None:
    pinned = run("validate", "--config", str(good), env={"MESHKIT_DATA_PLANE": "python"})
    assert "  data plane python: data_plane: python in the config" in pinned.stdout
    auto = run("validate", "--config", str(good))
    assert auto.returncode == 0, auto.stderr
    from sidecar.envoy.binary import find_envoy

    expected = "envoy" if find_envoy(None).binary is not None else "python"
    assert f"  data plane {expected}: " in auto.stdout


def test_a_setting_envoy_cannot_express(tmp_path: Path) -> None:
    path = tmp_path / "pick_first.yaml"
    path.write_text(PICK_FIRST)
    assert "pick_first" in PICK_FIRST
    # pinned to Envoy: a config error naming the field, for validate and run alike
    for command in ("validate", "run"):
        result = run(command, "--config", str(path), env={"MESHKIT_DATA_PLANE": "envoy"})
        assert_config_error(result, "clusters.backend.lb_policy", "(data_plane: envoy)")
    # unpinned: valid, and the fallback says why
    auto = run("validate", "--config", str(path))
    assert auto.returncode == 0, auto.stderr
    assert "  data plane python: " in auto.stdout
    assert "  not expressible on the Envoy plane: clusters.backend.lb_policy" in auto.stdout
