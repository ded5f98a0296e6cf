"""The ``grpc.aio`` twins of ``health``'s sync API, under the same names.

``health.aio.HealthService`` serves grpc.health.v1 on a ``grpc.aio.Server``,
``health.aio.GracefulDrain`` drains one on SIGTERM, and ``health.aio.watch_health`` follows an
endpoint's health over a ``grpc.aio.Channel``. What they share with the sync API
(``DrainConfig``, ``ServingStatus``, ``HealthVerdict``, ``CheckRunner``...) is in ``health``.
"""

from health.aio.drain import GracefulDrain
from health.aio.service import HealthService
from health.aio.watch import watch_health

__all__ = ["GracefulDrain", "HealthService", "watch_health"]
