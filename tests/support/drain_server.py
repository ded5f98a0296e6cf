"""An echo server with graceful drain, run as a subprocess by the drain tests.

    python -m tests.support.drain_server [--sync] --drain-delay 1 --grace 5

Prints, one per line, flushed: ``PORT <n>`` once listening (signal handlers are installed
before that), ``EVENT <what>`` for each drain step, ``ACTIVE <n>`` (Unary calls in flight) as
the stop begins, and at the end ``STATS <json>`` with the
Unary calls the server started and the ones cancelled. Exit status: 0 after a graceful drain,
3 after a forced one (second signal).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
from concurrent import futures
from typing import Any

import grpc

from health import DrainConfig, GracefulDrain, HealthService
from health.aio import GracefulDrain as AioGracefulDrain
from health.aio import HealthService as AioHealthService
from tests.support.echo import EchoReply, EchoServicer, echo_pb2_grpc

FORCED_EXIT = 3


def say(line: str) -> None:
    print(line, flush=True)


async def serve_aio(config: DrainConfig) -> int:
    server = grpc.aio.server()
    servicer = EchoServicer("drain")
    echo_pb2_grpc.add_EchoServicer_to_server(servicer, server)
    health = AioHealthService()
    health.add_to_server(server)
    await health.set("meshkit.test.Echo", True)
    port = server.add_insecure_port("127.0.0.1:0")

    def on_event(what: str) -> None:
        say(f"EVENT {what}")
        if what == "stopping":
            say(f"ACTIVE {servicer.active}")

    drain = AioGracefulDrain(server, health, config, on_event=on_event)
    drain.install_signal_handlers()
    await server.start()
    say(f"PORT {port}")
    await drain.wait()
    stats = {"started": servicer.calls["Unary"], "cancelled": servicer.cancelled}
    say(f"STATS {json.dumps(stats)}")
    return FORCED_EXIT if drain.forced else 0


class SyncEcho(echo_pb2_grpc.EchoServicer):  # type: ignore[misc]
    """Unary only, for the sync server."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = 0
        self.active = 0
        self.cancelled = 0

    def Unary(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            self.started += 1
            self.active += 1
        try:
            done = threading.Event()
            context.add_callback(done.set)  # set when the RPC ends, e.g. cancelled
            if request.delay_s and done.wait(min(request.delay_s, 30.0)):
                with self.lock:
                    self.cancelled += 1
                return EchoReply()
            return EchoReply(message=request.message, server="drain-sync")
        finally:
            with self.lock:
                self.active -= 1


def serve_sync(config: DrainConfig) -> int:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    servicer = SyncEcho()
    echo_pb2_grpc.add_EchoServicer_to_server(servicer, server)
    health = HealthService()
    health.add_to_server(server)
    health.set("meshkit.test.Echo", True)
    port = server.add_insecure_port("127.0.0.1:0")

    def on_event(what: str) -> None:
        say(f"EVENT {what}")
        if what == "stopping":
            with servicer.lock:
                say(f"ACTIVE {servicer.active}")

    drain = GracefulDrain(server, health, config, on_event=on_event)
    drain.install_signal_handlers()
    server.start()
    say(f"PORT {port}")
    # Wake regularly: Python runs signal handlers in the main thread between waits.
    while not drain.wait(0.1):
        pass
    with servicer.lock:
        stats = {"started": servicer.started, "cancelled": servicer.cancelled}
    say(f"STATS {json.dumps(stats)}")
    return FORCED_EXIT if drain.forced else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sync", action="store_true")
    parser.add_argument("--drain-delay", type=float, default=1.0)
    parser.add_argument("--grace", type=float, default=5.0)
    args = parser.parse_args(argv)
    config = DrainConfig(drain_delay=args.drain_delay, grace=args.grace)
    if args.sync:
        return serve_sync(config)
    return asyncio.run(serve_aio(config))


if __name__ == "__main__":
    sys.exit(main())
