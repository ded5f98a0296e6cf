"""The four multicallable factories of grpcio's channel APIs, written once for both twins."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from telemetry.rpc_kind import RpcKind


class ChannelMethods:
    """Mixin: ``unary_unary`` & co. build ``_multicallable_types[kind]`` objects.

    A channel sets ``_multicallable_types`` (one class per call type, keyed by kind) and
    ``_multicallable_owner`` (what those classes are built around).
    """

    _multicallable_types: Mapping[RpcKind, type]
    _multicallable_owner: Any

    def _new_multicallable(
        self, kind: RpcKind, method: str, ser: Any, deser: Any, registered: bool | None
    ) -> Any:
        cls = self._multicallable_types[kind]
        return cls(self._multicallable_owner, kind, method, ser, deser, bool(registered))

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        """A unary-unary multicallable for ``method`` (generated stubs call this)."""
        return self._new_multicallable(
            RpcKind.UNARY_UNARY,
            method,
            request_serializer,
            response_deserializer,
            _registered_method,
        )

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        """A unary-stream multicallable for ``method``."""
        return self._new_multicallable(
            RpcKind.UNARY_STREAM,
            method,
            request_serializer,
            response_deserializer,
            _registered_method,
        )

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        """A stream-unary multicallable for ``method``."""
        return self._new_multicallable(
            RpcKind.STREAM_UNARY,
            method,
            request_serializer,
            response_deserializer,
            _registered_method,
        )

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> Any:
        """A stream-stream multicallable for ``method``."""
        return self._new_multicallable(
            RpcKind.STREAM_STREAM,
            method,
            request_serializer,
            response_deserializer,
            _registered_method,
        )
