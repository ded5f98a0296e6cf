"""The seam between the sidecar's control plane and whatever forwards the calls.

:mod:`sidecar.app` owns the process (config, reload, drain, admin, signals) and drives one
:class:`DataPlane`; it never looks inside it. Two implementations, neither importing the other:

- ``envoy`` (:mod:`sidecar.envoy`): an Envoy child process configured over xDS from meshkit's
  config and resolvers; native forwarding, ~1/7 of the Python relay's CPU per call.
- ``python`` (:mod:`sidecar.python_plane`): the grpc.aio raw-bytes relay; no binary needed.

:func:`choose` picks one from ``data_plane`` in the config (null: Envoy when a binary is found)
and says why, for the one start-up log line. A plane is constructed by :func:`build`, which
imports only the module of the plane chosen.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from prometheus_client import CollectorRegistry

from health.aio import HealthService as AioHealthService
from sidecar.config import SidecarConfig
from sidecar.method_kinds import MethodKinds

__all__ = [
    "ApplyError",
    "CallCounts",
    "Choice",
    "DataPlane",
    "Direction",
    "PlaneContext",
    "StartError",
    "build",
    "choose",
]

#: A listener's direction: ``outbound`` (the app calls the mesh), ``inbound`` (to the app).
Direction = Literal["inbound", "outbound"]


class StartError(Exception):
    """The plane cannot start; the message is the one line the sidecar prints."""


class ApplyError(Exception):
    """A new config could not be applied; the running one stays in force."""


@dataclasses.dataclass(frozen=True)
class PlaneContext:
    """What the process gives a plane besides the config."""

    registry: CollectorRegistry
    #: The sidecar's own tracer (an OpenTelemetry ``Tracer``), or ``None`` when tracing is off.
    tracer: Any = None
    #: The config file, for planes that start helper processes reading it.
    config_path: str | None = None
    #: A worker process of a parent sidecar (python plane with ``workers > 1``).
    worker: bool = False
    #: Each method's RPC kind as learned from the servers and descriptor sets (the process
    #: keeps it learning and follows reloads); a plane reads it for methods no route hints.
    method_kinds: MethodKinds | None = None


@dataclasses.dataclass(frozen=True)
class CallCounts:
    """One listener's calls: in flight now, and started since the plane started (a counter
    that only grows while the same forwarder runs; a restarted Envoy starts it again)."""

    active: int = 0
    started: int = 0


class DataPlane(abc.ABC):
    """One data plane's life, as the sidecar drives it.

    Order: ``start()`` once; then any number of ``apply()`` / ``refresh_files()``; the drain
    calls ``stop_inbound(grace)`` and later ``stop_outbound(grace)`` (stop accepting, let calls
    in flight finish; ``None`` again while one is pending: cancel them now), watching
    ``call_counts``; ``close()`` last, also after a failed start. The views may be called from
    the admin server's thread: they read state, never await.
    """

    #: ``"envoy"`` or ``"python"``.
    name: str = ""

    @abc.abstractmethod
    async def start(self) -> dict[str, str]:
        """Bind and start serving; the bound listener addresses by name (``outbound``,
        ``inbound``). Raises :class:`StartError`."""

    @property
    @abc.abstractmethod
    def health(self) -> AioHealthService | None:
        """The inbound ``grpc.health.v1`` service (the drain sets it NOT_SERVING), if any."""

    @abc.abstractmethod
    async def apply(self, config: SidecarConfig) -> str:
        """Serve ``config`` from now on without dropping calls in flight; a one-line summary
        for the log. Raises :class:`ApplyError` and keeps the running config."""

    @abc.abstractmethod
    async def refresh_files(self) -> None:
        """Pick up rotated TLS and token files (polled by the sidecar)."""

    @abc.abstractmethod
    async def stop_inbound(self, grace: float | None) -> None:
        """The inbound listener stops accepting calls; its calls in flight get ``grace``
        seconds (``None``: none). Returns once they ended. No-op without ``inbound``."""

    @abc.abstractmethod
    async def stop_outbound(self, grace: float | None) -> None:
        """:meth:`stop_inbound` for the outbound listener."""

    async def stop(self, grace: float | None) -> None:
        """Both listeners stop accepting at once; calls in flight get ``grace`` seconds."""
        await asyncio.gather(self.stop_inbound(grace), self.stop_outbound(grace))

    @abc.abstractmethod
    async def call_counts(self, direction: Direction) -> CallCounts | None:
        """The calls of the ``direction`` listener (zeros when it is not configured);
        ``None`` when the plane cannot tell now (the drain then assumes calls in flight)."""

    @abc.abstractmethod
    async def close(self, *, forced: bool) -> None:
        """Release everything (after :meth:`stop`, or after a failed start)."""

    @abc.abstractmethod
    def ready(self) -> tuple[bool, str]:
        """Whether the plane serves (clusters warm, app healthy...) and why not."""

    @abc.abstractmethod
    def clusters_view(self) -> dict[str, Any]:
        """The admin ``/clusters`` document: endpoints and their states per cluster."""

    def status_view(self) -> dict[str, Any]:
        """Plane details for the admin ``/config`` document (e.g. xDS versions)."""
        return {}


@dataclasses.dataclass(frozen=True)
class Choice:
    """The plane to run and why (logged once at start-up)."""

    name: str
    reason: str
    #: The Envoy binary, when ``name`` is ``envoy``.
    binary: str | None = None


def choose(config: SidecarConfig, environ: Mapping[str, str] | None = None) -> Choice:
    """The plane ``config`` asks for; ``StartError`` when it names one that cannot run here.

    ``data_plane`` null: Envoy when a binary is found and it can express every setting,
    else the Python relay (the reason says which).
    """
    if config.data_plane == "python":
        return Choice("python", "data_plane: python in the config")
    from sidecar.envoy.binary import find_envoy
    from sidecar.envoy.translate import unsupported

    found = find_envoy(config.envoy.binary)
    problems = unsupported(config)
    if config.data_plane == "envoy":
        if found.binary is None:
            raise StartError(f"data_plane: envoy, but {found.reason}")
        if problems:
            raise StartError(
                "data_plane: envoy cannot express "
                + "; ".join(str(problem) for problem in problems)
            )
        return Choice(
            "envoy", f"data_plane: envoy in the config ({found.reason})", found.binary.path
        )
    if found.binary is None:
        return Choice("python", f"{found.reason}; set data_plane: envoy to require it")
    if problems:
        return Choice(
            "python",
            "Envoy cannot express "
            + "; ".join(str(problem) for problem in problems)
            + " (set data_plane: python to silence this)",
        )
    return Choice("envoy", found.reason, found.binary.path)


def build(choice: Choice, config: SidecarConfig, context: PlaneContext) -> DataPlane:
    """Construct the chosen plane (nothing bound or started yet)."""
    if choice.name == "envoy":
        from sidecar.envoy.plane import EnvoyDataPlane

        assert choice.binary is not None
        return EnvoyDataPlane(config, context, binary=choice.binary)
    from sidecar.python_plane import PythonDataPlane

    return PythonDataPlane(config, context)
