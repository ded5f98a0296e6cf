"""A 20 s DNS outage, then a changed answer: calls keep going to the last good endpoints while
the name server is silent, then move to the new one.

One outage serves every client at once (in process, and a sidecar on each data plane that
runs here), each with its own steady load: the 20 s is the issue's figure and is spent once.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import envoy_binary
from tests.faults.conftest import Figures, echo_client
from tests.support.backends import start_same_port
from tests.support.dns_server import DnsServer
from tests.support.load import SteadyLoad, steady_load
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

NAME = "svc.faults.test"
OUTAGE = 20.0
OLD, NEW = "127.0.0.1", "127.0.0.2"
#: After the outage a resolver may still be backing off (its back-off doubles while the
#: server is silent) and a lookup may be waiting for its timeout.
MOVE_WITHIN = 40.0


async def test_dns_outage_then_new_answer(tmp_path: Path, figures: Figures) -> None:
    port, servers = await start_same_port([OLD, NEW])
    vias = ["inproc", "python"] + (["envoy"] if envoy_binary() is not None else [])
    try:
        async with DnsServer() as dns, contextlib.AsyncExitStack() as stack:
            dns.set_a(NAME, [OLD], ttl=1)
            target = dns.target(NAME, port)
            loads: dict[str, SteadyLoad] = {}
            for via in vias:
                client = await stack.enter_async_context(
                    echo_client(via, target, tmp_path / via, retry=False, refresh=1.0)
                )
                loads[via] = await stack.enter_async_context(
                    steady_load(client.stub, callers=2, interval=0.05)
                )
            for load in loads.values():
                await load.wait_server(lambda s: s == OLD, 3)
            asked = dns.queries[NAME, "A"]
            dns.mode = "drop"
            outage_end = time.monotonic() + OUTAGE
            # The clients keep asking during the outage (and get no answer)...
            await dns.wait_for_queries(NAME, "A", asked + len(vias), timeout=OUTAGE)
            await wait_until(lambda: time.monotonic() >= outage_end, timeout=OUTAGE + 5)
            during = {via: load.result.calls for via, load in loads.items()}
            failed_during = {via: load.result.failed for via, load in loads.items()}
            dns.set_a(NAME, [NEW], ttl=1)
            dns.mode = "normal"
            back = time.monotonic()
            moved: dict[str, float] = {}
            for via, load in loads.items():
                await load.wait_server(lambda s: s == NEW, 3, timeout=MOVE_WITHIN)
                moved[via] = round(time.monotonic() - back, 1)
            old_counts = {via: load.result.servers[OLD] for via, load in loads.items()}
            for load in loads.values():
                await load.wait_calls(20)
        results = {via: load.result for via, load in loads.items()}
    finally:
        for server in servers.values():
            await server.stop(None)
    for via, result in results.items():
        figures.record(
            **{
                f"{via}_calls": result.calls,
                f"{via}_failed": result.failed,
                f"{via}_in_outage": during[via],
                f"{via}_moved_s": moved[via],
            }
        )
    for via, result in results.items():
        assert failed_during[via] == 0 and result.failed == 0, (via, result.failure_summary())
        assert during[via] > 20, (via, during)  # calls did flow during the outage
        # once moved, the old endpoint gets nothing more
        assert result.servers[OLD] <= old_counts[via] + 2, (via, result.servers)
