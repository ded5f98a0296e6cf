"""The ``grpc.aio`` twins of :mod:`telemetry`'s interceptors, under the same names, as
``grpc.aio`` mirrors ``grpc``: ``telemetry.aio.client_interceptors`` for a ``grpc.aio``
(or ``balancers.aio``) channel, ``telemetry.aio.server_interceptor`` for a ``grpc.aio.server``.
"""

from __future__ import annotations

from telemetry.interceptors import aio_client_interceptors as client_interceptors
from telemetry.interceptors import aio_server_interceptor as server_interceptor

__all__ = ["client_interceptors", "server_interceptor"]
