"""Echo backends of ``sidecar demo``: raw-bytes grpc.aio servers that name themselves.

One method, ``/meshkit.demo.Echo/Who``, answers with the server's name (UTF-8), so a client
can count which backend served each call without any protobuf. Servers count their own calls
too. No generated code: a generic handler with identity (de)serializers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc

SERVICE = "meshkit.demo.Echo"
WHO = f"/{SERVICE}/Who"


@dataclass
class EchoBackend:
    """One running backend: its name, address and the number of calls it served."""

    name: str
    host: str
    port: int
    server: Any  # grpc.aio.Server (grpc ships no type information)
    calls: int = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def stop(self) -> None:
        await self.server.stop(None)


async def start_backend(name: str, host: str = "127.0.0.1", port: int = 0) -> EchoBackend:
    """Serve ``Who`` on ``host:port`` (``0``: a port the kernel picks); ``OSError`` if the
    address cannot be bound."""
    server = grpc.aio.server()
    backend = EchoBackend(name, host, 0, server)
    reply = name.encode()

    async def who(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        backend.calls += 1
        return reply

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Who": grpc.unary_unary_rpc_method_handler(who)}
    )
    server.add_generic_rpc_handlers((handler,))
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:  # grpcio raises RuntimeError on a failed bind
        await server.stop(None)
        raise OSError(f"cannot bind {host}:{port}: {exc}") from exc
    if bound == 0:
        await server.stop(None)
        raise OSError(f"cannot bind {host}:{port}")
    backend.port = int(bound)
    await server.start()
    return backend


async def start_same_port(
    names_and_hosts: list[tuple[str, str]], *, attempts: int = 5
) -> list[EchoBackend]:
    """One backend per ``(name, host)``, all on one port, as pods behind a DNS name are.

    The first binds port 0; the others bind the port it got on their own IP (a real bind, not
    a probe). If one is taken, all stop and the group tries again on a new port.
    """
    last: OSError | None = None
    for _ in range(attempts):
        (first_name, first_host), *rest = names_and_hosts
        started = [await start_backend(first_name, first_host)]
        try:
            for name, host in rest:
                started.append(await start_backend(name, host, started[0].port))
        except OSError as exc:
            last = exc
            for backend in started:
                await backend.stop()
            continue
        return started
    raise OSError(f"no common free port for {[h for _, h in names_and_hosts]}: {last}")
