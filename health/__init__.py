"""Health: grpc.health.v1 serving, graceful drain, and endpoint health checking.

Names follow grpcio's convention: the sync API is here and its ``grpc.aio`` twin has the same
names in ``health.aio`` (``import health`` is enough for both), as ``grpc.Channel`` and
``grpc.aio.Channel``; what both share is only here.

Serving side
    ``HealthService`` / ``health.aio.HealthService`` put grpcio-health-checking's servicers on
    a sync or ``grpc.aio`` server with a small API (``set``, ``set_all``, ``statuses``,
    ``enter_graceful_shutdown``). ``CheckRunner`` + ``ServiceCheck`` drive statuses from
    periodic checks, for either. ``GracefulDrain`` / ``health.aio.GracefulDrain`` turn SIGTERM
    into NOT_SERVING, a drain delay, then ``server.stop(grace)`` (Kubernetes timing in
    ``health.drain``), both configured by a ``DrainConfig``.

Client side (pure logic plus one watcher per endpoint; the balancers wire them in)
    ``watch_health`` (a sync channel, in a thread) / ``health.aio.watch_health`` (a task)
    follow gRFC A17 over ``Health/Watch`` and report a ``HealthVerdict``. ``OutlierDetector``
    ejects endpoints that keep failing calls.

Former names, importable for one more release with a ``DeprecationWarning``:
``AioHealthService`` (now ``health.aio.HealthService``), ``SyncGracefulDrain`` (now
``GracefulDrain``), ``watch_health_blocking`` (now ``watch_health``). ``GracefulDrain`` given
a ``grpc.aio`` server, and ``watch_health`` given a ``grpc.aio`` channel and no ``stop``, still
do what they did (the aio twin's work), with a ``DeprecationWarning``.

This package imports nothing else of meshkit: only grpc, grpc_health and the standard library.
"""

from typing import TYPE_CHECKING

from health import aio
from health._deprecated import former_names
from health.checks import CheckResult, CheckRunner, ServiceCheck
from health.drain import DrainConfig, GracefulDrain
from health.outlier import DEFAULT_FAILURE_CODES, OutlierConfig, OutlierDetector
from health.service import (
    OVERALL,
    HealthService,
    ServingStatus,
    to_status,
)
from health.watch import (
    Backoff,
    HealthVerdict,
    Transition,
    WatchState,
    verdict_for_status,
    watch_health,
)

__all__ = [
    "DEFAULT_FAILURE_CODES",
    "OVERALL",
    "Backoff",
    "CheckResult",
    "CheckRunner",
    "DrainConfig",
    "GracefulDrain",
    "HealthService",
    "HealthVerdict",
    "OutlierConfig",
    "OutlierDetector",
    "ServiceCheck",
    "ServingStatus",
    "Transition",
    "WatchState",
    "aio",
    "to_status",
    "verdict_for_status",
    "watch_health",
]

if TYPE_CHECKING:  # the former names, typed (at run time they come from __getattr__)
    AioHealthService = aio.HealthService
    SyncGracefulDrain = GracefulDrain
    watch_health_blocking = watch_health
else:  # hidden from type checkers, which would otherwise accept any name of this package
    __getattr__ = former_names(
        "health",
        {
            "AioHealthService": ("health.aio.HealthService", lambda: aio.HealthService),
            "SyncGracefulDrain": ("health.GracefulDrain", lambda: GracefulDrain),
            "watch_health_blocking": ("health.watch_health", lambda: watch_health),
        },
    )
