"""The outbound listener: the local app calls it; each call is routed to a cluster.

The :class:`~sidecar.proxy.ProxyHandler` asks :meth:`OutboundListener.upstream_for` per call,
which reads ``self.router``. A reload replaces that attribute in one assignment
(:meth:`OutboundListener.swap`), so a call sees either the old or the new routes, never a mix,
and calls already forwarded keep the upstream (channel) they started on.
"""

from __future__ import annotations

from typing import Any

import grpc

from sidecar import proxy
from sidecar.access_log import AccessLog, AccessLogHandler
from sidecar.config import OutboundConfig, ServerKeepaliveConfig
from sidecar.proxy_metrics import OUTBOUND, ProxyMetrics
from sidecar.routing import Router

__all__ = ["OutboundListener", "listener_options"]


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


class OutboundListener:
    """A ``grpc.aio`` server forwarding every call by the router in ``self.router``."""

    def __init__(
        self,
        config: OutboundConfig,
        router: Router[proxy.Upstream],
        *,
        metrics: ProxyMetrics | None = None,
        tracer: Any = None,
        access_log: AccessLog | None = None,
    ) -> None:
        """Create the server and bind its address (``OSError`` when it cannot).

        ``access_log``: where to write a line per call (``None``: no access log). Its
        ``upstream_host`` stays null: the balanced channel picks the endpoint per call, out of
        the relay's sight.
        """
        self.router = router
        self.server = grpc.aio.server(
            options=listener_options(config.keepalive, config.max_concurrent_streams)
        )
        #: The forwarding handler (its ``active`` / ``started`` are what the drain watches).
        self.proxy = proxy.ProxyHandler(
            self.upstream_for, metrics=metrics, direction=OUTBOUND, tracer=tracer
        )
        handler: grpc.GenericRpcHandler = self.proxy
        if access_log is not None:
            handler = AccessLogHandler(handler, access_log, "outbound")
        self.server.add_generic_rpc_handlers((handler,))
        self.host = config.listen.host
        self.port = bind(self.server, str(config.listen))

    def upstream_for(self, method: str) -> proxy.Upstream | None:
        """The upstream of ``method`` by the current routes (called per call)."""
        return self.router.match(method)

    def swap(self, router: Router[proxy.Upstream]) -> None:
        """Route new calls by ``router`` (one reference assignment: atomic for calls)."""
        self.router = router

    @property
    def address(self) -> str:
        """``host:port`` actually bound."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def start(self) -> None:
        """Start serving."""
        await self.server.start()
