"""Envoy as a child process of the sidecar: start, supervise, drain, stop.

Command line and why:

- ``-c <private dir>/bootstrap.json``: the directory is ``mkdtemp``'s (mode 0700), the file
  0600; both are removed at :meth:`EnvoyProcess.stop`.
- ``--admin-address-path``: Envoy writes its bound admin address there, so the admin can bind
  port 0; start-up waits for that file and then for ``/ready`` to say ``LIVE``.
- ``--disable-hot-restart``: a restart here is a new process after the old one is gone, never
  Envoy's hot restart. With hot restart on (even with ``--use-dynamic-base-id``) every Envoy
  creates ``/dev/shm/envoy_shared_memory_*``, and an Envoy that is killed, or that merely
  rejects its config, leaves that file behind; without it there is no base id to collide on
  either, so any number of Envoys run side by side.
- ``--drain-strategy immediate`` and ``--drain-time-s``: when :meth:`EnvoyProcess.drain` runs,
  the sidecar has already been announcing NOT_SERVING for ``drain_delay``; every connection is
  told to go away at once (HTTP/2 GOAWAY, HTTP/1 ``Connection: close``) rather than a growing
  share of them over the drain time (``gradual``, meant for edge proxies that must not send all
  clients elsewhere at the same moment), and the listeners close after ``drain_time``.
  Streams in flight continue until :meth:`EnvoyProcess.stop`. The same two options govern a
  listener that an LDS update changes or removes: its connections are told to go away at once
  and closed after ``drain_time``, so ``drain_time`` should cover the longest call.
- ``--log-format '[%l][%n] %v'`` and ``--log-format-escaped``: one line per log entry, with the
  level and logger name, so every line is forwarded to Python logging at Envoy's level as
  ``envoy: [<logger>] <message>``.
- On Linux Envoy gets ``PR_SET_PDEATHSIG`` = SIGKILL (set by a tiny launcher that then
  ``exec``s Envoy under the same pid): if the sidecar is killed outright, Envoy dies too
  instead of holding the ports.

Supervision: an Envoy that exits on its own is started again with exponential back-off
(0.5 s doubling to 30 s; back to 0.5 s once an Envoy has run for 60 s), counted in
``meshkit_envoy_restarts_total``, and ``on_restart`` is called once the new one is ``LIVE``
(its admin address may have changed). Over ADS the new Envoy asks for every resource on its
own, so the xDS server needs no push to feed it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter

from sidecar.envoy.admin_client import AdminError, EnvoyAdmin, address_text

__all__ = ["Backoff", "EnvoyProcess", "EnvoyStartError", "envoy_argv"]

_LOG = logging.getLogger("meshkit.sidecar.envoy")

LOG_LEVELS: Final = ("trace", "debug", "info", "warning", "error", "critical", "off")
_LEVELS: Final = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
_LOG_LINE = re.compile(r"^\[(trace|debug|info|warning|error|critical)\]\[([^\]]*)\] ?(.*)$")
_LOG_FORMAT: Final = "[%l][%n] %v"
#: Longest log line forwarded; Envoy's debug logs can dump whole configs on one line.
_MAX_LINE: Final = 16 * 1024
_READ_LIMIT: Final = 1024 * 1024
#: Lines kept for the error message of a failed start.
_LAST_LINES: Final = 12
_POLL: Final = 0.05
_ACTIVE_POLL: Final = 0.1

# Runs in the child before Envoy: sets the parent-death signal, checks that the parent did
# not die before that, then becomes Envoy (same pid).
_LAUNCHER: Final = (
    "import ctypes,os,signal,sys\n"
    "try:\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)\n"
    "except Exception:\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class EnvoyStartError(Exception):
    """Envoy could not be started; the message says why, with Envoy's last error lines."""


@dataclass(frozen=True)
class Backoff:
    """Delays between restarts: ``initial`` doubling to ``maximum``; back to ``initial`` after
    an Envoy stayed up ``reset_after`` seconds."""

    initial: float = 0.5
    maximum: float = 30.0
    reset_after: float = 60.0


def envoy_argv(
    binary: str,
    config_path: str,
    admin_path: str,
    *,
    concurrency: int,
    log_level: str,
    drain_time: float,
    extra: Sequence[str] = (),
) -> list[str]:
    """Envoy's command line (see the module doc for each option)."""
    # Envoy's parser (TCLAP) takes option values as separate arguments.
    return [
        binary,
        "-c",
        config_path,
        "--concurrency",
        str(concurrency),
        "--admin-address-path",
        admin_path,
        "--disable-hot-restart",
        "--drain-strategy",
        "immediate",
        "--drain-time-s",
        str(max(0, round(drain_time))),
        "--log-level",
        log_level,
        "--log-format",
        _LOG_FORMAT,
        "--log-format-escaped",
        *extra,
    ]


def _launcher(argv: list[str]) -> list[str]:
    if sys.platform != "linux":
        return argv
    return [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(os.getpid()), *argv]


def _exit_text(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class EnvoyProcess:
    """One Envoy child process and its supervision.

    ``binary``: the Envoy executable; ``bootstrap``: the config (a dict, written as JSON).
    ``drain_time``: seconds between :meth:`drain` and the listeners closing
    (``--drain-time-s``). ``start_timeout``: bound on each start until ``LIVE``.
    ``kill_after``: seconds between SIGTERM and SIGKILL at :meth:`stop`. ``registry``: where
    ``meshkit_envoy_restarts_total`` is registered (none when ``None``). ``on_restart``:
    called (and awaited if it returns an awaitable) after each restart, once ``LIVE``.
    ``on_exit``: called when Envoy exited on its own, before it is started again (e.g. to
    serve the next one a snapshot that keeps the ports the first one bound).
    ``directory``: a private directory of the owner's to put the bootstrap and the admin
    address file in (kept at :meth:`stop`, the two files removed); by default one of its own.
    """

    def __init__(
        self,
        binary: str,
        bootstrap: Mapping[str, Any],
        *,
        concurrency: int = 2,
        log_level: str = "warning",
        drain_time: float = 5.0,
        start_timeout: float = 30.0,
        kill_after: float = 5.0,
        registry: CollectorRegistry | None = None,
        on_restart: Callable[[], Awaitable[object] | object] | None = None,
        on_exit: Callable[[], None] | None = None,
        backoff: Backoff = Backoff(),
        extra_args: Sequence[str] = (),
        directory: str | None = None,
    ) -> None:
        if log_level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.binary = binary
        self._bootstrap = json.dumps(bootstrap, indent=1)
        self._concurrency = concurrency
        self._log_level = log_level
        self._drain_time = drain_time
        self._start_timeout = start_timeout
        self._kill_after = kill_after
        self._on_restart = on_restart
        self._on_exit = on_exit
        self._backoff = backoff
        self._extra = tuple(extra_args)
        self._restarts_counter = (
            Counter(
                "meshkit_envoy_restarts",
                "Times the Envoy data plane was started again after it exited on its own.",
                registry=registry,
            )
            if registry is not None
            else None
        )
        self.restarts = 0
        self._given_dir = Path(directory) if directory is not None else None
        self._dir: Path | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self._last_lines: collections.deque[tuple[bool, str]] = collections.deque(
            maxlen=_LAST_LINES
        )
        self._admin: EnvoyAdmin | None = None
        self._started_at = 0.0
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False

    # -- views --------------------------------------------------------------------------------

    @property
    def admin_address(self) -> str | None:
        """The running Envoy's admin address (``host:port`` or a socket path), else ``None``."""
        admin = self._admin
        return admin.address if admin is not None else None

    @property
    def admin(self) -> EnvoyAdmin | None:
        """A client for the running Envoy's admin, else ``None`` (changes on a restart)."""
        return self._admin

    @property
    def pid(self) -> int | None:
        """The running Envoy's process id."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    @property
    def running(self) -> bool:
        """Whether an Envoy process is alive now."""
        return self.pid is not None

    async def listener_addresses(self) -> dict[str, str]:
        """The running Envoy's listeners by name, with the address each one bound
        (``host:port``, ``[v6]:port`` or ``unix:/path``); ``{}`` when none runs. Raises
        :class:`AdminError` when Envoy's admin does not answer."""
        admin = self._admin
        if admin is None:
            return {}
        document = await admin.alisteners()
        bound: dict[str, str] = {}
        for status in document.get("listener_statuses", ()):
            if isinstance(status, dict) and "name" in status:
                bound[str(status["name"])] = address_text(status.get("local_address", {}))
        return bound

    async def active_requests(self) -> int:
        """Requests in flight on Envoy's listeners (its admin excluded); 0 when no Envoy
        runs. Raises :class:`AdminError` when Envoy's admin does not answer."""
        admin = self._admin
        if admin is None or not self.running:
            return 0
        return await _active_requests(admin, admin.timeout)

    async def request_counts(self, stat_prefix: str) -> tuple[int, int]:
        """(in flight, started) on the HTTP listener with ``stat_prefix``
        (``http.<stat_prefix>.downstream_rq_active`` / ``_total``); zeros when no Envoy runs.
        Raises :class:`AdminError` when Envoy's admin does not answer."""
        admin = self._admin
        if admin is None or not self.running:
            return 0, 0
        prefix = re.escape(stat_prefix)
        document = await admin.astats_json(
            filter_regex=rf"^http\.{prefix}\.downstream_rq_(active|total)$",
            timeout=admin.timeout,
        )
        values = {"active": 0, "total": 0}
        for stat in document.get("stats", ()):
            name = str(stat.get("name", "")) if isinstance(stat, dict) else ""
            kind = name.rsplit("_", 1)[-1]
            if name.startswith(f"http.{stat_prefix}.") and kind in values:
                values[kind] = int(stat.get("value", 0) or 0)
        return values["active"], values["total"]

    # -- life ---------------------------------------------------------------------------------

    async def start(self, *, timeout: float | None = None) -> None:
        """Start Envoy and wait until it is ``LIVE`` (at most ``timeout`` seconds, by default
        ``start_timeout``); then supervise it.

        Raises :class:`EnvoyStartError` (nothing is left running or on disk then).
        """
        if self._dir is not None:
            raise RuntimeError("EnvoyProcess.start() called twice")
        if not os.access(self.binary, os.X_OK):
            raise EnvoyStartError(f"envoy binary {self.binary!r} is not an executable file")
        if timeout is not None:
            self._start_timeout = timeout
        self._dir = self._given_dir or Path(tempfile.mkdtemp(prefix="meshkit-envoy-"))
        try:
            config, _ = self._paths()
            config.unlink(missing_ok=True)
            fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(self._bootstrap)
            await self._spawn()
        except BaseException:
            self._remove_dir()
            raise
        self._supervisor = asyncio.get_running_loop().create_task(
            self._supervise(), name="envoy-supervisor"
        )

    async def drain(self, *, graceful: bool = True, inbound_only: bool = False) -> None:
        """Ask Envoy to drain its listeners (see :meth:`EnvoyAdmin.drain_listeners`); calls in
        flight continue. A failure is logged: the stop that follows ends Envoy regardless."""
        admin = self._admin
        if admin is None or not self.running:
            return
        try:
            await admin.drain_listeners(graceful=graceful, inbound_only=inbound_only)
        except AdminError as exc:
            _LOG.warning("envoy: drain request failed: %s", exc)

    async def stop(self, grace: float = 0.0) -> None:
        """Stop supervising, give calls in flight up to ``grace`` seconds (less when none
        is left), then SIGTERM, and SIGKILL after ``kill_after``. Idempotent; also when
        cancelled, the process is killed rather than left behind."""
        self._stopping = True
        supervisor, self._supervisor = self._supervisor, None
        proc = self._proc
        try:
            if supervisor is not None:
                supervisor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await supervisor
                proc = self._proc
            if proc is not None and proc.returncode is None:
                if grace > 0:
                    await self._wait_idle(proc, grace)
                await self._terminate(proc)
        finally:
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await self._end_pumps()
            self._admin = None
            self._remove_dir()

    async def __aenter__(self) -> EnvoyProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- internals ----------------------------------------------------------------------------

    def _paths(self) -> tuple[Path, Path]:
        assert self._dir is not None
        return self._dir / "bootstrap.json", self._dir / "admin-address"

    async def _spawn(self) -> None:
        """One Envoy process, until ``LIVE``; on any failure (or cancellation) it is killed."""
        config, admin_path = self._paths()
        admin_path.unlink(missing_ok=True)
        self._admin = None
        self._last_lines.clear()
        await self._end_pumps()
        argv = envoy_argv(
            self.binary,
            str(config),
            str(admin_path),
            concurrency=self._concurrency,
            log_level=self._log_level,
            drain_time=self._drain_time,
            extra=self._extra,
        )
        try:
            proc = await asyncio.create_subprocess_exec(
                *_launcher(argv),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=_READ_LIMIT,
                # Its own session: a terminal's Ctrl-C (or a signal to the sidecar's process
                # group) reaches the sidecar alone, which then drains Envoy in order.
                start_new_session=True,
            )
        except OSError as exc:
            raise EnvoyStartError(f"cannot run {self.binary}: {exc.strerror or exc}") from None
        self._proc = proc
        assert proc.stdout is not None and proc.stderr is not None
        loop = asyncio.get_running_loop()
        self._pumps = [
            loop.create_task(self._pump(proc.stdout, stdout=True), name="envoy-stdout"),
            loop.create_task(self._pump(proc.stderr), name="envoy-stderr"),
        ]
        try:
            self._admin = await self._wait_live(proc, admin_path)
        except BaseException:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(proc.wait(), self._kill_after)
            await self._end_pumps()
            raise
        self._started_at = time.monotonic()
        self._last_lines.clear()  # start-up warnings say nothing about a later exit
        _LOG.info("envoy: running, pid %d, admin %s", proc.pid, self._admin.address)

    async def _wait_live(self, proc: asyncio.subprocess.Process, admin_path: Path) -> EnvoyAdmin:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._start_timeout
        exited = loop.create_task(proc.wait())
        state = "no admin address yet"
        try:
            while True:
                if exited.done():
                    await self._end_pumps()
                    raise EnvoyStartError(
                        f"envoy {_exit_text(proc.returncode)} during start-up"
                        + self._last_lines_text()
                    )
                admin = self._read_admin(admin_path)
                if admin is not None:
                    budget = max(0.1, min(1.0, deadline - loop.time()))
                    try:
                        state = await admin.aserver_state(timeout=budget)
                    except AdminError as exc:
                        state = str(exc)
                    if state == "LIVE":
                        return admin
                if loop.time() >= deadline:
                    raise EnvoyStartError(
                        f"envoy not ready within {self._start_timeout:g} s ({state})"
                        + self._last_lines_text()
                    )
                await asyncio.wait({exited}, timeout=_POLL)
        finally:
            if not exited.done():
                exited.cancel()

    @staticmethod
    def _read_admin(path: Path) -> EnvoyAdmin | None:
        try:
            text = path.read_text().strip()
        except OSError:
            return None
        return EnvoyAdmin(text) if text else None

    def _last_lines_text(self) -> str:
        # Lines outside Envoy's log format are its last words on a fatal error (the reason
        # alone, where the log line also carries context): prefer them.
        lines = [text for raw, text in self._last_lines if raw] or [
            text for _, text in self._last_lines
        ]
        return ": " + " | ".join(lines) if lines else ""

    async def _pump(self, stream: asyncio.StreamReader, stdout: bool = False) -> None:
        """Forward Envoy's output, line by line, to logging; on ``stdout``, access log lines
        (JSON objects: Envoy's own log goes to stderr) to the sidecar's standard output."""
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line over the reader's limit: its start is dropped
                continue
            if not raw:
                return
            if stdout and raw.startswith(b"{"):
                sys.stdout.buffer.write(raw if raw.endswith(b"\n") else raw + b"\n")
                sys.stdout.flush()
                continue
            line = raw.decode("utf-8", "replace").rstrip()[:_MAX_LINE]
            if not line:
                continue
            match = _LOG_LINE.match(line)
            if match:
                level = _LEVELS[match.group(1)]
                text = f"[{match.group(2)}] {match.group(3)}"
            else:
                # Not from Envoy's logger: its last words before exiting on a bad config.
                level, text = logging.WARNING, line
            if level >= logging.WARNING:
                self._last_lines.append((match is None, text))
            _LOG.log(level, "envoy: %s", text)

    async def _end_pumps(self) -> None:
        pumps, self._pumps = self._pumps, []
        if pumps:
            # The pipes close when Envoy exits; bounded in case a grandchild holds them.
            _, pending = await asyncio.wait(pumps, timeout=2.0)
            for task in pending:
                task.cancel()

    async def _wait_idle(self, proc: asyncio.subprocess.Process, grace: float) -> None:
        """Wait up to ``grace`` seconds, less once Envoy has no request in flight."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        admin = self._admin
        while loop.time() < deadline and proc.returncode is None:
            if admin is not None:
                try:
                    active = await _active_requests(admin, min(1.0, deadline - loop.time()))
                except AdminError:
                    admin = None  # cannot tell: wait out the grace
                else:
                    if active == 0:
                        return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    proc.wait(), max(0.0, min(_ACTIVE_POLL, deadline - loop.time()))
                )

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self._kill_after)
        except asyncio.TimeoutError:
            _LOG.warning("envoy: no exit %g s after SIGTERM: killing it", self._kill_after)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        _LOG.info("envoy: stopped (%s)", _exit_text(proc.returncode))

    async def _supervise(self) -> None:
        delay = self._backoff.initial
        while not self._stopping:
            proc = self._proc
            assert proc is not None
            code = await proc.wait()
            if self._stopping:
                return
            await self._end_pumps()
            uptime = time.monotonic() - self._started_at
            if uptime >= self._backoff.reset_after:
                delay = self._backoff.initial
            _LOG.error(
                "envoy: %s after %.1f s%s; restarting in %.1f s",
                _exit_text(code),
                uptime,
                self._last_lines_text(),
                delay,
            )
            self._admin = None
            if self._on_exit is not None:
                try:
                    self._on_exit()
                except Exception:  # supervision must go on whatever failed
                    _LOG.exception("envoy: on_exit callback failed")
            while True:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff.maximum)
                self.restarts += 1
                if self._restarts_counter is not None:
                    self._restarts_counter.inc()
                try:
                    await self._spawn()
                    break
                except Exception as exc:  # supervision must go on whatever failed
                    _LOG.error("envoy: restart failed: %s; next try in %.1f s", exc, delay)
            await self._notify_restart()

    async def _notify_restart(self) -> None:
        if self._on_restart is None:
            return
        try:
            result = self._on_restart()
            if inspect.isawaitable(result):
                await result
        except Exception:  # the owner's bug must not end the supervision
            _LOG.exception("envoy: on_restart callback failed")

    def _remove_dir(self) -> None:
        if self._dir is None:
            return
        if self._given_dir is None:
            shutil.rmtree(self._dir, ignore_errors=True)
            return
        for path in self._paths():
            path.unlink(missing_ok=True)


async def _active_requests(admin: EnvoyAdmin, timeout: float) -> int:
    """Requests in flight on Envoy's HTTP listeners (its own admin listener excluded)."""
    document = await admin.astats_json(
        filter_regex=r"^http\.[^.]+\.downstream_rq_active$", timeout=timeout
    )
    total = 0
    for stat in document.get("stats", ()):
        name = stat.get("name", "") if isinstance(stat, dict) else ""
        if name.startswith("http.") and not name.startswith("http.admin."):
            total += int(stat.get("value", 0) or 0)
    return total
