"""The four gRPC call kinds, one type for every meshkit package.

``telemetry`` imports no other meshkit package and every other package may import it, so the
concept lives here: the balanced channels key their multi-callables by it, the metrics take it,
the sidecar's routes name it in config (``kind: unary_stream``) and learn it from servers.
"""

from __future__ import annotations

import enum
from typing import Final, Literal

__all__ = ["GrpcType", "RpcKind"]

GrpcType = Literal["unary", "client_stream", "server_stream", "bidi_stream"]
"""The ``grpc_type`` metric label values, as go-grpc-prometheus spells them."""

_GRPC_TYPES: Final[dict[str, GrpcType]] = {
    "unary_unary": "unary",
    "unary_stream": "server_stream",
    "stream_unary": "client_stream",
    "stream_stream": "bidi_stream",
}


class RpcKind(str, enum.Enum):
    """A call's shape: whether requests and responses are streams.

    Values are grpcio's multi-callable names (``"unary_unary"``...), which are also what the
    sidecar config accepts; members compare and hash as those strings, so a table keyed by them
    answers a lookup by name at ``str`` speed. ``grpc_type`` is the go-grpc-prometheus label;
    it and the two streaming flags are plain attributes (no per-call computation).
    """

    grpc_type: GrpcType
    request_streaming: bool
    response_streaming: bool

    UNARY_UNARY = "unary_unary"
    UNARY_STREAM = "unary_stream"
    STREAM_UNARY = "stream_unary"
    STREAM_STREAM = "stream_stream"

    def __init__(self, value: str) -> None:
        self.grpc_type = _GRPC_TYPES[value]
        self.request_streaming = value.startswith("stream_")
        self.response_streaming = value.endswith("_stream")

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def of(cls, request_streaming: bool, response_streaming: bool) -> RpcKind:
        """The kind with these streaming flags."""
        return _BY_FLAGS[2 * request_streaming + response_streaming]


_BY_FLAGS: Final = (
    RpcKind.UNARY_UNARY,
    RpcKind.UNARY_STREAM,
    RpcKind.STREAM_UNARY,
    RpcKind.STREAM_STREAM,
)
