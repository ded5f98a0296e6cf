"""Health: grpc.health.v1 serving, graceful drain, and endpoint health checking.

Serving side
    ``HealthService`` / ``AioHealthService`` put grpcio-health-checking's servicers on a sync
    or ``grpc.aio`` server with a small API (``set``, ``set_all``, ``statuses``,
    ``enter_graceful_shutdown``). ``CheckRunner`` + ``ServiceCheck`` drive statuses from
    periodic checks. ``GracefulDrain`` / ``SyncGracefulDrain`` turn SIGTERM into
    NOT_SERVING, a drain delay, then ``server.stop(grace)`` (Kubernetes timing in
    ``health.drain``).

Client side (pure logic plus one watcher per endpoint; the balancers wire them in)
    ``watch_health`` / ``watch_health_blocking`` follow gRFC A17 over ``Health/Watch`` and
    report a ``HealthVerdict``. ``OutlierDetector`` ejects endpoints that keep failing calls.

This package imports nothing else of meshkit: only grpc, grpc_health and the standard library.
"""

from health.checks import CheckResult, CheckRunner, ServiceCheck
from health.drain import DrainConfig, GracefulDrain, SyncGracefulDrain
from health.outlier import DEFAULT_FAILURE_CODES, OutlierConfig, OutlierDetector
from health.service import (
    OVERALL,
    AioHealthService,
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
    watch_health_blocking,
)

__all__ = [
    "DEFAULT_FAILURE_CODES",
    "OVERALL",
    "AioHealthService",
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
    "SyncGracefulDrain",
    "Transition",
    "WatchState",
    "to_status",
    "verdict_for_status",
    "watch_health",
    "watch_health_blocking",
]
