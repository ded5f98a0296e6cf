"""How the real ``sidecar run`` process logs: ``--log-level`` over the config's ``log_level``
(kept across a config reload), and ``log_format: json`` (one JSON object a line). Also the
classic sidecar's postStart hook, run against a real sidecar."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar import logs
from sidecar.inject import wait_live_script
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.e2e

SIDECAR = str(Path(sys.executable).with_name("sidecar"))


def config(**extra: Any) -> dict[str, Any]:
    return {
        "admin": {"listen": "127.0.0.1:0"},
        "outbound": {"listen": "127.0.0.1:0", "routes": [{"prefix": "/", "cluster": "backend"}]},
        "clusters": {"backend": {"target": "static:///127.0.0.1:9"}},
        "data_plane": "python",
        "drain": {"drain_delay": "0s", "grace_period": "1s"},
        **extra,
    }


class Process:
    """``sidecar run`` with its stdout and stderr collected line by line."""

    def __init__(self, config_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        environ = {k: v for k, v in os.environ.items() if not k.upper().startswith("MESHKIT_")}
        environ.update(env or {})
        self.proc = subprocess.Popen(
            [SIDECAR, "run", "--config", str(config_path), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environ,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_started(self) -> None:
        wait_until_sync(
            lambda: (
                any(line.startswith("listening admin=") for line in self.stdout)
                or self.proc.poll() is not None
            ),
            timeout=20,
            message="sidecar start",
        )
        assert self.proc.poll() is None, "\n".join(self.stderr)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=20)
        for reader in self._readers:
            reader.join(timeout=5)
        return code


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait(timeout=10)


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_log_level_flag_overrides_the_config_and_survives_a_reload(
    tmp_path: Path, processes: list[Process]
) -> None:
    path = write(tmp_path / "sidecar.yaml", config(log_level="warning"))
    process = Process(path, "--log-level", "INFO")
    processes.append(process)
    process.wait_started()
    # info lines at start-up: the flag won over log_level: warning
    wait_until_sync(
        lambda: any("data plane: python" in line for line in process.stderr),
        message="the start-up info line",
    )
    # a reload re-reads the file (still warning); the flag must hold, so the info line after
    # the new config's level is set still shows
    write(path, config(log_level="warning", workers=1))
    process.proc.send_signal(signal.SIGHUP)
    wait_until_sync(
        lambda: any("config applied" in line for line in process.stderr),
        message="config applied at info level after the reload",
    )
    assert process.stop() == 0
    assert not any(" DEBUG " in line for line in process.stderr)


def test_without_the_flag_the_config_level_holds(tmp_path: Path, processes: list[Process]) -> None:
    path = write(tmp_path / "sidecar.yaml", config(log_level="warning"))
    process = Process(path)
    processes.append(process)
    process.wait_started()
    assert process.stop() == 0
    assert not any(" INFO " in line for line in process.stderr), process.stderr


def test_json_log_format_writes_one_object_a_line(tmp_path: Path, processes: list[Process]) -> None:
    path = write(tmp_path / "sidecar.yaml", config(log_level="info", log_format="json"))
    process = Process(path, "--log-level", "debug")
    processes.append(process)
    process.wait_started()
    assert process.stop() == 0
    assert process.stderr, "no log lines"
    entries = [json.loads(line) for line in process.stderr]  # every line is one JSON object
    for entry in entries:
        assert list(entry)[:4] == ["time", "level", "logger", "message"], entry
        assert entry["time"].endswith("Z")
    levels = {entry["level"] for entry in entries}
    assert "debug" in levels and "info" in levels
    assert any(e["message"].startswith("data plane: python") for e in entries)


def test_json_log_format_from_the_environment(tmp_path: Path, processes: list[Process]) -> None:
    path = write(tmp_path / "sidecar.yaml", config(log_level="info"))
    process = Process(path, env={"MESHKIT_LOG_FORMAT": "json"})
    processes.append(process)
    process.wait_started()
    assert process.stop() == 0
    assert process.stderr
    assert all(json.loads(line)["logger"] for line in process.stderr)


@pytest.mark.parametrize(
    ("args", "data", "message"),
    [
        (("--log-level", "loud"), {}, "argument --log-level: invalid choice: 'loud'"),
        ((), {"log_format": "xml"}, "config error: log_format: must be one of text, json"),
    ],
)
def test_bad_log_settings_exit_2(
    tmp_path: Path, args: tuple[str, ...], data: dict[str, Any], message: str
) -> None:
    path = write(tmp_path / "sidecar.yaml", config(**data))
    environ = {k: v for k, v in os.environ.items() if not k.upper().startswith("MESHKIT_")}
    result = subprocess.run(
        [SIDECAR, "run", "--config", str(path), *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )
    assert result.returncode == 2, result
    assert message in result.stderr


# --------------------------------------------------------------------------- the formatter itself


def _record(message: str, *args: Any, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("meshkit.test", logging.WARNING, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_extra_fields_and_stay_one_line() -> None:
    formatter = logs.JsonFormatter()
    line = formatter.format(
        _record("peer %s said\n%s", "10.0.0.1", "forged line", cluster="echo", peer=object())
    )
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "warning" and entry["logger"] == "meshkit.test"
    assert entry["message"] == "peer 10.0.0.1 said\nforged line"
    assert entry["cluster"] == "echo"
    assert entry["peer"].startswith("<object object")  # not JSON: written as str()
    assert list(entry)[:4] == ["time", "level", "logger", "message"]


def test_json_lines_carry_the_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "meshkit.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    entry = json.loads(logs.JsonFormatter(worker=True).format(record))
    assert "ValueError: boom" in entry["exception"]
    assert entry["worker"] == os.getpid()


def test_configure_replaces_the_root_handlers() -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    try:
        logs.configure("debug", "json", stream=stream)
        assert len(root.handlers) == 1 and root.level == logging.DEBUG
        logging.getLogger("meshkit.x").debug("hello %d", 1, extra={"n": 2})
        assert json.loads(stream.getvalue())["n"] == 2
        with pytest.raises(ValueError, match="log format must be one of text, json"):
            logs.configure("info", "xml")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


# --------------------------------------------------------------------------- classic hook


def test_classic_post_start_hook_returns_once_the_sidecar_is_live(
    tmp_path: Path, processes: list[Process]
) -> None:
    """The postStart hook of a classic sidecar (deploy/components/classic-sidecar, and
    ``sidecar inject --classic``), run against a real sidecar's admin port."""
    path = write(tmp_path / "sidecar.yaml", config())
    process = Process(path)
    processes.append(process)
    process.wait_started()
    (admin,) = [line for line in process.stdout if line.startswith("listening admin=")]
    port = int(admin.rsplit(":", 1)[1])
    hook = subprocess.run(
        [sys.executable, "-c", wait_live_script(port)], capture_output=True, text=True, timeout=30
    )
    assert hook.returncode == 0, hook.stderr
    assert process.stop() == 0
