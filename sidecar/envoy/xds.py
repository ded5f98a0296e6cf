"""A state-of-the-world ADS server: xDS for Envoy and proxyless gRPC clients over one stream.

Shaped like go-control-plane (``pkg/cache/v3`` + ``pkg/server``): the control plane only builds
a :class:`Snapshot` (every resource of every type, for one *group* of clients) and publishes it
with :meth:`XdsServer.set_snapshot`; the server does the protocol on
``envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources``:

- A stream's first request names its node; ``node.cluster`` (else ``node.id``) is its group,
  so Envoy's resources and those of other clients (``xds:///`` gRPC channels) stay apart.
- A type's ``version_info`` is a hash of its content: it changes only when that type's
  resources do, so publishing an identical snapshot sends nothing. Each response has a new
  nonce; a request whose ``response_nonce`` is not the latest one is stale and ignored.
- ACK (nonce matches, no ``error_detail``) records the acked version; NACK records Envoy's
  message, calls ``on_nack`` (or logs it when there is none), and the rejected version is not
  sent again: the next response waits for a new version (or a new subscription).
- One response in flight per stream and type: the next one waits for the ACK/NACK.
- Listeners and clusters (full-state types) are sent whole to a wildcard subscription, or
  filtered to the names asked for. Other types (routes, endpoints, secrets) are asked for by
  name and answered only once the snapshot holds every name asked for, so Envoy never gets a
  half-updated view during a change (the ADS rule of go-control-plane's snapshot cache).
- Types in a response burst go clusters, endpoints, listeners, routes (make before break).
- A type absent from a snapshot is not answered at all (an empty list is an answer: "none").

Everything runs on one asyncio event loop; call :meth:`XdsServer.set_snapshot` from it.
:meth:`XdsServer.status` only reads an immutable mapping, so other threads may call it.
Incremental xDS (``DeltaAggregatedResources``) answers UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import grpc

from sidecar.envoy import protos

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "ROUTE",
    "SECRET",
    "NackInfo",
    "Resource",
    "Snapshot",
    "XdsServer",
]

_LOG = logging.getLogger(__name__)

LISTENER = protos.type_url("envoy.config.listener.v3.Listener")
ROUTE = protos.type_url("envoy.config.route.v3.RouteConfiguration")
CLUSTER = protos.type_url("envoy.config.cluster.v3.Cluster")
ENDPOINT = protos.type_url("envoy.config.endpoint.v3.ClusterLoadAssignment")
SECRET = protos.type_url("envoy.extensions.transport_sockets.tls.v3.Secret")

_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
_ORDER = (CLUSTER, ENDPOINT, SECRET, LISTENER, ROUTE)
# In a state-of-the-world response of these types a missing resource means "removed", so a
# named request is answered with what exists rather than waited on.
_FULL_STATE = frozenset({LISTENER, CLUSTER})
_WILDCARD = "*"


@dataclass(frozen=True)
class Resource:
    """One xDS resource: its name, type URL and serialized message (see ``protos.to_any``)."""

    name: str
    type_url: str
    body: bytes

    @classmethod
    def of(cls, resource: Mapping[str, Any] | protos.Message) -> Resource:
        """A resource from Envoy JSON (with ``"@type"``) or a message; the name is its ``name``
        field (``cluster_name`` for a ClusterLoadAssignment)."""
        message = protos.from_json(resource) if isinstance(resource, Mapping) else resource
        url, body = protos.to_any(message)
        fields = message.DESCRIPTOR.fields_by_name
        key = "cluster_name" if "cluster_name" in fields and "name" not in fields else "name"
        if key not in fields:
            raise ValueError(f"{message.DESCRIPTOR.full_name} has no name field")
        return cls(getattr(message, key), url, body)


class Snapshot:
    """Every resource of every type for one group, with a content hash per type.

    ``resources`` maps a type URL to that type's resources; a type given with no resources
    tells clients there are none, a type left out is not answered.
    """

    __slots__ = ("_resources", "_versions")

    def __init__(self, resources: Mapping[str, Iterable[Resource]]) -> None:
        self._resources: dict[str, Mapping[str, Resource]] = {}
        self._versions: dict[str, str] = {}
        for url, items in resources.items():
            by_name: dict[str, Resource] = {}
            for item in items:
                if item.type_url != url:
                    raise ValueError(f"resource {item.name!r} is a {item.type_url}, not a {url}")
                if item.name in by_name:
                    raise ValueError(f"two {url} resources named {item.name!r}")
                by_name[item.name] = item
            self._resources[url] = MappingProxyType(by_name)
            self._versions[url] = _content_hash(by_name)

    @property
    def type_urls(self) -> frozenset[str]:
        """The types this snapshot answers for."""
        return frozenset(self._resources)

    def resources(self, type_url: str) -> Mapping[str, Resource] | None:
        """``{name: resource}`` of a type, or None when the snapshot leaves the type out."""
        return self._resources.get(type_url)

    def version(self, type_url: str) -> str | None:
        """The content hash sent as ``version_info`` for a type (None if left out)."""
        return self._versions.get(type_url)


def _content_hash(resources: Mapping[str, Resource]) -> str:
    digest = hashlib.sha256()
    for name in sorted(resources):
        body = resources[name].body
        encoded = name.encode()
        digest.update(len(encoded).to_bytes(4, "big") + encoded)
        digest.update(len(body).to_bytes(8, "big") + body)
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class NackInfo:
    """A client rejected a response: which one, and the client's reason."""

    group: str
    node_id: str
    type_url: str
    version: str
    nonce: str
    message: str
    time: float
    """Wall-clock seconds (``time.time()``)."""


@dataclass
class _Subscription:
    """One stream's state for one type."""

    names: frozenset[str] | None = None  # None: wildcard
    pending: bool = False  # a request waits for a response
    nonce: str = ""  # of the last response
    version: str | None = None  # of the last response
    answered: frozenset[str] | None = None  # names the last response was for (if sent)


@dataclass(eq=False)
class _Stream:
    group: str
    node_id: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    types: dict[str, _Subscription] = field(default_factory=dict)
    closed: bool = False


@dataclass
class _TypeStatus:
    sent: str | None = None
    acked: str | None = None
    nack: NackInfo | None = None


@dataclass
class _Group:
    streams: set[_Stream] = field(default_factory=set)
    types: dict[str, _TypeStatus] = field(default_factory=dict)


class XdsServer:
    """The ADS server: publish snapshots per group, it streams them to subscribed clients."""

    def __init__(self, *, on_nack: Callable[[NackInfo], None] | None = None) -> None:
        self._on_nack = on_nack
        self._snapshots: dict[str, Snapshot] = {}
        self._groups: dict[str, _Group] = {}
        self._nonces = itertools.count(1)
        self._server: grpc.aio.Server | None = None
        self._status: dict[str, Any] = {}
        self._request_class: Any = protos.message_class(
            "envoy.service.discovery.v3.DiscoveryRequest"
        )
        self._response_class: Any = protos.message_class(
            "envoy.service.discovery.v3.DiscoveryResponse"
        )

    async def start(self, address: str) -> str:
        """Serve on ``address`` (``unix:/path`` or ``host:port``, port 0 for any); return the
        address bound (``127.0.0.1:40123``)."""
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    _SERVICE,
                    {
                        "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                            self._stream_aggregated_resources,
                            request_deserializer=self._request_class.FromString,
                            response_serializer=_serialize,
                        ),
                        "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                            _delta_unimplemented
                        ),
                    },
                ),
            )
        )
        port = server.add_insecure_port(address)
        if not port:
            raise RuntimeError(f"xDS server could not bind {address}")
        await server.start()
        self._server = server
        if address.startswith("unix:"):
            return address
        return f"{address.rsplit(':', 1)[0]}:{port}"

    async def stop(self, grace: float | None) -> None:
        """Stop serving; open streams end after ``grace`` seconds (at once if None)."""
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    def set_snapshot(self, group: str, snapshot: Snapshot) -> None:
        """Publish ``snapshot`` for ``group``; every open stream of the group is woken and is
        sent the types whose version changed."""
        self._snapshots[group] = snapshot
        group_state = self._groups.setdefault(group, _Group())
        for stream in group_state.streams:
            stream.wake.set()
        self._publish_status()

    def status(self) -> dict[str, Any]:
        """Per group: ``streams`` (open streams) and ``types``: per type URL ``version`` (the
        snapshot's), ``sent``, ``acked`` and ``nack`` (the last one: ``version nonce message
        time node_id``, or None). JSON-ready; read-only (shared with later callers)."""
        return self._status

    # -- the stream --------------------------------------------------------------------

    async def _stream_aggregated_resources(
        self, requests: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        first = await anext(requests, None)
        if first is None:
            return
        node = first.node
        group = node.cluster or node.id
        if not group:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first request must name its node"
            )
        stream = _Stream(group, node.id)
        self._groups.setdefault(group, _Group()).streams.add(stream)
        _LOG.info("xDS stream opened: node %r, group %r", node.id, group)
        self._publish_status()
        self._on_request(stream, first)
        reader = asyncio.create_task(self._read(stream, requests))
        try:
            while True:
                await stream.wake.wait()
                stream.wake.clear()
                if stream.closed:
                    break
                for response in self._responses(stream):
                    yield response
            await reader  # re-raise what ended the reader, if anything
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            self._close(stream)

    async def _read(self, stream: _Stream, requests: AsyncIterator[Any]) -> None:
        try:
            async for request in requests:
                self._on_request(stream, request)
        finally:
            stream.closed = True
            stream.wake.set()

    def _close(self, stream: _Stream) -> None:
        group = self._groups.get(stream.group)
        if group is not None:
            group.streams.discard(stream)
            if not group.streams and stream.group not in self._snapshots:
                del self._groups[stream.group]
        _LOG.info("xDS stream closed: node %r, group %r", stream.node_id, stream.group)
        self._publish_status()

    def _on_request(self, stream: _Stream, request: Any) -> None:
        url = request.type_url
        sub = stream.types.get(url)
        new = sub is None
        if sub is None:
            sub = stream.types[url] = _Subscription()
        nonce = request.response_nonce
        if nonce and nonce != sub.nonce:
            _LOG.debug("stale xDS request for %s (nonce %r, latest %r)", url, nonce, sub.nonce)
            return
        if nonce:
            self._record_answer(stream, url, sub, request)
        names = frozenset(request.resource_names)
        if _WILDCARD in names or (not names and url in _FULL_STATE and (new or sub.names is None)):
            sub.names = None
        else:
            sub.names = names
        sub.pending = True
        stream.wake.set()

    def _record_answer(self, stream: _Stream, url: str, sub: _Subscription, request: Any) -> None:
        status = self._groups[stream.group].types.setdefault(url, _TypeStatus())
        if request.HasField("error_detail"):
            nack = NackInfo(
                group=stream.group,
                node_id=stream.node_id,
                type_url=url,
                version=sub.version or "",
                nonce=sub.nonce,
                message=request.error_detail.message,
                time=time.time(),
            )
            status.nack = nack
            if self._on_nack is None:  # an owner with a callback logs it (it may redact)
                _LOG.warning(
                    "xDS NACK from node %r (group %r) for %s version %s: %s",
                    stream.node_id,
                    stream.group,
                    url,
                    nack.version,
                    nack.message,
                )
            else:
                try:
                    self._on_nack(nack)
                except Exception:
                    _LOG.exception("on_nack callback failed")
        else:
            status.acked = request.version_info
        self._publish_status()

    def _responses(self, stream: _Stream) -> list[Any]:
        snapshot = self._snapshots.get(stream.group)
        if snapshot is None:
            return []
        order = [url for url in _ORDER if url in stream.types]
        order += sorted(url for url in stream.types if url not in _ORDER)
        responses = []
        for url in order:
            response = self._response(stream, url, stream.types[url], snapshot)
            if response is not None:
                responses.append(response)
        if responses:
            self._publish_status()
        return responses

    def _response(
        self, stream: _Stream, url: str, sub: _Subscription, snapshot: Snapshot
    ) -> Any | None:
        resources = snapshot.resources(url)
        version = snapshot.version(url)
        if not sub.pending or resources is None or version is None:
            return None
        if sub.names is None:
            chosen = [resources[name] for name in sorted(resources)]
        else:
            if not sub.names:
                return None
            if url not in _FULL_STATE and not sub.names <= resources.keys():
                return None  # wait until the snapshot holds every resource asked for
            chosen = [resources[name] for name in sorted(sub.names) if name in resources]
        if version == sub.version and sub.names == sub.answered:
            return None  # the client has this (or rejected it): wait for a new version
        nonce = str(next(self._nonces))
        response = self._response_class(version_info=version, type_url=url, nonce=nonce)
        for resource in chosen:
            response.resources.add(type_url=resource.type_url, value=resource.body)
        sub.pending = False
        sub.nonce = nonce
        sub.version = version
        sub.answered = sub.names
        self._groups[stream.group].types.setdefault(url, _TypeStatus()).sent = version
        return response

    def _publish_status(self) -> None:
        # A new dict each time, never mutated once published: status() readers on other
        # threads see one consistent state without a lock.
        status: dict[str, Any] = {}
        for name in sorted(self._groups.keys() | self._snapshots.keys()):
            group = self._groups.get(name, _Group())
            snapshot = self._snapshots.get(name)
            urls = set(group.types) | (snapshot.type_urls if snapshot else set())
            types = {}
            for url in sorted(urls):
                state = group.types.get(url, _TypeStatus())
                nack = state.nack
                types[url] = {
                    "version": snapshot.version(url) if snapshot else None,
                    "sent": state.sent,
                    "acked": state.acked,
                    "nack": None
                    if nack is None
                    else {
                        "version": nack.version,
                        "nonce": nack.nonce,
                        "message": nack.message,
                        "time": nack.time,
                        "node_id": nack.node_id,
                    },
                }
            status[name] = {"streams": len(group.streams), "types": types}
        self._status = status


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


async def _delta_unimplemented(requests: AsyncIterator[Any], context: Any) -> None:
    await context.abort(
        grpc.StatusCode.UNIMPLEMENTED, "incremental xDS is not served: use state-of-the-world ADS"
    )
