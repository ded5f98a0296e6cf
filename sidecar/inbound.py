"""The inbound listener: peers call it (mTLS, token auth); calls go to the local app.

It also serves ``grpc.health.v1.Health`` itself, for kubelet gRPC probes and meshkit
balancers in other pods. The health service is registered with ``add_registered_method_handlers``
(grpcio's generated ``add_HealthServicer_to_server``): grpc-core matches a registered path before
any generic handler is asked, so health calls never reach the forwarding handler; that also means
they skip token auth (probes carry no token) and the identity check (``inbound.authorization``,
:class:`~sidecar.authz.AuthorizingHandler`), and are not access-logged. It is added first
anyway, so a grpcio that only consulted generic handlers in order would still answer health here.

Around the forwarding handler: the identity check, then (outermost) the access log, so a call
refused for its identity is logged with ``PERMISSION_DENIED``.

The overall status (``""``, and ``app_health.service`` when named) is SERVING only while the
local app is healthy, as :class:`AppHealth` sees it, and the sidecar is not draining (the drain
flips everything to NOT_SERVING for good).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Any

import grpc

from health.aio import HealthService as AioHealthService
from sidecar import proxy
from sidecar.access_log import AccessLog, AccessLogHandler
from sidecar.app_health import AppHealth, LocalHealth
from sidecar.auth import MISSING_TOKEN, TokenAuth
from sidecar.authz import AuthorizingHandler, IdentityPolicy
from sidecar.config import AuthConfig, InboundConfig, InboundTlsConfig
from sidecar.listeners import bind, listener_options
from sidecar.method_kinds import MethodKinds
from sidecar.proxy_metrics import INBOUND, ProxyMetrics
from sidecar.tls import ServerTlsFiles

__all__ = ["AppHealth", "InboundListener", "authenticator", "check_tls_files"]

_LOG = logging.getLogger(__name__)


def authenticator(config: AuthConfig) -> Callable[[proxy.Metadata], str | None]:
    """The ``authenticate`` check of ``config``: :class:`TokenAuth` on the configured header.

    ``TokenAuth`` reads ``authorization: Bearer <token>``; another header or scheme is mapped
    onto that shape first. Raises ``OSError`` when the token file cannot be read.
    """
    auth = TokenAuth(config.tokens_file)
    if config.header == "authorization" and config.scheme.lower() == "bearer":
        return auth.check
    header, scheme = config.header, config.scheme.lower()
    missing = f"missing token: expected metadata '{header}'" + (
        f" with '{config.scheme} <token>'" if scheme else ""
    )

    def check(metadata: proxy.Metadata) -> str | None:
        value = next((v for k, v in metadata if k == header), None)
        if not isinstance(value, str):
            return missing
        token = value.strip()
        if scheme:
            given, _, token = token.partition(" ")
            if given.lower() != scheme:
                return missing
        details = auth.check((("authorization", f"Bearer {token.strip()}"),))
        return missing if details == MISSING_TOKEN else details

    return check


def check_tls_files(tls: InboundTlsConfig) -> None:
    """Load the TLS files once with :mod:`ssl`, so a bad file is named at start-up (grpc
    itself only reports "failed to bind"). Raises ``OSError`` saying which file is wrong."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except (OSError, ValueError) as exc:
        raise OSError(f"inbound.tls: cannot use cert {tls.cert} with its key: {exc}") from None
    if tls.client_ca is not None:
        try:
            context.load_verify_locations(cafile=tls.client_ca)
        except (OSError, ValueError) as exc:
            raise OSError(f"inbound.tls.client_ca: cannot load {tls.client_ca}: {exc}") from None


class InboundListener:
    """A ``grpc.aio`` server forwarding to the local app, with its own health service."""

    def __init__(
        self,
        config: InboundConfig,
        *,
        metrics: ProxyMetrics | None = None,
        tracer: Any = None,
        access_log: AccessLog | None = None,
        kinds: MethodKinds | None = None,
    ) -> None:
        """Create the server, read TLS and token files, bind (``OSError`` on failure).

        ``access_log``: where to write a line per forwarded call (``None``: no access log).
        ``kinds``: the method kinds learned (the forwarding path of each method).
        """
        self.config = config
        self.health = AioHealthService()
        self.app_channel = grpc.aio.insecure_channel(
            str(config.app),
            options=[
                *proxy.upstream_channel_options(),
                # notice a restarted app within the health interval, not grpc's 120 s backoff
                ("grpc.max_reconnect_backoff_ms", max(1000, config.app_health.interval.ms)),
            ],
        )
        self._upstream = proxy.Upstream("local app", self.app_channel, learned=kinds)
        self.local_health = LocalHealth(self.app_channel, config.app_health, self.health)
        self.app_health = self.local_health.app
        authenticate = authenticator(config.auth) if config.auth is not None else None
        self.server = grpc.aio.server(
            options=listener_options(config.keepalive, config.max_concurrent_streams)
        )
        self.health.add_to_server(self.server)  # before the generic handler: see module doc
        #: The forwarding handler (its ``active`` / ``started`` are what the drain watches).
        self.proxy = proxy.ProxyHandler(
            self._upstream_for,
            authenticate=authenticate,
            forwarded_for=True,
            metrics=metrics,
            direction=INBOUND,
            tracer=tracer,
        )
        handler: grpc.GenericRpcHandler = self.proxy
        if config.authorization is not None:
            allowed = config.authorization
            policy = IdentityPolicy(allowed.allowed_ids, allowed.allowed_san_patterns)
            handler = AuthorizingHandler(handler, policy)
        if access_log is not None:
            app = str(config.app)
            handler = AccessLogHandler(handler, access_log, "inbound", lambda method: app)
        self.server.add_generic_rpc_handlers((handler,))
        credentials = None
        if config.tls is not None:
            check_tls_files(config.tls)
            credentials = ServerTlsFiles(
                config.tls.cert,
                config.tls.key,
                config.tls.client_ca,
                require_client_auth=config.tls.require_client_cert,
            ).credentials()
        self.host = config.listen.host
        self.port = bind(self.server, str(config.listen), credentials)

    def _upstream_for(self, method: str) -> proxy.Upstream:
        return self._upstream

    @property
    def address(self) -> str:
        """``host:port`` actually bound."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def app_healthy(self) -> bool:
        """Whether the local app is healthy now."""
        return self.app_health.healthy

    async def start(self) -> None:
        """Report NOT_SERVING until the app is seen healthy, then start serving."""
        await self.local_health.start()
        await self.server.start()

    async def close(self) -> None:
        """Stop following the app and close the channel to it (the server is stopped
        by the drain)."""
        await self.local_health.close()
        await self.app_channel.close(None)
