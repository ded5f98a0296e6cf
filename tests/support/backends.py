"""Echo backends on several loopback IPs sharing one port, as pods behind a DNS name are.

A records carry IPs, not ports, so DNS tests need N servers on ``127.0.0.x`` with the same
port. The first server binds port 0 and the kernel picks the port; the others bind that port
on their own IP (a real bind, not a probe). If one of those is taken, all are stopped and the
group starts again on a new port.
"""

from __future__ import annotations

from tests.support.echo import EchoServer, start_echo_server


async def _start(name: str, host: str, port: int, health: bool) -> EchoServer:
    return await start_echo_server(name, host=host, port=port, health=health)


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
