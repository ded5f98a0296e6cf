"""The admin HTTP server: ``/live``, ``/ready``, ``/metrics``, ``/clusters``, ``/config``.

It runs the standard library's ``ThreadingHTTPServer`` on its own daemon thread rather than on
the event loop: admin traffic is tiny, and this way a busy data plane cannot starve a kubelet
probe or a scrape (and a slow scrape cannot stall the data plane). The price is that the
callables given to :class:`AdminServer` run on admin threads, concurrently with the loop, so
they must only *read*: an atomic reference to an immutable snapshot (a frozen config, a tuple,
a bool flag), or state whose single-attribute reads are atomic (see
:mod:`sidecar.observability`). They must not await, lock the loop, or mutate anything.

Robustness: the stdlib parses requests and answers malformed ones itself (400, 414 for a
request line over 64 KiB, 431 for too many/too long headers); every connection has a socket
timeout (slow clients are dropped); connections beyond ``max_connections`` are closed at once
so a flood cannot grow threads without bound; an exception in a callable becomes a 500 (a 503
for the probes) and a log line, never a dead server.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from sidecar._config_values import ListenAddress

__all__ = ["ENDPOINTS", "AdminBindError", "AdminServer"]

_LOG = logging.getLogger(__name__)

#: Path -> what it serves; also the body of ``GET /``.
ENDPOINTS: dict[str, str] = {
    "/live": "liveness: 200 while the process works",
    "/ready": "readiness: 200 when ready to take traffic, else 503 with the reason",
    "/metrics": "Prometheus metrics (text format; OpenMetrics on request)",
    "/clusters": "clusters and their endpoints (JSON)",
    "/config": "the configuration in effect (JSON)",
}

_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json"


class AdminBindError(OSError):
    """The admin listener could not bind its address."""


class _Server(ThreadingHTTPServer):
    """The HTTP server plus what the handlers need, and bounded concurrency."""

    daemon_threads = True  # never wait for a stuck client at exit
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        admin: AdminServer,
        max_connections: int,
        family: socket.AddressFamily,
    ) -> None:
        self.address_family = family
        self.admin = admin
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # over the limit: drop rather than queue a thread
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The default prints a traceback to stderr; a reset connection is routine here.
        _LOG.debug("admin: error serving %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive for scrapers; every response has a length
    server_version = "meshkit-admin"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # A socket timeout per connection: a slow or silent client is dropped, not waited for.
        self.connection.settimeout(self.server.admin.timeout)

    def log_message(self, format: str, *args: Any) -> None:
        _LOG.debug("admin %s: " + format, self.address_string(), *args)

    # -- methods ---------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _not_allowed(self) -> None:
        self._reply(
            HTTPStatus.METHOD_NOT_ALLOWED,
            b"method not allowed\n",
            _TEXT,
            head=False,
            extra={"Allow": "GET, HEAD"},
        )

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

    # -- routing ----------------------------------------------------------------------------

    def _serve(self, head: bool) -> None:
        path = urlsplit(self.path).path
        admin = self.server.admin
        try:
            if path == "/live":
                status, body, ctype = self._live(admin)
            elif path == "/ready":
                status, body, ctype = self._ready(admin)
            elif path == "/metrics":
                self._metrics(admin, head)
                return
            elif path == "/clusters":
                status, body, ctype = HTTPStatus.OK, _json(admin.clusters()), _JSON
            elif path == "/config":
                status, body, ctype = HTTPStatus.OK, _json(admin.config()), _JSON
            elif path == "/":
                status, body, ctype = HTTPStatus.OK, _index(), _TEXT
            else:
                status, body, ctype = HTTPStatus.NOT_FOUND, b"not found; see /\n", _TEXT
        except Exception as exc:
            _LOG.warning("admin: %s failed: %r", path, exc, exc_info=True)
            status, body, ctype = HTTPStatus.INTERNAL_SERVER_ERROR, _error(exc), _TEXT
        self._reply(status, body, ctype, head=head)

    @staticmethod
    def _live(admin: AdminServer) -> tuple[HTTPStatus, bytes, str]:
        try:
            live = bool(admin.live())
        except Exception as exc:  # a probe that cannot tell is a failing probe
            _LOG.warning("admin: live check failed: %r", exc)
            return HTTPStatus.SERVICE_UNAVAILABLE, _error(exc), _TEXT
        if live:
            return HTTPStatus.OK, b"ok\n", _TEXT
        return HTTPStatus.SERVICE_UNAVAILABLE, b"not live\n", _TEXT

    @staticmethod
    def _ready(admin: AdminServer) -> tuple[HTTPStatus, bytes, str]:
        try:
            ready, reason = admin.ready()
        except Exception as exc:
            _LOG.warning("admin: ready check failed: %r", exc)
            return HTTPStatus.SERVICE_UNAVAILABLE, _error(exc), _TEXT
        if ready:
            return HTTPStatus.OK, b"ready\n", _TEXT
        return HTTPStatus.SERVICE_UNAVAILABLE, f"{reason or 'not ready'}\n".encode(), _TEXT

    def _metrics(self, admin: AdminServer, head: bool) -> None:
        encoder, ctype = choose_encoder(self.headers.get("Accept") or "")
        body = encoder(admin.registry)
        extra = {}
        if "gzip" in (self.headers.get("Accept-Encoding") or "") and len(body) > 1024:
            body = gzip.compress(body, compresslevel=1)  # fast: scrapes happen every few seconds
            extra["Content-Encoding"] = "gzip"
        self._reply(HTTPStatus.OK, body, ctype, head=head, extra=extra)

    def _reply(
        self,
        status: HTTPStatus,
        body: bytes,
        content_type: str,
        *,
        head: bool,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)


def _json(document: Any) -> bytes:
    # default=str: an odd value (a Duration, an enum) shows as text instead of failing the page.
    return (json.dumps(document, indent=2, sort_keys=True, default=str) + "\n").encode()


def _error(exc: BaseException) -> bytes:
    return f"error: {type(exc).__name__}\n".encode()


def _index() -> bytes:
    width = max(map(len, ENDPOINTS))
    lines = [f"{path:<{width}}  {what}" for path, what in ENDPOINTS.items()]
    return ("meshkit sidecar admin\n\n" + "\n".join(lines) + "\n").encode()


class AdminServer:
    """The admin HTTP listener on ``listen`` (``host:port``, ``[v6]:port``; port 0 picks one).

    ``live() -> bool``, ``ready() -> (ready, reason)``, ``clusters() -> dict`` and
    ``config() -> dict`` are called per request on an admin thread: they must only read
    immutable snapshots or atomic references (see the module docstring). ``/metrics`` exposes
    ``registry``. ``timeout`` bounds how long one connection may sit idle or trickle bytes.
    """

    def __init__(
        self,
        listen: str,
        *,
        live: Callable[[], bool],
        ready: Callable[[], tuple[bool, str]],
        clusters: Callable[[], dict[str, Any]],
        config: Callable[[], dict[str, Any]],
        registry: CollectorRegistry,
        timeout: float = 10.0,
        max_connections: int = 32,
    ) -> None:
        """Parse ``listen`` (``ValueError`` naming it); nothing is bound yet."""
        try:
            self.listen = ListenAddress.parse(str(listen))
        except ValueError as exc:
            raise ValueError(f"admin listen address {listen!r}: {exc}") from None
        self.live = live
        self.ready = ready
        self.clusters = clusters
        self.config = config
        self.registry = registry
        self.timeout = timeout
        self._max_connections = max_connections
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int | None:
        """The bound port once started, else ``None``."""
        return None if self._server is None else int(self._server.server_address[1])

    async def start(self) -> int:
        """Bind and serve on a daemon thread; returns the bound port.

        Raises :class:`AdminBindError` naming the address when it cannot bind.
        """
        if self._server is not None:
            raise RuntimeError("admin server already started")
        host, port = self.listen.host, self.listen.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            server = _Server((host, port), self, self._max_connections, family)
        except OSError as exc:
            raise AdminBindError(
                exc.errno, f"admin: cannot listen on {self.listen}: {exc.strerror or exc}"
            ) from exc
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"meshkit-admin-{self.listen}",
            daemon=True,
        )
        self._thread.start()
        bound = int(server.server_address[1])
        _LOG.info("admin listening on %s", ListenAddress(host, bound))
        return bound

    async def stop(self) -> None:
        """Stop serving and release the port; idempotent. In-flight requests are abandoned."""
        server, self._server = self._server, None
        thread, self._thread = self._thread, None
        if server is None:
            return
        # shutdown() waits for serve_forever to notice (up to poll_interval): not on the loop.
        await asyncio.to_thread(server.shutdown)
        server.server_close()
        if thread is not None:
            await asyncio.to_thread(thread.join, 5.0)
