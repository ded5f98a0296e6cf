"""The sidecar process: the control plane around one data plane, admin, drain and reload.

``sidecar run --config FILE`` calls :func:`run` with the validated config. Start-up:

1. the data plane is chosen (:func:`sidecar.dataplane.choose`: Envoy when found, else the
   Python relay; one log line says which and why) and started: it binds the outbound (routes to
   clusters) and inbound (to the local app, with ``grpc.health.v1``) listeners before anything
   is announced; then the admin HTTP server;
2. one line per listener on stdout, flushed: ``listening outbound=127.0.0.1:15001`` (also
   ``inbound=`` and ``admin=``); tools parse these to find ports bound as ``:0``;
   ``data_plane=envoy`` (or ``python``) is printed first.

``workers: N`` is Envoy's ``--concurrency N``; on the Python plane the parent starts ``N - 1``
worker processes serving the same ports (:mod:`sidecar.workers`); the admin server and the
stdout lines are the parent's.

A start-up failure (port in use, unreadable certificate) prints one ``sidecar: cannot start:``
line on stderr and exits 1.

Liveness (admin ``/live``): 200 while the event loop turns. The admin server starts only
after the data plane has bound and started both listeners (Envoy's are read back from Envoy once
it is ``LIVE``), so ``/live`` answering at all means the outbound and inbound listeners accept:
a ``startupProbe`` on it holds a native sidecar's app (an init container with ``restartPolicy:
Always``) until the app can call out.

Readiness (admin ``/ready``): 200 once every cluster has resolved endpoints at least once (a
later outage of a dependency does not make this pod unready: that would cascade), the local
app is healthy (when inbound is configured), and no drain has begun; 503 with the reason
otherwise. Each cluster's endpoints are logged, one line a cluster, when first resolved and
on every change.

Shutdown (SIGTERM / SIGINT), step by step; the same on both data planes:

1. ``/ready`` 503 and the inbound ``grpc.health.v1`` NOT_SERVING at once (balancers watching
   it stop sending; the kubelet's readiness probe fails and endpoints drop the pod);
2. the inbound listener serves on for ``drain.drain_delay`` while endpoint removal propagates,
   cut short once the local app is gone (its port refuses connections: serving on would only
   fail calls, while a refused connection makes clients fail over);
3. the inbound listener stops accepting; its calls in flight get ``drain.grace_period``;
4. the outbound listener stays open while the app may still call out: until the app is gone
   (its port refuses connections and no inbound call is in flight) and no outbound call has
   been in flight for ``drain.outbound_idle`` since (work an app does after closing its port,
   such as flushing); if the app was already gone at the signal, 0.2 s of quiet suffices.
   Without ``inbound`` it waits for ``drain.outbound_idle`` of quiet from the signal on. At
   most ``drain.outbound_max_wait`` after the signal (null: ``drain_delay + grace_period``);
5. the outbound listener stops accepting; its calls in flight get ``drain.grace_period``;
   channels close and the process exits 0.

In a native-sidecar pod the kubelet signals the sidecar only after the app has exited: steps
2 and 4 take nothing and an idle sidecar exits within a fraction of a second. In a classic pod
both containers are signalled at once: the app drains on its own schedule (it should keep
accepting at least ``drain_delay``: calls reach it only through the inbound listener) while the
outbound listener serves its calls out until it has exited. A second SIGTERM / SIGINT stops at
once, cutting calls in flight (exit 1).

Other signals:

- SIGHUP, or the config file changing on disk (polled every second, symlink swaps included):
  reload. An invalid config is logged field by field and the running one stays. A valid one
  is applied by the data plane without dropping calls (the Python plane builds new clusters
  first and swaps its router in one assignment; the Envoy plane pushes a new xDS snapshot, no
  Envoy restart). Listener addresses,
  TLS/auth settings, inbound, admin, telemetry and ``workers`` need a restart: a change there
  is logged as a warning and the running listeners stay as they are.

Method kinds (``method_kinds``): the process learns each method's RPC kind for both planes
(:class:`~sidecar.method_kinds.MethodKinds`, handed over in the
:class:`~sidecar.dataplane.PlaneContext`): from the descriptor set files, and over server
reflection from every cluster (a fresh channel built as the Python plane's, closed after) and
the local app, at start, every ``refresh`` and soon after a call for an unknown method; a
reload re-reads the files and the sources. Each worker process learns for itself. The admin
``/config`` document lists what is known under ``method_kinds_learned``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter

import health
from sidecar import dataplane, logs
from sidecar.admin import AdminServer
from sidecar.app_health import app_listening
from sidecar.clusters import channel_factory
from sidecar.config import ConfigError, SidecarConfig, load_config
from sidecar.dataplane import ApplyError, DataPlane, PlaneContext
from sidecar.lifecycle import ConfigWatcher, TaskSet
from sidecar.method_kinds import ChannelFactory, MethodKinds, merged, read_descriptor_set
from sidecar.observability import build_tracer
from sidecar.workers import Workers
from telemetry.otel_metrics import OtelMetricsBridge
from telemetry.otlp import metric_exporter
from telemetry.rpc_kind import RpcKind

__all__ = ["Sidecar", "StartupError", "descriptor_kinds", "kind_sources", "run", "worker_main"]

_LOG = logging.getLogger("meshkit.sidecar")

EXIT_OK = 0
EXIT_FAILURE = 1

#: Allocations between young-generation collections once serving (CPython's default is 700).
#: A forwarded call allocates a few hundred container objects that die with it, so the default
#: runs a collection every few calls; the proxy's own state is frozen after start-up.
_GC_GEN0_THRESHOLD = 20_000

#: How often TLS and token files are checked for rotation.
_FILES_POLL_INTERVAL = 5.0
#: Seconds without an event-loop heartbeat after which ``/live`` fails.
_STUCK_LOOP = 10.0
#: Bound on reading and validating a changed config file.
_RELOAD_TIMEOUT = 5.0
_HEARTBEAT = 1.0
#: How often the drain looks whether the app is gone and at the listeners' calls in flight.
_DRAIN_POLL = 0.05
#: Outbound quiet asked for when the app was already gone at the signal (a native sidecar is
#: signalled after the app exited): covers an app that closed its port just before.
_SETTLE = 0.2


class StartupError(Exception):
    """The sidecar cannot start; the message is the one line printed."""


def run(config: SidecarConfig, config_path: str | None = None) -> int:
    """Run the sidecar until drained; returns the exit status."""
    return _run_loop(Sidecar(config, config_path).run)


def worker_main(config_path: str) -> int:
    """Entry point of a worker process (see :mod:`sidecar.workers`)."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        for error in exc.errors:
            print(f"config error: {error}", file=sys.stderr)
        return 2
    logs.configure(config.log_level, config.log_format, worker=True)
    return _run_loop(Sidecar(config, config_path, worker=True).run)


def _run_loop(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    # uvloop measurably speeds up the proxy (10-20% less CPU per forwarded call in bench/), and
    # grpc.aio runs on it. It is a dependency everywhere but Windows (pyproject's marker), where
    # plain asyncio runs.
    if sys.platform == "win32":
        return asyncio.run(main())
    import uvloop

    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main())
    uvloop.install()  # pragma: no cover - Python 3.10
    return asyncio.run(main())  # pragma: no cover


def _tune_gc() -> None:
    """After start-up: move what exists to the permanent generation (modules, config, channels
    are never garbage; collections stop scanning them) and collect the young generation less
    often (see :data:`_GC_GEN0_THRESHOLD`). Reference cycles are still collected."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(_GC_GEN0_THRESHOLD, gen1, gen2)


def descriptor_kinds(config: SidecarConfig) -> dict[str, RpcKind]:
    """The kinds of the config's descriptor set files, earlier files winning; ``ValueError``
    naming the file that cannot be read."""
    tables = []
    for i, path in enumerate(config.method_kinds.descriptor_sets):
        try:
            tables.append(read_descriptor_set(path))
        except ValueError as exc:
            raise ValueError(f"method_kinds.descriptor_sets[{i}]: {path}: {exc}") from None
    return merged(tables)


def kind_sources(config: SidecarConfig) -> dict[str, ChannelFactory]:
    """The servers to learn method kinds from over reflection: each cluster (keyed by name and
    target, so a new target is a new source and what the old one taught is dropped) and the
    local app; none when ``method_kinds.reflection`` is off."""
    if not config.method_kinds.reflection:
        return {}
    sources: dict[str, ChannelFactory] = {
        f"cluster {name} {cluster.target}": channel_factory(cluster)
        for name, cluster in config.clusters.items()
    }
    if config.inbound is not None:
        app = str(config.inbound.app)
        sources[f"app {app}"] = lambda: grpc.aio.insecure_channel(app)
    return sources


def _restart_needed(old: SidecarConfig, new: SidecarConfig) -> list[str]:
    """Field paths whose change a reload cannot apply to running listeners."""
    fields: list[str] = []
    if old.admin != new.admin:
        fields.append("admin")
    if old.inbound != new.inbound:
        fields.append("inbound")
    if old.telemetry != new.telemetry:
        fields.append("telemetry")
    if old.workers != new.workers:
        fields.append("workers")
    if old.data_plane != new.data_plane:
        fields.append("data_plane")
    if old.envoy != new.envoy:
        fields.append("envoy")
    if old.outbound is not None and new.outbound is not None:
        for name in ("listen", "keepalive", "max_concurrent_streams"):
            if getattr(old.outbound, name) != getattr(new.outbound, name):
                fields.append(f"outbound.{name}")
    return fields


def _effective(old: SidecarConfig, new: SidecarConfig) -> SidecarConfig:
    """``new`` with the parts that need a restart kept as ``old`` has them running."""
    outbound = new.outbound
    if old.outbound is not None and outbound is not None:
        outbound = dataclasses.replace(
            outbound,
            listen=old.outbound.listen,
            keepalive=old.outbound.keepalive,
            max_concurrent_streams=old.outbound.max_concurrent_streams,
        )
    return dataclasses.replace(
        new,
        admin=old.admin,
        inbound=old.inbound,
        outbound=outbound,
        telemetry=old.telemetry,
        workers=old.workers,
        data_plane=old.data_plane,
        envoy=old.envoy,
    )


class DrainWatch:
    """Steps 2 and 4 of the shutdown (see the module doc), watched from the signal on:
    ``app_gone`` is set once the local app's port refuses connections (at once without
    ``inbound``: nothing to drain there); ``released`` once the outbound listener may close,
    with ``reason`` saying why."""

    def __init__(self, plane: DataPlane, config: SidecarConfig) -> None:
        self._plane = plane
        self._config = config
        #: Whether there is an inbound listener (and a local app) at all.
        self.inbound = config.inbound is not None
        self.app_gone = asyncio.Event()
        self.released = asyncio.Event()
        self.reason = ""

    async def run(self) -> None:
        """Watch until the outbound is released (then return). Should watching fail, the
        outbound is released rather than held until the kubelet's SIGKILL."""
        try:
            await self._watch()
        except Exception as exc:
            _LOG.error("drain: watching the app and the calls failed: %r", exc)
            self.app_gone.set()
            self._release(f"cannot watch: {exc!r}")

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        drain, inbound = self._config.drain, self._config.inbound
        app = inbound.app if inbound is not None else None
        start = loop.time()
        bound, idle = start + float(drain.outbound_bound), float(drain.outbound_idle)
        if app is None:
            self.app_gone.set()
        if self._config.outbound is None:
            self._release("no outbound listener")
            return
        quiet_since, last_started = start, -1
        app_seen, gone_at = False, start
        while True:
            if not self.app_gone.is_set():
                assert app is not None
                if await app_listening(app):
                    app_seen = True
                else:
                    gone_at = loop.time()
                    self.app_gone.set()
                    _LOG.info("drain: the local app is gone (%s refuses connections)", app)
            outbound = await self._plane.call_counts("outbound")
            now = loop.time()
            if outbound is None:  # cannot tell: count it as busy
                quiet_since = now
            else:
                if outbound.active or (last_started >= 0 and outbound.started != last_started):
                    quiet_since = now
                last_started = outbound.started
            if app is None:
                if now - quiet_since >= idle:
                    self._release(f"no outbound call for {idle:g} s")
                    return
            elif self.app_gone.is_set():
                need = idle if app_seen else min(idle, _SETTLE)
                inbound_calls = await self._plane.call_counts("inbound")
                inbound_idle = inbound_calls is not None and inbound_calls.active == 0
                if inbound_idle and now - max(quiet_since, gone_at) >= need:
                    self._release(f"the local app is gone, no outbound call for {need:g} s")
                    return
            if now >= bound:
                self._release(f"outbound_max_wait ({drain.outbound_bound}) reached")
                return
            await asyncio.sleep(_DRAIN_POLL)

    def _release(self, reason: str) -> None:
        self.reason = reason
        self.released.set()


class ShutdownSequence:
    """What :class:`health.aio.GracefulDrain` stops once the drain delay is over: the inbound
    listener at once, the outbound one when :class:`DrainWatch` releases it (steps 3-5 of the
    module doc). ``stop(None)`` (a second signal) stops both at once and ends a pending stop."""

    def __init__(self, plane: DataPlane, watch: Callable[[], DrainWatch | None]) -> None:
        self._plane = plane
        self._watch = watch
        self._forced = asyncio.Event()

    async def stop(self, grace: float | None) -> None:
        """Stop the listeners in order; calls in flight get ``grace`` seconds each."""
        plane = self._plane
        if grace is None:
            self._forced.set()
            await asyncio.gather(plane.stop_inbound(None), plane.stop_outbound(None))
            return
        watch = self._watch()
        if watch is not None and watch.inbound:
            why = "the local app is gone" if watch.app_gone.is_set() else "drain_delay over"
            _LOG.info(
                "drain: inbound stops accepting (%s); its calls in flight get %g s", why, grace
            )
        inbound = asyncio.ensure_future(plane.stop_inbound(grace))
        try:
            if watch is not None:
                forced = asyncio.ensure_future(self._forced.wait())
                released = asyncio.ensure_future(watch.released.wait())
                try:
                    await asyncio.wait({forced, released}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    forced.cancel()
                    released.cancel()
            if self._forced.is_set():
                return
            reason = watch.reason if watch is not None else "no drain watch"
            _LOG.info(
                "drain: outbound stops accepting (%s); its calls in flight get %g s", reason, grace
            )
            await plane.stop_outbound(grace)
        finally:
            await inbound


class Sidecar:
    """One sidecar process's state; :meth:`run` is its whole life."""

    def __init__(
        self, config: SidecarConfig, config_path: str | None = None, *, worker: bool = False
    ) -> None:
        """``worker``: a worker process of a parent sidecar (no admin, no stdout lines)."""
        self.config = config
        self.config_path = config_path
        self.worker = worker
        self._parent_pid = os.getppid()
        self._workers: Workers | None = None
        self.registry = CollectorRegistry()
        self.plane: DataPlane | None = None
        self.admin: AdminServer | None = None
        self.drain: health.aio.GracefulDrain | None = None
        self._drain_watch: DrainWatch | None = None
        self._tasks = TaskSet()
        self._reload_lock: asyncio.Lock | None = None
        self._watcher: ConfigWatcher | None = None
        self._tracing: Any = None
        self._otel_metrics: OtelMetricsBridge | None = None
        self.method_kinds: MethodKinds | None = None
        self._reloads = Counter(
            "meshkit_config_reloads",
            "Config reloads attempted, by result (applied, rejected, failed).",
            ("result",),
            registry=self.registry,
        )
        self.addresses: dict[str, str] = {}
        self._heartbeat = time.monotonic()

    # -- views (the admin server may call these from its own thread) ----------------------

    def live(self) -> bool:
        """The event loop is turning: the admin server runs on its own thread, so it answering
        proves little by itself; a loop stuck for :data:`_STUCK_LOOP` seconds is not live."""
        return time.monotonic() - self._heartbeat < _STUCK_LOOP

    def ready(self) -> tuple[bool, str]:
        """Readiness and its reason (see the module doc)."""
        drain = self.drain
        if drain is not None and drain.draining:
            return False, "draining"
        if drain is None or self.plane is None:
            return False, "starting"
        return self.plane.ready()

    def clusters_view(self) -> dict[str, Any]:
        """The ``/clusters`` document."""
        return self.plane.clusters_view() if self.plane is not None else {}

    def config_view(self) -> dict[str, Any]:
        """The ``/config`` document: the effective config, secrets redacted, and the data
        plane's own status (which plane runs; for Envoy the xDS versions ACKed and the last
        NACK)."""
        document = self.config.to_dict(redact=True)
        if self.plane is not None:
            document["data_plane_status"] = {"plane": self.plane.name, **self.plane.status_view()}
        kinds = self.method_kinds
        if kinds is not None:
            document["method_kinds_learned"] = {
                "rounds": kinds.rounds,
                "methods": dict(sorted(kinds.table.items())),
            }
        return document

    # -- life ---------------------------------------------------------------------------------

    async def run(self) -> int:
        """Start, serve until a drain completes, clean up; the exit status."""
        self._reload_lock = asyncio.Lock()
        try:
            await self._start()
        except (StartupError, dataplane.StartError) as exc:
            print(f"sidecar: cannot start: {exc}", file=sys.stderr, flush=True)
            await self._shutdown(forced=True)
            return EXIT_FAILURE
        self._announce()
        _tune_gc()
        assert self.drain is not None
        try:
            await self.drain.wait()
        finally:
            await self._shutdown(forced=self.drain.forced)
        _LOG.info("stopped")
        return EXIT_FAILURE if self.drain.forced else EXIT_OK

    async def _start(self) -> None:
        config = self.config
        if self.worker:
            choice = dataplane.Choice("python", "worker process")
        else:
            choice = dataplane.choose(config)
        _LOG.info("data plane: %s (%s)", choice.name, choice.reason)
        self.addresses["data_plane"] = choice.name
        python_workers = choice.name == "python" and config.workers > 1 and not self.worker
        if python_workers and self.config_path is None:
            _LOG.warning("workers: %d needs a config file; running 1 process", config.workers)
        self._tracing = build_tracer(config.telemetry.tracing)
        self.method_kinds = self._start_method_kinds(config)
        context = PlaneContext(
            registry=self.registry,
            tracer=self._tracing.tracer if self._tracing is not None else None,
            config_path=self.config_path,
            worker=self.worker,
            method_kinds=self.method_kinds,
        )
        self.plane = dataplane.build(choice, config, context)
        self.addresses.update(await self.plane.start())
        self._start_otel_metrics()
        # After start: the plane's inbound health service exists only once it has started.
        self.drain = health.aio.GracefulDrain(
            ShutdownSequence(self.plane, lambda: self._drain_watch),  # only stop(grace) is used
            self.plane.health,
            health.DrainConfig(float(config.drain.drain_delay), float(config.drain.grace_period)),
            on_event=self._drain_event,
            delay_done=self._app_gone,
        )
        self._tasks.spawn(self._beat(), "heartbeat")
        loop = asyncio.get_running_loop()
        if self.worker:
            self.drain.install_signal_handlers((signal.SIGTERM,))
            loop.add_signal_handler(signal.SIGINT, lambda: None)  # see sidecar.workers
        else:
            await self._start_admin()
            self.drain.install_signal_handlers((signal.SIGTERM, signal.SIGINT))
            if python_workers and self.config_path is not None:
                self._workers = Workers(self.config_path, config.workers - 1)
                self._workers.start()
                self._tasks.spawn(self._workers.supervise(), "workers")
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        if self.config_path is not None:
            self._watcher = ConfigWatcher(self.config_path, self.reload)
            self._tasks.spawn(self._watcher.run(), "config-watch")
        self._tasks.spawn(self._watch_files(), "files-watch")

    def _start_method_kinds(self, config: SidecarConfig) -> MethodKinds:
        """The learner of method kinds, learning from now on (see the module doc)."""
        try:
            files = descriptor_kinds(config)
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        settings = config.method_kinds
        kinds = MethodKinds(
            files=files,
            refresh=float(settings.refresh),
            timeout=float(settings.timeout),
            on_change=self._kinds_changed,
        )
        kinds.set_sources(kind_sources(config))
        self._tasks.spawn(kinds.run(), "method-kinds")
        return kinds

    @staticmethod
    def _kinds_changed(table: Any) -> None:
        _LOG.info("method kinds: %d method(s) known", len(table))

    def _update_method_kinds(self, new: SidecarConfig, files: dict[str, RpcKind]) -> None:
        """Follow a reload: the descriptor sets' kinds (read by the caller), the sources (a
        learning round follows), the timings."""
        kinds = self.method_kinds
        if kinds is not None:
            settings = new.method_kinds
            kinds.refresh, kinds.timeout = float(settings.refresh), float(settings.timeout)
            kinds.set_files(files)
            kinds.set_sources(kind_sources(new))

    async def _start_admin(self) -> None:
        self.admin = AdminServer(
            str(self.config.admin.listen),
            live=self.live,
            ready=self.ready,
            clusters=self.clusters_view,
            config=self.config_view,
            registry=self.registry,
            expose_debug=self.config.admin.expose_debug,
        )
        try:
            port = await self.admin.start()
        except OSError as exc:
            self.admin = None
            raise StartupError(exc.strerror or str(exc)) from None
        host = self.config.admin.listen.host
        self.addresses["admin"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def _beat(self) -> None:
        while True:
            self._heartbeat = time.monotonic()
            drain = self.drain
            if self.worker and os.getppid() != self._parent_pid and drain and not drain.draining:
                _LOG.warning("parent sidecar gone: draining")
                drain.request()
            await asyncio.sleep(_HEARTBEAT)

    def _drain_event(self, what: str) -> None:
        if what == "draining" and self.plane is not None and self._drain_watch is None:
            self._drain_watch = DrainWatch(self.plane, self.config)
            self._tasks.spawn(self._drain_watch.run(), "drain-watch")
        if self._workers is not None and what in ("draining", "forced"):
            self._workers.signal(signal.SIGTERM)  # the second one makes them stop at once

    async def _app_gone(self) -> None:
        """Ends the drain delay early: the local app is gone (or there is no inbound)."""
        watch = self._drain_watch
        if watch is not None:
            await watch.app_gone.wait()
        else:  # pragma: no cover - the watch is made on the "draining" event, before this
            await asyncio.Event().wait()

    def _announce(self) -> None:
        for name, address in self.addresses.items():
            line = f"listening {name}={address}"
            if name == "data_plane":
                line = f"data_plane={address}"
            if not self.worker:
                print(line, flush=True)
            _LOG.info("%s", line)

    def _start_otel_metrics(self) -> None:
        """Export the call metrics over OTLP too, when configured (the parent process only:
        with workers > 1 it reads its own registry, as /metrics does)."""
        settings = self.config.telemetry.otel_metrics
        if self.worker or settings.otlp_endpoint is None:
            return
        exporter = metric_exporter(settings.otlp_endpoint, settings.protocol, settings.headers)
        self._otel_metrics = OtelMetricsBridge(
            self.registry,
            exporter,
            interval=float(settings.interval),
            service_name=self.config.telemetry.tracing.service_name,
        )
        self._otel_metrics.start()

    async def _shutdown(self, *, forced: bool) -> None:
        """Close everything after the listeners stopped (or failed to start)."""
        await self._tasks.cancel()
        if self.drain is not None:
            self.drain.remove_signal_handlers()
        with contextlib.suppress(NotImplementedError, RuntimeError):  # non-Unix loops
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        if self._workers is not None:
            drain = self.config.drain
            longest = max(float(drain.drain_delay), float(drain.outbound_bound))
            await self._workers.wait(0.0 if forced else longest + float(drain.grace_period) + 2)
        if self.plane is not None:
            await self.plane.close(forced=forced)
        if self.admin is not None:
            try:
                await self.admin.stop()
            except Exception as exc:
                _LOG.warning("admin server stop failed: %s", exc)
        if self._tracing is not None:
            self._tracing.shutdown()
        if self._otel_metrics is not None:
            self._otel_metrics.shutdown()  # a last export of the final counts

    # -- reload -------------------------------------------------------------------------------

    def _on_sighup(self) -> None:
        _LOG.info("SIGHUP: reloading %s", self.config_path)
        if self._workers is not None:
            self._workers.signal(signal.SIGHUP)
        self._tasks.spawn(self.reload(), "reload")

    async def _watch_files(self) -> None:
        while True:
            await asyncio.sleep(_FILES_POLL_INTERVAL)
            if self.plane is not None and self._reload_lock is not None:
                async with self._reload_lock:
                    await self.plane.refresh_files()

    async def reload(self) -> bool:
        """Re-read the config file and apply it; False when it was rejected or failed."""
        if self.config_path is None or self._reload_lock is None:
            return False
        if self.drain is not None and self.drain.draining:
            _LOG.info("reload ignored: draining")
            return False
        async with self._reload_lock:
            if self._watcher is not None:
                self._watcher.seen()
            try:
                # Off the event loop and bounded in time: the loader's limits already make a
                # hostile file cheap, and this keeps even a slow disk from stalling the loop
                # that serves /live and the Python plane's calls.
                new = await asyncio.wait_for(
                    asyncio.to_thread(load_config, self.config_path), _RELOAD_TIMEOUT
                )
            except asyncio.TimeoutError:
                _LOG.error(
                    "config reload: reading %s took over %s s; keeping the running config",
                    self.config_path,
                    _RELOAD_TIMEOUT,
                )
                self._reloads.labels("failed").inc()
                return False
            except ConfigError as exc:
                for error in exc.errors:
                    _LOG.error("config reload rejected: %s", error)
                _LOG.error("config reload rejected: keeping the running config")
                self._reloads.labels("rejected").inc()
                return False
            old = self.config
            if (old.outbound is None) != (new.outbound is None):
                _LOG.warning(
                    "config reload: adding or removing 'outbound' needs a restart;"
                    " keeping the running config"
                )
                self._reloads.labels("rejected").inc()
                return False
            restart = _restart_needed(old, new)
            if restart:
                _LOG.warning(
                    "config reload: changes to %s need a restart; running with the old values",
                    ", ".join(restart),
                )
            try:
                effective = _effective(old, new)
            except ConfigError as exc:
                _LOG.error("config reload rejected, keeping the running config: %s", exc)
                self._reloads.labels("rejected").inc()
                return False
            return await self._apply(effective)

    async def _apply(self, new: SidecarConfig) -> bool:
        """Hand ``new`` to the data plane; on success it is the running config."""
        assert self.plane is not None
        try:
            # Off the loop: up to 16 MiB a file.
            files = await asyncio.to_thread(descriptor_kinds, new)
            summary = await self.plane.apply(new)
        except (ApplyError, ValueError) as exc:
            _LOG.error("config reload failed, keeping the running config: %s", exc)
            self._reloads.labels("failed").inc()
            return False
        self._update_method_kinds(new, files)
        self.config = new
        if self.drain is not None:
            self.drain.config = health.DrainConfig(
                float(new.drain.drain_delay), float(new.drain.grace_period)
            )
        logging.getLogger().setLevel(new.log_level.upper())
        self._reloads.labels("applied").inc()
        _LOG.info("config applied: %s", summary)
        return True
