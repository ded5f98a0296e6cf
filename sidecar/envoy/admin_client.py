"""A small client for Envoy's admin API (HTTP/1.1 on loopback or a unix socket).

Every request is bounded twice: in time (one deadline for connect, send and the whole body, so
a slow-dripping Envoy cannot stretch it) and in size (a body over ``max_body`` is an error, not
a memory spike). The core is synchronous, on the standard library's ``http.client``, because
its main caller is a Prometheus scrape on the admin server's thread; the ``a*`` methods run the
same request on a worker thread for the event loop (cancelling one stops the wait at once; the
thread ends at the deadline).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

__all__ = [
    "DEFAULT_MAX_BODY",
    "DEFAULT_TIMEOUT",
    "AdminError",
    "AdminResponse",
    "EnvoyAdmin",
    "address_text",
]

DEFAULT_TIMEOUT: Final = 2.0
#: ``/stats/prometheus`` is ~100 KiB per cluster with every stat; a few hundred clusters fit.
DEFAULT_MAX_BODY: Final = 32 * 1024 * 1024
_CHUNK = 64 * 1024


class AdminError(Exception):
    """Envoy's admin could not be reached, answered too slowly, too much, or not with 2xx."""


@dataclass(frozen=True)
class AdminResponse:
    """An admin answer: HTTP status and body."""

    status: int
    body: bytes

    @property
    def text(self) -> str:
        """The body as text (Envoy answers UTF-8)."""
        return self.body.decode("utf-8", "replace")


class _UnixConnection(http.client.HTTPConnection):
    """``HTTPConnection`` over a unix socket (Envoy's admin ``pipe`` address)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _connection(address: str, timeout: float) -> http.client.HTTPConnection:
    if address.startswith("unix:"):
        return _UnixConnection(address[len("unix:") :], timeout)
    if address.startswith("/"):
        return _UnixConnection(address, timeout)
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise AdminError(f"bad admin address {address!r}")
    return http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)


class EnvoyAdmin:
    """Envoy's admin at ``address``: ``host:port``, ``[v6]:port``, or a unix socket path
    (``/path`` or ``unix:/path``), as Envoy writes it to ``--admin-address-path``."""

    def __init__(
        self,
        address: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.max_body = max_body

    def __repr__(self) -> str:
        return f"EnvoyAdmin({self.address!r})"

    # -- the request --------------------------------------------------------------------------

    def request(
        self, method: str, path: str, *, timeout: float | None = None, ok_only: bool = True
    ) -> AdminResponse:
        """One request; :class:`AdminError` on any failure, and on a non-2xx status when
        ``ok_only``."""
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        try:
            conn = _connection(self.address, budget)
            try:
                conn.connect()
                # http.client drops conn.sock once the response owns the connection: keep it,
                # to shorten its timeout to what is left of the deadline before each read.
                sock = conn.sock
                conn.request(method, path, headers={"Connection": "close"})
                _left(sock, deadline)
                response = conn.getresponse()
                try:
                    body = self._read(sock, response, deadline)
                finally:
                    response.close()
            finally:
                conn.close()
        except AdminError:
            raise
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise AdminError(f"{method} {path} at {self.address}: {_describe(exc)}") from None
        if ok_only and not 200 <= response.status < 300:
            detail = body[:200].decode("utf-8", "replace").strip()
            raise AdminError(f"{method} {path} at {self.address}: HTTP {response.status} {detail}")
        return AdminResponse(response.status, body)

    def _read(self, sock: Any, response: http.client.HTTPResponse, deadline: float) -> bytes:
        length = response.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise AdminError(f"admin answer of {length} bytes is over {self.max_body}")
        parts: list[bytes] = []
        size = 0
        while True:
            _left(sock, deadline)
            chunk = response.read1(_CHUNK)  # one socket read at most: the deadline holds
            if not chunk:
                return b"".join(parts)
            size += len(chunk)
            if size > self.max_body:
                raise AdminError(f"admin answer is over {self.max_body} bytes")
            parts.append(chunk)

    async def arequest(
        self, method: str, path: str, *, timeout: float | None = None, ok_only: bool = True
    ) -> AdminResponse:
        """:meth:`request` on a worker thread."""
        return await asyncio.to_thread(self.request, method, path, timeout=timeout, ok_only=ok_only)

    # -- the endpoints meshkit reads ------------------------------------------------------------

    def stats_prometheus(self, *, used_only: bool = True, timeout: float | None = None) -> str:
        """``/stats/prometheus``: every stat in Prometheus text format (``used_only``: only the
        stats written at least once, a fraction of the size)."""
        path = "/stats/prometheus" + ("?usedonly" if used_only else "")
        return self.request("GET", path, timeout=timeout).text

    def stats_json(
        self, *, filter_regex: str | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """``/stats?format=json``, optionally only names matching ``filter_regex`` (RE2)."""
        path = "/stats?format=json"
        if filter_regex is not None:
            path += "&filter=" + quote(filter_regex, safe="")
        return _json(self.request("GET", path, timeout=timeout))

    def clusters(self, *, timeout: float | None = None) -> dict[str, Any]:
        """``/clusters?format=json``: every cluster with its hosts and their health."""
        return _json(self.request("GET", "/clusters?format=json", timeout=timeout))

    async def alisteners(self, *, timeout: float | None = None) -> dict[str, Any]:
        """``/listeners?format=json``: every listener with the address it bound."""
        response = await self.arequest("GET", "/listeners?format=json", timeout=timeout)
        return _json(response)

    def server_state(self, *, timeout: float | None = None) -> str:
        """``/ready``'s answer: ``LIVE``, ``PRE_INITIALIZING``, ``INITIALIZING`` or
        ``DRAINING`` (Envoy answers 503 for all but ``LIVE``)."""
        return self.request("GET", "/ready", timeout=timeout, ok_only=False).text.strip()

    async def aserver_state(self, *, timeout: float | None = None) -> str:
        """:meth:`server_state` for the event loop."""
        response = await self.arequest("GET", "/ready", timeout=timeout, ok_only=False)
        return response.text.strip()

    async def astats_json(
        self, *, filter_regex: str | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """:meth:`stats_json` for the event loop."""
        return await asyncio.to_thread(self.stats_json, filter_regex=filter_regex, timeout=timeout)

    async def drain_listeners(
        self, *, graceful: bool = True, inbound_only: bool = False, timeout: float | None = None
    ) -> None:
        """``POST /drain_listeners``: with ``graceful``, Envoy's drain sequence first (HTTP/2
        GOAWAY, ``Connection: close``, over ``--drain-time-s`` by ``--drain-strategy``) and
        then the listeners close; without, they close now. Open streams go on either way."""
        query = "&".join(
            name for name, on in (("graceful", graceful), ("inboundonly", inbound_only)) if on
        )
        await self.arequest(
            "POST", "/drain_listeners" + (f"?{query}" if query else ""), timeout=timeout
        )


def _left(sock: Any, deadline: float) -> None:
    """Give ``sock`` what is left of the deadline as its timeout; ``TimeoutError`` if none."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    if sock is not None:
        sock.settimeout(remaining)


def address_text(address: Any) -> str:
    """An Envoy ``Address`` (JSON) as meshkit writes addresses: ``host:port``, ``[v6]:port``,
    ``unix:/path``."""
    socket_address = address.get("socket_address") if isinstance(address, dict) else None
    if isinstance(socket_address, dict):
        host, port = str(socket_address.get("address", "")), socket_address.get("port_value", 0)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    pipe = address.get("pipe") if isinstance(address, dict) else None
    if isinstance(pipe, dict):
        return f"unix:{pipe.get('path', '')}"
    return str(address)


def _json(response: AdminResponse) -> dict[str, Any]:
    try:
        document = json.loads(response.body)
    except ValueError as exc:
        raise AdminError(f"admin answered invalid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise AdminError("admin answered JSON that is not an object")
    return document


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    return str(exc) or type(exc).__name__
