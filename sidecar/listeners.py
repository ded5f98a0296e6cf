"""What the sidecar's listeners share: their ``grpc.aio.server`` options and binding."""

from __future__ import annotations

from typing import Any

import grpc

from sidecar import proxy
from sidecar.config import ServerKeepaliveConfig

__all__ = ["bind", "listener_options"]


def listener_options(keepalive: ServerKeepaliveConfig, max_concurrent_streams: int) -> list[Any]:
    """``grpc.aio.server`` options of a sidecar listener.

    Client pings are accepted down to ``min_ping_interval`` also on idle connections
    (``permit_without_calls`` is forced on for the server side): the sidecar's clients are apps
    whose keepalive it does not control, and grpc-core would otherwise answer an idle client's
    second ping with GOAWAY ``too_many_pings``.
    """
    options = proxy.server_options(
        max_concurrent_streams=max_concurrent_streams,
        min_client_ping_interval=float(keepalive.min_ping_interval),
        permit_keepalive_without_calls=True,
        keepalive_time=float(keepalive.time),
        keepalive_timeout=float(keepalive.timeout),
    )
    return [*options, ("grpc.http2.max_pings_without_data", 0)]


def bind(server: grpc.aio.Server, address: str, credentials: Any = None) -> int:
    """Bind ``address`` on ``server``; the port bound, or ``OSError`` naming the address."""
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:  # grpc: "Failed to bind to address ..."
        raise OSError(f"cannot listen on {address}: {exc}") from None
    if not port:
        raise OSError(f"cannot listen on {address} (in use?)")
    return int(port)
