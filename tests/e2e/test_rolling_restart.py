"""A graceful rolling restart of the backends behind the sidecar costs 0 calls, without retries.

Three backend processes (:mod:`tests.support.backend_process`) drain as a pod should on
SIGTERM: health ``NOT_SERVING`` first, ``drain_delay`` later the server stops (GOAWAY) and
lets its calls in flight finish. Each is stopped in turn under steady load through the sidecar
(no retry policy) and a new one starts on its port; the next one goes once the new one gets
calls. :data:`CYCLES` rounds over the three.

Why the cluster checks health: a grpc server that has begun to stop cancels the calls that
reach it before the client has read its GOAWAY (``CANCELLED``) or refuses them, and a refused
call re-picked inside its one-endpoint grpc channel fails to connect (``UNAVAILABLE``). That race
does not depend on the mesh: a plain ``grpc.aio`` channel calling a stopping server sees it
too. The drain's answer is the ``NOT_SERVING`` period: a client following the endpoint's health
stops picking it before the server stops. So "a backend that drains properly costs 0 calls"
holds for a cluster with ``health_check``; the test proves it, and that the calls in flight
when each drain begins all end OK. Both planes follow the endpoint's health with a
``grpc.health.v1/Watch`` stream (on the Envoy plane the control plane watches and publishes
each endpoint's EDS health status), so the 0.5 s NOT_SERVING period is enough.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

from tests.e2e.conftest import Sidecars, outbound_config
from tests.support.backend_process import BackendProcess
from tests.support.echo import EchoStub
from tests.support.load import steady_load

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

#: Rounds over the three backends: each round restarts every backend once.
CYCLES = 2
CALLERS = 6
#: Pause between a caller's calls (pacing only).
INTERVAL = 0.005
#: Time each call spends in the backend, so calls are in flight when a drain begins.
CALL_TIME = 0.02
#: The backend's NOT_SERVING period before its server stops, and the grace after.
DRAIN_DELAY = 0.5
GRACE = 5.0
#: How long a restarted backend may take to get calls (the sidecar's reconnect backoff).
BACK_IN = 20.0


async def start_backend(name: str, port: int = 0) -> BackendProcess:
    return await BackendProcess.start(name, port, drain_delay=DRAIN_DELAY, grace=GRACE)


@contextlib.asynccontextmanager
async def backends(count: int) -> AsyncIterator[list[BackendProcess]]:
    """``count`` backend processes ``b0``..; every one started is killed at the end."""
    started: list[BackendProcess] = []
    try:
        for i in range(count):
            started.append(await start_backend(f"b{i}"))
        yield started
    finally:
        for backend in started:
            backend.kill()


async def test_graceful_rolling_restart_costs_no_call(sidecars: Sidecars) -> None:
    async with backends(3) as running:
        target = "static:///" + ",".join(b.address for b in running)
        config = outbound_config(target, health_check={"service": ""})
        sidecar = await sidecars.start(config)
        async with (
            grpc.aio.insecure_channel(sidecar.outbound) as channel,
            steady_load(
                EchoStub(channel), callers=CALLERS, interval=INTERVAL, delay_s=CALL_TIME
            ) as load,
        ):
            for backend in running:
                await load.wait_server(backend.name.__eq__, 2, timeout=BACK_IN)
            drained: list[BackendProcess] = []
            for cycle in range(1, CYCLES + 1):
                for i, old in enumerate(list(running)):
                    old.terminate()
                    assert await old.wait_exit() == 0, old.lines  # 0: a graceful drain
                    drained.append(old)
                    new = await start_backend(f"b{i}.{cycle}", old.port)
                    running[i] = new
                    await load.wait_server(new.name.__eq__, 2, timeout=BACK_IN)
    result = load.result
    print(f"\n[{sidecars.plane}] {len(drained)} restarts: {result.figures()}")
    assert result.failed == 0, result.failures[:10]
    assert result.calls > 0
    # every call a backend had started when its drain began ended OK: none was cancelled
    assert all(b.stats()["cancelled"] == 0 for b in drained), [b.stats() for b in drained]
    # every generation served: the load followed each restart
    for cycle in range(1, CYCLES + 1):
        for i in range(3):
            assert result.servers[f"b{i}.{cycle}"] > 0, result.servers
