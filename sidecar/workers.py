"""Worker processes sharing the listeners' ports (``workers: N``).

grpcio serves one event loop per process, so more cores need more processes. The parent runs
the data plane itself plus the admin server, and starts ``N - 1`` workers: the same sidecar
without admin, binding the same addresses. grpc sets ``SO_REUSEPORT`` on its listeners by
default, so the kernel spreads new connections over every process bound to a port (which is
also why ``workers > 1`` needs fixed ports: each process would get its own port 0).

Workers are fresh interpreters (``subprocess``, never ``fork``: grpc's threads do not survive
a fork) running :func:`sidecar.app.worker_main` on the same config file and environment. The
parent forwards SIGTERM (drain; a second one stops at once) and SIGHUP (reload; workers also
watch the file), restarts a worker that dies while serving, and at exit waits for them.
A worker whose parent disappears drains itself. Workers ignore SIGINT: a terminal's Ctrl-C
reaches the whole process group, and the parent's forwarded SIGTERM is their drain signal.

``/ready``, ``/clusters`` and ``/metrics`` describe the parent's own data plane.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import time

__all__ = ["WORKER_BOOT", "Workers"]

_LOG = logging.getLogger(__name__)

#: The worker's command after ``sys.executable -c``; the config path follows as ``argv[1]``.
WORKER_BOOT = "import sys; from sidecar.app import worker_main; sys.exit(worker_main(sys.argv[1]))"

_RESTART_DELAY = 1.0
_POLL = 0.2


class Workers:
    """``count`` worker processes for ``config_path``, kept running until :meth:`signal` sends
    ``SIGTERM``."""

    def __init__(self, config_path: str, count: int) -> None:
        self._path = config_path
        self._count = count
        self._procs: list[subprocess.Popen[bytes]] = []
        self._stopping = False

    def _spawn(self) -> subprocess.Popen[bytes]:
        # stdout stays the parent's (nothing is printed there), stderr carries the logs.
        proc = subprocess.Popen([sys.executable, "-c", WORKER_BOOT, self._path])
        _LOG.info("worker started (pid %d)", proc.pid)
        return proc

    def start(self) -> None:
        """Start every worker."""
        self._procs = [self._spawn() for _ in range(self._count)]

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers now."""
        return [p.pid for p in self._procs]

    async def supervise(self) -> None:
        """Restart workers that exit while serving; runs until cancelled."""
        while True:
            await asyncio.sleep(_POLL)
            for i, proc in enumerate(self._procs):
                code = proc.poll()
                if code is None or self._stopping:
                    continue
                _LOG.error("worker %d exited with %s; restarting it", proc.pid, code)
                await asyncio.sleep(_RESTART_DELAY)
                if not self._stopping:
                    self._procs[i] = self._spawn()

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to every running worker."""
        if sig is signal.SIGTERM:
            self._stopping = True
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(sig)

    async def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for every worker to exit, then kill the rest."""
        deadline = time.monotonic() + timeout
        for proc in self._procs:
            try:
                await asyncio.to_thread(proc.wait, max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _LOG.warning("worker %d did not stop in time; killing it", proc.pid)
                proc.kill()
                await asyncio.to_thread(proc.wait)
