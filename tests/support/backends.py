"""Echo backends on several loopback IPs sharing one port, as pods behind a DNS name are.

A records carry IPs, not ports, so DNS tests need N servers on ``127.0.0.x`` with the same
port. The first server binds port 0 and the kernel picks the port; the others bind that port
on their own IP (a real bind, not a probe). If one of those is taken, all are stopped and the
group starts again on a new port.
"""

from __future__ import annotations

import grpc

from tests.support.echo import EchoServer, EchoServicer, echo_pb2_grpc


async def _start(name: str, host: str, port: int, health: bool) -> EchoServer:
    server = grpc.aio.server()
    servicer = EchoServicer(name)
    echo_pb2_grpc.add_EchoServicer_to_server(servicer, server)
    extra: dict[str, object] = {}
    if health:
        from grpc_health.v1 import health as health_mod
        from grpc_health.v1 import health_pb2_grpc

        hs = health_mod.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(hs, server)
        extra["health"] = hs
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise RuntimeError(f"could not bind {host}:{port}")
    await server.start()
    return EchoServer(server, bound, servicer, extra, host)


async def start_same_port(
    ips: list[str], *, health: bool = False, attempts: int = 5
) -> tuple[int, dict[str, EchoServer]]:
    """Start one echo server per IP, all on one port; return (port, {ip: server})."""
    last: Exception | None = None
    for _ in range(attempts):
        first = await _start(ips[0], ips[0], 0, health)
        servers = {ips[0]: first}
        try:
            for ip in ips[1:]:
                servers[ip] = await _start(ip, ip, first.port, health)
        except RuntimeError as error:
            last = error
            for s in servers.values():
                await s.stop(None)
            continue
        return first.port, servers
    raise RuntimeError(f"no common port for {ips}: {last}")


async def add_on_port(ip: str, port: int, *, health: bool = False) -> EchoServer:
    """One more server on ``ip:port`` (scale-up); the port is free on that IP by design."""
    return await _start(ip, ip, port, health)
