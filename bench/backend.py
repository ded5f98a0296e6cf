"""The benchmark backend: a raw-bytes gRPC echo server, run as its own process.

``python -m bench.backend --host 127.0.0.1 --port 0 --stream-messages 10`` binds, prints one line
``port=<P>`` on stdout (the port the kernel chose: no probe-then-bind) and serves

- ``/bench.Echo/Unary``: returns the request bytes unchanged;
- ``/bench.Echo/Stream``: server streaming, returns the request bytes ``--stream-messages`` times;
- ``/bench.Echo/Stats``: returns JSON ``{"unary": n, "stream": n}``, the number of calls that
  completed OK so far (a unary call counts when its reply is handed to grpc, a stream when its last
  message has been written). The harness reads it before and after a load run to check that every
  success h2load saw is a gRPC success that reached a backend;
- ``/bench.Who/<anything>``: unary, returns JSON ``{"backend": "HOST:PORT", "at": T}``, this
  backend's address and ``time.monotonic()`` when the call reached it (a system-wide clock on
  Linux, comparable with the harness's). Any method name, so a sidecar can route
  ``/bench.Who/Static`` and ``/bench.Who/Dns`` to different clusters (the discovery suite).

Identity serializers throughout: nothing is decoded, so the backend costs as little as grpc.aio
allows and any payload is fine. The server exits when its parent process goes away, so a killed
harness leaves no backends behind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from bench.procs import Child, ChildFailed, Children

SERVICE = "bench.Echo"
UNARY = f"/{SERVICE}/Unary"
STREAM = f"/{SERVICE}/Stream"
STATS = f"/{SERVICE}/Stats"
WHO_SERVICE = "bench.Who"


class Counters:
    """OK completions per method; plain ints, the event loop is single threaded."""

    def __init__(self) -> None:
        self.unary = 0
        self.stream = 0

    def as_json(self) -> bytes:
        return json.dumps({"unary": self.unary, "stream": self.stream}).encode()


def build_handler(counters: Counters, stream_messages: int) -> grpc.GenericRpcHandler:
    """The generic handler for ``bench.Echo`` (no deserializers: handlers see raw bytes)."""

    async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        counters.unary += 1
        return request

    async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        for _ in range(stream_messages):
            yield request
        counters.stream += 1

    async def stats(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return counters.as_json()

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Stats": grpc.unary_unary_rpc_method_handler(stats),
        },
    )


class WhoHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Every ``/bench.Who/*`` method: the backend's address and when the call reached it."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._handler = grpc.unary_unary_rpc_method_handler(self._who)

    async def _who(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return json.dumps({"backend": self.address, "at": time.monotonic()}).encode()

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        if method.startswith(f"/{WHO_SERVICE}/"):
            return self._handler
        return None


def parse_who(reply: bytes) -> tuple[str, float]:
    """``(backend address, monotonic time it received the call)`` from a ``bench.Who`` reply."""
    doc = json.loads(reply)
    return str(doc["backend"]), float(doc["at"])


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    # Polling is the portable way to notice re-parenting (prctl PDEATHSIG is Linux-only and
    # unsafe to set from a threaded parent).
    while os.getppid() == parent:  # noqa: ASYNC110
        await asyncio.sleep(1.0)
    stop.set()


async def serve(host: str, port: int, stream_messages: int) -> None:
    counters = Counters()
    # so_reuseport off: binding an explicit port (the scale-up test's 127.0.0.2:P) must fail
    # loudly on a collision instead of silently sharing the port with another server.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    who = WhoHandler(host)
    server.add_generic_rpc_handlers((build_handler(counters, stream_messages), who))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise SystemExit(f"backend: cannot bind {host}:{port}")
    who.address = f"{host}:{bound}"
    await server.start()
    sys.stdout.write(f"port={bound}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.create_task(_watch_parent(os.getppid(), stop))
    try:
        await stop.wait()
    finally:
        watcher.cancel()
        await server.stop(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backend", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--stream-messages", type=int, default=10)
    parser.add_argument(
        "--loop", choices=("asyncio", "uvloop"), default="uvloop", help="default %(default)s"
    )
    args = parser.parse_args(argv)
    coro = serve(args.host, args.port, args.stream_messages)
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())


# --- harness side: start backend processes and read their counters ------------------------------
# (kept next to the server so both agree on method names and the Stats format)


@dataclass
class Backend:
    """A running backend process, as the harness sees it."""

    child: Child
    host: str
    port: int
    _channel: grpc.Channel | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stats(self) -> dict[str, int]:
        """The backend's OK counters, read over gRPC straight from the backend."""
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.address)
        reply = self._channel.unary_unary(STATS)(b"", timeout=5.0)
        counts: dict[str, int] = json.loads(reply)
        return counts

    def ok_total(self) -> int:
        counts = self.stats()
        return counts["unary"] + counts["stream"]

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None


def start_backend(
    children: Children,
    name: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    stream_messages: int = 10,
    loop: str = "uvloop",
    timeout: float = 15.0,
) -> Backend:
    """Start ``python -m bench.backend`` and wait for the port it prints."""
    argv = [
        sys.executable,
        "-m",
        "bench.backend",
        f"--host={host}",
        f"--port={port}",
        f"--stream-messages={stream_messages}",
        f"--loop={loop}",
    ]
    child = children.spawn(name, argv, cwd=_repo_root())
    match = child.wait_for(r"^port=(\d+)$", timeout)
    return Backend(child, host, int(match.group(1)))


def start_same_port_pair(children: Children, prefix: str) -> tuple[Backend, Backend]:
    """A backend on 127.0.0.1:P (P from the kernel) and one on 127.0.0.2:P, the same port.

    As two pods behind one DNS name: the records differ, the port does not. Another process may
    hold P on 127.0.0.2 already; then both are started again on a new port (3 tries).
    """
    last: Exception | None = None
    for attempt in range(3):
        old = start_backend(children, f"{prefix}-old-{attempt}")
        try:
            new = start_backend(
                children, f"{prefix}-new-{attempt}", host="127.0.0.2", port=old.port
            )
        except ChildFailed as exc:
            last = exc
            children.stop(old.child)
            continue
        return old, new
    raise ChildFailed(f"no port free on both 127.0.0.1 and 127.0.0.2: {last}")


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
