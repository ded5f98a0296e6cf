"""Backends dying under steady load: kill -9 of one of three, and rolling restarts (kill -9 and
graceful), in process (``balancers.aio``) and through the sidecar on each data plane.

Each test drives two clients side by side at the same backends, one with retries and one
without, so one fault is measured both ways. The backends are real processes
(:mod:`tests.support.backend_process`); a restarted one comes back on its old port, as a pod
behind a stable address does.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import VIAS, Figures, backend_processes, echo_client, static_target
from tests.support.backend_process import BackendProcess
from tests.support.dns_server import DnsServer
from tests.support.load import SteadyLoad, steady_load
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

CALLERS = 4
#: Pause between a caller's calls: each client makes ~65 calls/s at most.
INTERVAL = 0.01
#: Each call takes this long in the backend, so calls are in flight when one dies.
CALL_TIME = 0.05
#: Successful calls to wait for after a kill, twice: enough to see the survivors take over.
CALLS_AFTER = 20
#: How long a restarted backend may take to get traffic again (reconnect backoff ~1 s).
BACK_IN = 15.0
#: The backends' drain: a short delay, then calls in flight get up to GRACE seconds.
DRAIN_DELAY = 0.3
GRACE = 5.0


@contextlib.asynccontextmanager
async def _two_loads(
    via: str, target: str, directory: Path, **options: Any
) -> AsyncIterator[dict[str, SteadyLoad]]:
    """A steady load through a client with retries (``retry``) and one without (``once``)."""
    async with contextlib.AsyncExitStack() as stack:
        loads: dict[str, SteadyLoad] = {}
        for name, retry in (("retry", True), ("once", False)):
            client = await stack.enter_async_context(
                echo_client(via, target, directory / name, retry=retry, **options)
            )
            loads[name] = await stack.enter_async_context(
                steady_load(client.stub, callers=CALLERS, interval=INTERVAL, delay_s=CALL_TIME)
            )
        yield loads


async def _all_serving(loads: dict[str, SteadyLoad], backends: list[BackendProcess]) -> None:
    for load in loads.values():
        for backend in backends:
            await load.wait_server(backend.name.__eq__, 2)


def _record(figures: Figures, loads: dict[str, SteadyLoad], **extra: object) -> None:
    for name, load in loads.items():
        result = load.result
        figures.record(**{f"{name}_calls": result.calls, f"{name}_failed": result.failed})
        if result.failed:
            figures.record(**{f"{name}_codes": result.by_code()})
    figures.record(**extra)


@pytest.mark.parametrize("via", VIAS)
async def test_kill9_one_of_three_backends(via: str, tmp_path: Path, figures: Figures) -> None:
    """With retries no call fails; without, only calls in flight on the killed one may."""
    async with backend_processes(3) as backends:
        target = static_target([b.address for b in backends])
        async with _two_loads(via, target, tmp_path) as loads:
            await _all_serving(loads, backends)
            once = loads["once"]
            await wait_until(lambda: once.in_flight == CALLERS, message="calls in flight")
            in_flight = once.in_flight
            backends[0].kill()
            for load in loads.values():
                await load.wait_calls(CALLS_AFTER)
            after = {name: dict(load.result.servers) for name, load in loads.items()}
            for load in loads.values():
                await load.wait_calls(CALLS_AFTER)
    _record(figures, loads, in_flight_at_kill=in_flight)
    assert loads["retry"].result.failed == 0, loads["retry"].result.failure_summary()
    assert once.result.failed <= in_flight, (in_flight, once.result.failure_summary())
    assert set(once.result.codes) <= {"OK", "UNAVAILABLE"}, once.result.codes
    for name, load in loads.items():
        # the survivors took the load: the killed one answered nothing in the last stretch
        servers = load.result.servers
        assert servers["b0"] == after[name].get("b0", 0), (name, servers)
        assert servers["b1"] > after[name].get("b1", 0), (name, servers)
        assert servers["b2"] > after[name].get("b2", 0), (name, servers)


@pytest.mark.parametrize("how", ["kill9", "graceful"])
@pytest.mark.parametrize("via", VIAS)
async def test_rolling_restart_of_three_backends(
    via: str, how: str, tmp_path: Path, figures: Figures
) -> None:
    """Each backend in turn stops (kill -9, or SIGTERM: a drain) and comes back on its port;
    the next one goes once the new one gets calls. With retries no call fails; a backend that
    drains costs 0 calls even without; kill -9 without retries costs at most the calls in
    flight at each kill."""
    in_flight = 0
    async with backend_processes(3, drain_delay=DRAIN_DELAY, grace=GRACE) as backends:
        target = static_target([b.address for b in backends])
        # A draining server cancels or refuses calls that reach it after its stop began, before
        # the client read its GOAWAY (grpc-core; a plain grpc.aio channel loses calls too): only
        # a client that follows its NOT_SERVING, announced for the drain delay, avoids them.
        health_check = how == "graceful"
        async with _two_loads(via, target, tmp_path, health_check=health_check) as loads:
            await _all_serving(loads, backends)
            for i, old in enumerate(list(backends)):
                if how == "kill9":
                    in_flight += loads["once"].in_flight
                    old.kill()
                else:
                    old.terminate()
                    assert await old.wait_exit() == 0, old.lines
                new = await BackendProcess.start(
                    f"b{i}.1", old.port, drain_delay=DRAIN_DELAY, grace=GRACE
                )
                backends.append(new)
                for load in loads.values():
                    await load.wait_server(new.name.__eq__, 2, timeout=BACK_IN)
    _record(figures, loads, **({"in_flight_at_kills": in_flight} if how == "kill9" else {}))
    retry, once = loads["retry"].result, loads["once"].result
    assert retry.failed == 0, retry.failure_summary()
    if how == "graceful":
        assert once.failed == 0, once.failure_summary()
    else:
        assert once.failed <= in_flight, (in_flight, once.failure_summary())


#: The name the backends are found by in the new-address rolling restart, how often clients
#: look it up, and the backends' drain delay: longer than a lookup round, as a pod's
#: termination must outlast the endpoint update reaching its clients.
NAME = "backends.faults.test"
REFRESH = 0.5
NEW_ADDRESS_DRAIN_DELAY = 1.5


@pytest.mark.parametrize("via", VIAS)
async def test_rolling_restart_to_new_addresses(via: str, tmp_path: Path, figures: Figures) -> None:
    """The Kubernetes way: each new backend comes up on a new address, the name's answer swaps
    the old address for the new one and the old backend gets SIGTERM at the same moment
    (drains). No call fails, with or without retries."""
    old_ips = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    new_ips = ["127.0.0.4", "127.0.0.5", "127.0.0.6"]
    backends: list[BackendProcess] = []
    try:
        first = await BackendProcess.start(
            "b0", host=old_ips[0], drain_delay=NEW_ADDRESS_DRAIN_DELAY, grace=GRACE
        )
        backends.append(first)
        for i, ip in enumerate(old_ips[1:], 1):
            backends.append(
                await BackendProcess.start(
                    f"b{i}", first.port, host=ip, drain_delay=NEW_ADDRESS_DRAIN_DELAY, grace=GRACE
                )
            )
        async with DnsServer() as dns:
            answer = list(old_ips)
            dns.set_a(NAME, answer, ttl=0)
            target = dns.target(NAME, first.port)
            async with _two_loads(via, target, tmp_path, refresh=REFRESH) as loads:
                await _all_serving(loads, backends)
                for i, old in enumerate(list(backends)):
                    new = await BackendProcess.start(
                        f"b{i}.1",
                        first.port,
                        host=new_ips[i],
                        drain_delay=NEW_ADDRESS_DRAIN_DELAY,
                        grace=GRACE,
                    )
                    backends.append(new)
                    answer[i] = new_ips[i]
                    dns.set_a(NAME, answer, ttl=0)
                    old.terminate()
                    for load in loads.values():
                        await load.wait_server(new.name.__eq__, 2, timeout=BACK_IN)
                    assert await old.wait_exit() == 0, old.lines
    finally:
        for backend in backends:
            backend.kill()
    _record(figures, loads)
    for name, load in loads.items():
        assert load.result.failed == 0, (name, load.result.failure_summary())
