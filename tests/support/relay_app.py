"""An app behind a sidecar that calls out for every call it serves, run as a subprocess by the
shutdown-sequence tests.

    python -m tests.support.relay_app --drain-delay 1.5 --grace 5 [--flush]

Serves ``Echo.Unary`` on 127.0.0.1:0 and prints ``PORT <n>`` (signal handlers installed), then
reads one line ``OUTBOUND <host:port>`` on stdin: the sidecar's outbound listener. Each call is
worked on the way an app drains with calls in flight that still call out: one call out through
the outbound listener, ``delay_s`` of work, a second call out, then the reply (``server`` is
the backend's name). On SIGTERM it drains (:class:`health.aio.GracefulDrain`: NOT_SERVING, its
own ``--drain-delay`` of serving, stop accepting, ``--grace`` for calls in flight); with
``--flush`` it then makes one more call out, as an app flushing its buffers on the way out.
Prints ``RECEIVED <message>`` per call, ``EVENT <what>`` per drain step and last ``STATS
<json>``: the messages of the calls it received, the calls out that succeeded, and those that
failed (``"CODE: details"``). Exit status 0 after a graceful drain.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from typing import Any

import grpc

from health import DrainConfig
from health.aio import GracefulDrain, HealthService
from tests.support.echo import EchoReply, EchoRequest, EchoStub, echo_pb2_grpc

#: Bound on each call out.
CALL_TIMEOUT = 10.0


def say(line: str) -> None:
    print(line, flush=True)


class Relay(echo_pb2_grpc.EchoServicer):  # type: ignore[misc]
    """Unary: call out, work, call out again, reply."""

    def __init__(self) -> None:
        self.stub: Any = None
        self.received: list[str] = []
        self.out_ok = 0
        self.out_failed: list[str] = []

    async def call_out(self, message: str) -> str:
        try:
            reply = await self.stub.Unary(EchoRequest(message=message), timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            self.out_failed.append(f"{error.code().name}: {error.details()}")
            raise
        self.out_ok += 1
        return str(reply.server)

    async def Unary(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.received.append(request.message)
        say(f"RECEIVED {request.message}")
        try:
            await self.call_out(request.message)
            await asyncio.sleep(min(request.delay_s, 10.0))  # the app's own work
            server = await self.call_out(request.message)
        except grpc.aio.AioRpcError as error:
            await context.abort(grpc.StatusCode.INTERNAL, f"call out failed: {error.code().name}")
        return EchoReply(message=request.message, server=server)


async def serve(config: DrainConfig, flush: bool) -> int:
    server = grpc.aio.server()
    relay = Relay()
    echo_pb2_grpc.add_EchoServicer_to_server(relay, server)
    health = HealthService()
    health.add_to_server(server)
    await health.set("", True)
    port = server.add_insecure_port("127.0.0.1:0")
    drain = GracefulDrain(server, health, config, on_event=lambda what: say(f"EVENT {what}"))
    drain.install_signal_handlers()
    await server.start()
    say(f"PORT {port}")
    line = await asyncio.to_thread(sys.stdin.readline)
    outbound = line.split()[1]
    async with grpc.aio.insecure_channel(outbound) as channel:
        relay.stub = EchoStub(channel)
        say("RELAYING")
        await drain.wait()
        if flush:
            with contextlib.suppress(grpc.aio.AioRpcError):  # counted in out_failed
                await relay.call_out("flush")
            say("EVENT flushed")
    stats = {"received": relay.received, "out_ok": relay.out_ok, "out_failed": relay.out_failed}
    say(f"STATS {json.dumps(stats)}")
    return 3 if drain.forced else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--drain-delay", type=float, default=1.0)
    parser.add_argument("--grace", type=float, default=5.0)
    parser.add_argument("--flush", action="store_true")
    args = parser.parse_args(argv)
    return asyncio.run(
        serve(DrainConfig(drain_delay=args.drain_delay, grace=args.grace), args.flush)
    )


if __name__ == "__main__":
    sys.exit(main())
