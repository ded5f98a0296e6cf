"""An echo backend as a real separate process, on a port the test may choose again after a
restart, with graceful drain on SIGTERM (kill -9 and rolling restarts of real processes).

    python -m tests.support.backend_process --name b0 [--port P] --drain-delay 0.3 --grace 5

Prints ``PORT <n>`` once listening (signal handlers installed before that) and
``STATS <json>`` (Unary calls started, cancelled) after a drain. Replies name the server
``--name``. :class:`BackendProcess` starts one and reads its port.

Restarting on the same port binds it again (a real bind, not a probe): the port was this
test's own process's a moment ago, and grpc servers bind with ``SO_REUSEADDR``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc

from health import DrainConfig
from health.aio import GracefulDrain, HealthService
from tests.support.echo import EchoServicer, echo_pb2_grpc

__all__ = ["BackendProcess", "main"]

START_TIMEOUT = 15.0
_ROOT = Path(__file__).resolve().parents[2]


async def _serve(name: str, host: str, port: int, config: DrainConfig) -> int:
    server = grpc.aio.server()
    servicer = EchoServicer(name)
    echo_pb2_grpc.add_EchoServicer_to_server(servicer, server)
    health = HealthService()
    health.add_to_server(server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        print(f"BINDFAILED {port}", flush=True)
        return 2
    drain = GracefulDrain(server, health, config)
    drain.install_signal_handlers()
    await server.start()
    print(f"PORT {bound}", flush=True)
    await drain.wait()
    stats = {"started": servicer.calls["Unary"], "cancelled": servicer.cancelled}
    print(f"STATS {json.dumps(stats)}", flush=True)
    return 3 if drain.forced else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--drain-delay", type=float, default=0.3)
    parser.add_argument("--grace", type=float, default=5.0)
    args = parser.parse_args(argv)
    config = DrainConfig(args.drain_delay, args.grace)
    return asyncio.run(_serve(args.name, args.host, args.port, config))


class BackendProcess:
    """One backend process; :meth:`start` waits until it listens."""

    def __init__(self, name: str, host: str, port: int, drain_delay: float, grace: float) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.lines: list[str] = []
        env = {**os.environ, "PYTHONPATH": str(_ROOT)}
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.backend_process",
                "--name",
                name,
                "--host",
                host,
                "--port",
                str(port),
                "--drain-delay",
                str(drain_delay),
                "--grace",
                str(grace),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=_ROOT,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.strip())

    @classmethod
    async def start(
        cls,
        name: str,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        drain_delay: float = 0.3,
        grace: float = 5.0,
    ) -> BackendProcess:
        """Start and wait for its ``PORT`` line (``port`` 0: the kernel chooses)."""
        backend = cls(name, host, port, drain_delay, grace)
        deadline = time.monotonic() + START_TIMEOUT
        while not any(line.startswith("PORT ") for line in backend.lines):
            if backend.process.poll() is not None or time.monotonic() > deadline:
                backend.kill()
                raise RuntimeError(
                    f"backend {name} did not start on {host}:{port}: {backend.lines}"
                )
            await asyncio.sleep(0.02)
        backend.port = int(next(x for x in backend.lines if x.startswith("PORT "))[5:])
        return backend

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """kill -9 (no drain, connections reset); waits for the process to be gone."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)

    def terminate(self) -> None:
        """SIGTERM: a graceful drain."""
        self.process.send_signal(signal.SIGTERM)

    async def wait_exit(self, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"backend {self.name} still running after {timeout}s")
            await asyncio.sleep(0.02)
        return self.process.returncode

    def stats(self) -> dict[str, int]:
        """The ``STATS`` a drained process printed."""
        line = next(x for x in self.lines if x.startswith("STATS "))
        return dict(json.loads(line[6:]))


if __name__ == "__main__":
    sys.exit(main())
