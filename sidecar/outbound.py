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
from sidecar.config import OutboundConfig
from sidecar.listeners import bind, listener_options
from sidecar.proxy_metrics import OUTBOUND, ProxyMetrics
from sidecar.routing import Router

__all__ = ["OutboundListener"]


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
