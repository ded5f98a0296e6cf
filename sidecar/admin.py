"""The admin HTTP server: ``/live``, ``/ready``, ``/metrics``, ``/clusters``, ``/config``.

It runs on its own thread with its own event loop rather than on the sidecar's loop: a busy
data plane cannot starve a kubelet probe or a scrape, and a slow scrape cannot stall the data
plane. The callables given to :class:`AdminServer` run there (the probes on the admin loop, the
pages on a few page threads), concurrently with the sidecar's loop, so they must only *read*:
an atomic reference to an immutable snapshot (a frozen config, a tuple, a bool flag), or state
whose single-attribute reads are atomic (see ``balancers.aio.BalancedChannel.snapshot``).
They must not await, lock the loop, or mutate anything.

Hostile clients. The standard library's ``BaseHTTPRequestHandler`` still parses every request
and answers malformed ones (400, 505, 414, 431), but it never touches a socket: the admin loop
reads each request head into memory first, so a slow client costs a buffer, not a thread, and
the I/O is bounded the way ``http.server``'s thread-per-connection design cannot be (its
timeout is per read, so a byte every few seconds held a thread, and 32 such clients held every
slot). The bounds:

- a whole-request deadline: the head must be complete within ``timeout`` of the accept (or of
  the previous response on a kept-alive connection), whatever the drip rate; past it, 408 (an
  idle kept-alive connection is closed quietly). Writing a response has the same deadline;
- the request line is at most 8 KiB (414), the head at most 32 KiB and 100 header lines (431);
  bytes that cannot start an HTTP request (a TLS hello, binary noise) get 400 at once;
- at most ``max_connections`` open connections (a waiting one costs a socket and a small
  buffer, no thread). One past the limit displaces a connection being closed or else the one
  that has waited longest for its request (the newcomer is closed at once only when every
  connection is busy answering): a probe, which sends its request in one packet, gets through
  any number of slow clients;
- every close after an answer is a "lingering" one (FIN, then discard what the client still
  sends for up to 1 s) so the client reads the answer instead of a reset.

Debug pages. ``/clusters`` and ``/config`` show the mesh's topology and settings (secrets are
redacted, endpoints are not): they answer loopback peers only (403 otherwise) unless
``expose_debug`` is set, so the port can be open to Prometheus and the kubelet (``/metrics``,
``/live``, ``/ready``) without publishing the rest. ``kubectl port-forward`` arrives from
loopback, so an operator still reads them. Istio and Linkerd draw the same line with a second,
loopback-only port; one port with a peer check keeps one address to configure and probe.

An exception in a callable becomes a 500 (a 503 for the probes) and a log line, never a dead
server; a page that takes longer than 10 s is answered 503.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gzip
import io
import ipaddress
import json
import logging
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
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

_MAX_REQUEST_LINE = 8 * 1024
_MAX_HEAD_BYTES = 32 * 1024
_MAX_HEADERS = 100
#: Bytes per read; the stream buffer stays below twice this, so an idle attacker costs little.
_READ_CHUNK = 16 * 1024
#: How long a close waits for the client to read the answer and hang up before resetting.
_LINGER = 1.0
#: Pages (not the probes) render on threads, at most this many at once and this long each.
_PAGE_THREADS = 4
_PAGE_TIMEOUT = 10.0
_BACKLOG = 128
#: RFC 9110 ``tchar``: what a method name is made of.
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
#: Served on a page thread (they read bigger state); everything else is answered on the loop.
_PAGES = frozenset({"/metrics", "/clusters", "/config"})
#: Pages only loopback peers may read unless ``expose_debug``.
_DEBUG_PAGES = frozenset({"/clusters", "/config"})


class AdminBindError(OSError):
    """The admin listener could not bind its address."""


class _Reject(Exception):
    """A request head refused before parsing, with the status that says why."""

    def __init__(self, status: HTTPStatus) -> None:
        super().__init__(status)
        self.status = status


def _head_end(buffer: bytearray, start: int) -> int:
    """The end of the head in ``buffer`` (past its blank line), searching from ``start``; -1."""
    crlf, lf = buffer.find(b"\n\r\n", start), buffer.find(b"\n\n", start)
    return min([i + n for i, n in ((crlf, 3), (lf, 2)) if i >= 0], default=-1)


def _check_head(buffer: bytearray, size: int, lines: int, complete: bool) -> None:
    """Raise :class:`_Reject` if the head's first ``size`` bytes (``lines`` newlines in them)
    break a limit or cannot be HTTP; ``complete`` when the blank line is among them."""
    line_end = buffer.find(b"\n", 0, size)
    first = size if line_end < 0 else line_end
    space = buffer.find(b" ", 0, first)
    method = bytes(buffer[: min(first if space < 0 else space, 64)]).rstrip(b"\r")
    if method.translate(None, _TCHAR):  # a TLS hello or noise: no need to wait for more
        raise _Reject(HTTPStatus.BAD_REQUEST)
    if first > _MAX_REQUEST_LINE:
        raise _Reject(HTTPStatus.REQUEST_URI_TOO_LONG)
    headers = lines - 1 - int(complete)  # minus the request line and the blank line
    if size > _MAX_HEAD_BYTES or headers > _MAX_HEADERS:
        raise _Reject(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)


async def _read_head(reader: asyncio.StreamReader, buffer: bytearray) -> bytes:
    """The next request head, from ``buffer`` then ``reader``; what follows stays in ``buffer``.

    Raises :class:`_Reject` for a head over a limit, :class:`EOFError` when the client closes
    first. Only the framing is looked at here (the blank line, sizes, the method's alphabet):
    parsing is the standard library's.
    """
    scanned = 0  # bytes of ``buffer`` already searched and counted
    lines = 0
    while True:
        if scanned == 0:  # RFC 9112 2.2: empty lines before a request line are ignored
            del buffer[: len(buffer) - len(buffer.lstrip(b"\r\n"))]
        end = _head_end(buffer, max(scanned - 2, 0))
        size = len(buffer) if end < 0 else end
        lines += buffer.count(b"\n", scanned, size)
        _check_head(buffer, size, lines, complete=end >= 0)
        if end >= 0:
            head = bytes(buffer[:end])
            del buffer[:end]
            return head
        scanned = len(buffer)
        chunk = await reader.read(_READ_CHUNK)
        if not chunk:
            raise EOFError
        buffer += chunk


class _Exchange(BaseHTTPRequestHandler):
    """One request head in, one response out, as bytes: the stdlib's parser without its I/O.

    ``handle_one_request()`` parses the head and answers errors, the probes and the index at
    once; a page is left in ``page`` for the caller to run on a page thread.
    """

    protocol_version = "HTTP/1.1"  # keep-alive for scrapers; every response has a length
    # The stdlib's default, HTTP/0.9, would leave the status line out of early errors (505).
    default_request_version = "HTTP/1.0"
    server_version = "meshkit-admin"
    sys_version = ""

    def __init__(self, head: bytes, peer: tuple[str, int], admin: AdminServer) -> None:
        # Not BaseRequestHandler.__init__: that would run setup/handle/finish on a socket.
        self.admin = admin
        self.client_address = peer
        self.rfile = io.BytesIO(head)
        self.out = io.BytesIO()
        self.wfile = self.out
        self.close_connection = True
        self.page: Callable[[], None] | None = None

    @classmethod
    def error(cls, status: HTTPStatus, peer: tuple[str, int], admin: AdminServer) -> bytes:
        """The stdlib's error response for ``status``, with ``Connection: close``."""
        exchange = cls(b"", peer, admin)
        exchange.request_version = exchange.default_request_version
        exchange.command = exchange.requestline = ""
        exchange.send_error(status)
        return exchange.out.getvalue()

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if len(self.requestline.split()) == 2:  # no version: HTTP/0.9
            self.send_error(HTTPStatus.BAD_REQUEST, "HTTP/0.9 is not supported")
            return False
        if self.headers.get("Transfer-Encoding") or self.headers.get("Content-Length", "0") != "0":
            # No method here takes a body: never read one, so it cannot pass for a request.
            self.close_connection = True
        return True

    def log_message(self, format: str, *args: Any) -> None:
        _LOG.debug("admin %s: " + format, self.address_string(), *args)

    # -- methods ---------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._route(head=False)

    def do_HEAD(self) -> None:
        self._route(head=True)

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

    def _route(self, head: bool) -> None:
        path = urlsplit(self.path).path
        admin = self.admin
        if path in _DEBUG_PAGES and not admin.expose_debug and not _loopback(self.client_address):
            body = b"forbidden: debug pages answer loopback peers only (admin.expose_debug)\n"
            self._reply(HTTPStatus.FORBIDDEN, body, _TEXT, head=head)
            return
        if path in _PAGES:
            self.page = lambda: self._page(path, head)
            return
        if path == "/live":
            status, body, ctype = self._live(admin)
        elif path == "/ready":
            status, body, ctype = self._ready(admin)
        elif path == "/":
            status, body, ctype = HTTPStatus.OK, _index(), _TEXT
        else:
            status, body, ctype = HTTPStatus.NOT_FOUND, b"not found; see /\n", _TEXT
        self._reply(status, body, ctype, head=head)

    def _page(self, path: str, head: bool) -> None:
        admin = self.admin
        try:
            if path == "/metrics":
                self._metrics(admin, head)
                return
            document = admin.clusters() if path == "/clusters" else admin.config()
            status, body, ctype = HTTPStatus.OK, _json(document), _JSON
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


def _loopback(peer: tuple[str, int]) -> bool:
    try:
        address = ipaddress.ip_address(peer[0].split("%", 1)[0])
    except ValueError:
        return False  # a unix socket or an unknown peer is not trusted
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped or address).is_loopback)


def _json(document: Any) -> bytes:
    # default=str: an odd value (a Duration, an enum) shows as text instead of failing the page.
    return (json.dumps(document, indent=2, sort_keys=True, default=str) + "\n").encode()


def _error(exc: BaseException) -> bytes:
    return f"error: {type(exc).__name__}\n".encode()


def _index() -> bytes:
    width = max(map(len, ENDPOINTS))
    lines = [f"{path:<{width}}  {what}" for path, what in ENDPOINTS.items()]
    return ("meshkit sidecar admin\n\n" + "\n".join(lines) + "\n").encode()


class _Connections:
    """The open connections (by their writer) and which of them may give way at the limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: set[asyncio.StreamWriter] = set()
        # Ordered sets, oldest first: waiting for a request (since when it started waiting),
        # and being closed after their answer.
        self.waiting: dict[asyncio.StreamWriter, None] = {}
        self.closing: dict[asyncio.StreamWriter, None] = {}

    def admit(self, conn: asyncio.StreamWriter) -> bool:
        """Take ``conn`` in; at the limit, a closing or the longest-waiting one gives way."""
        if len(self.open) >= self.limit:
            victim = next(iter(self.closing), None) or next(iter(self.waiting), None)
            if victim is None:  # every connection is busy answering: refuse, never queue
                return False
            _LOG.debug("admin: connection limit reached, dropping the longest-waiting one")
            self.forget(victim)
            victim.transport.abort()
        self.open.add(conn)
        return True

    def wait(self, conn: asyncio.StreamWriter) -> None:
        """``conn`` starts waiting for a request."""
        self.waiting.pop(conn, None)
        self.waiting[conn] = None

    def work(self, conn: asyncio.StreamWriter) -> None:
        """``conn`` has a request to answer."""
        self.waiting.pop(conn, None)

    def close(self, conn: asyncio.StreamWriter) -> None:
        """``conn`` is being closed."""
        self.waiting.pop(conn, None)
        self.closing[conn] = None

    def forget(self, conn: asyncio.StreamWriter) -> None:
        """``conn`` is gone."""
        self.open.discard(conn)
        self.waiting.pop(conn, None)
        self.closing.pop(conn, None)


class AdminServer:
    """The admin HTTP listener on ``listen`` (``host:port``, ``[v6]:port``; port 0 picks one).

    ``live() -> bool``, ``ready() -> (ready, reason)``, ``clusters() -> dict`` and
    ``config() -> dict`` are called per request off the sidecar's loop: they must only read
    immutable snapshots or atomic references (see the module docstring). ``/metrics`` exposes
    ``registry``. ``timeout`` is the whole-request deadline: a request must arrive complete
    within it (and its answer be taken within it). ``max_connections`` bounds the open
    connections (see the module docstring for who gives way at the limit).
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
        timeout: float = 5.0,
        max_connections: int = 256,
        expose_debug: bool = False,
    ) -> None:
        """Parse ``listen`` (``ValueError`` naming it); nothing is bound yet."""
        try:
            self.listen = ListenAddress.parse(str(listen))
        except ValueError as exc:
            raise ValueError(f"admin listen address {listen!r}: {exc}") from None
        if timeout <= 0 or max_connections < 1:
            raise ValueError("admin: timeout must be > 0 and max_connections >= 1")
        self.live = live
        self.ready = ready
        self.clusters = clusters
        self.config = config
        self.registry = registry
        self.expose_debug = expose_debug
        self.timeout = timeout
        self._max_connections = max_connections
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._pages: concurrent.futures.ThreadPoolExecutor | None = None
        self._connections = _Connections(max_connections)
        self._tasks: set[asyncio.Task[None]] = set()  # one per connection, on the admin loop

    @property
    def port(self) -> int | None:
        """The bound port once started, else ``None``."""
        return self._port

    async def start(self) -> int:
        """Bind and serve on a daemon thread; returns the bound port.

        Raises :class:`AdminBindError` naming the address when it cannot bind.
        """
        if self._loop is not None:
            raise RuntimeError("admin server already started")
        sock = self._bind()
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._pages = concurrent.futures.ThreadPoolExecutor(
            _PAGE_THREADS, thread_name_prefix="meshkit-admin-page"
        )
        self._thread = threading.Thread(
            target=_run_loop, args=(loop,), name=f"meshkit-admin-{self.listen}", daemon=True
        )
        self._thread.start()
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._serve(sock), loop))
        self._port = int(sock.getsockname()[1])
        _LOG.info("admin listening on %s", ListenAddress(self.listen.host, self._port))
        return self._port

    def _bind(self) -> socket.socket:
        host, port = self.listen.host, self.listen.port
        # As http.server: one socket of the address's family (so "::" is dual-stack where the
        # system allows it), SO_REUSEADDR for quick restarts.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(_BACKLOG)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise AdminBindError(
                exc.errno, f"admin: cannot listen on {self.listen}: {exc.strerror or exc}"
            ) from exc
        return sock

    async def _serve(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_server(self._accepted, sock=sock, limit=_READ_CHUNK)

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Our own task (not the one asyncio.streams makes of a coroutine callback), so stop()
        # can cancel it without asyncio logging the cancellation as an error.
        task = asyncio.get_running_loop().create_task(self._connection(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Stop serving and release the port; idempotent. In-flight requests are abandoned."""
        loop, self._loop = self._loop, None
        thread, self._thread = self._thread, None
        pages, self._pages = self._pages, None
        if loop is None:
            return
        self._port = None
        try:
            closed = asyncio.run_coroutine_threadsafe(self._close_all(), loop)
            await asyncio.wait_for(asyncio.wrap_future(closed), 5.0)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if thread is not None:
                await asyncio.to_thread(thread.join, 5.0)
            if pages is not None:
                pages.shutdown(wait=False, cancel_futures=True)

    async def _close_all(self) -> None:
        if self._server is not None:
            self._server.close()  # closes the listening socket now
        for writer in list(self._connections.open):
            self._connections.forget(writer)
            writer.transport.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)

    # -- one connection ---------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections = self._connections
        if not connections.admit(writer):
            writer.transport.abort()
            return
        # drain() then returns only once the kernel took every byte: the write deadline is real.
        writer.transport.set_write_buffer_limits(high=0)
        peername = writer.get_extra_info("peername")
        peer = (str(peername[0]), int(peername[1])) if peername else ("", 0)
        buffer = bytearray()
        try:
            while True:
                connections.wait(writer)
                try:
                    head = await asyncio.wait_for(_read_head(reader, buffer), self.timeout)
                except asyncio.TimeoutError:
                    # Part of a request: 408. Nothing (an idle kept-alive connection): quietly.
                    timed_out = HTTPStatus.REQUEST_TIMEOUT
                    answer = _Exchange.error(timed_out, peer, self) if buffer else b""
                    await self._close(writer, reader, answer)
                    return
                except _Reject as reject:
                    await self._close(writer, reader, _Exchange.error(reject.status, peer, self))
                    return
                connections.work(writer)
                answer, keep_alive = await self._answer(head, peer)
                if not keep_alive:
                    await self._close(writer, reader, answer)
                    return
                writer.write(answer)
                await asyncio.wait_for(writer.drain(), self.timeout)
        except (EOFError, OSError, asyncio.TimeoutError):
            pass  # the client left, or would not take its answer in time
        except Exception:
            _LOG.warning("admin: connection from %s failed", peer, exc_info=True)
        finally:
            connections.forget(writer)
            writer.transport.abort()  # no-op once closed

    async def _answer(self, head: bytes, peer: tuple[str, int]) -> tuple[bytes, bool]:
        """The response to ``head`` and whether the connection stays open."""
        exchange = _Exchange(head, peer, self)
        exchange.handle_one_request()
        if exchange.page is not None:
            pages = self._pages
            assert pages is not None
            run = asyncio.get_running_loop().run_in_executor(pages, exchange.page)
            try:
                await asyncio.wait_for(run, _PAGE_TIMEOUT)
            except asyncio.TimeoutError:
                _LOG.warning("admin: %s took over %ss", exchange.path, _PAGE_TIMEOUT)
                return _Exchange.error(HTTPStatus.SERVICE_UNAVAILABLE, peer, self), False
        return exchange.out.getvalue(), not exchange.close_connection

    async def _close(
        self, writer: asyncio.StreamWriter, reader: asyncio.StreamReader, answer: bytes
    ) -> None:
        """Send ``answer`` and close so that the client can read it (a "lingering" close)."""
        self._connections.close(writer)
        if answer:
            writer.write(answer)
        if writer.can_write_eof():
            writer.write_eof()  # our FIN after the answer

        async def drained() -> None:
            await writer.drain()  # every byte taken by the kernel
            while await reader.read(_READ_CHUNK):  # what the client still sends is discarded:
                pass  # closing with unread input would reset the connection, answer and all

        with contextlib.suppress(OSError, asyncio.TimeoutError):
            await asyncio.wait_for(drained(), _LINGER)
        writer.close()


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()
