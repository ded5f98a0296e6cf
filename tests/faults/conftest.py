"""Fixtures of the fault suite, and the table of figures printed at the end of a run.

Every fault test records what it measured (calls, failed calls by status code, durations,
memory) through ``figures``; ``pytest_terminal_summary`` prints one line per test.
The sidecar process fixtures are the end-to-end ones (both data planes).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

import balancers
import balancers.aio
from resolvers import ResolverOptions
from tests.e2e.conftest import (
    Sidecar,
    Sidecars,
    echo,
    module_sidecars,
    outbound_config,
    sidecars,
    skip_without_plane,
    static,
    with_defaults,
)
from tests.support.backend_process import BackendProcess
from tests.support.echo import EchoStub

__all__ = [
    "RETRY_CLUSTER",
    "VIAS",
    "Client",
    "Figures",
    "Sidecar",
    "Sidecars",
    "backend_processes",
    "echo",
    "echo_client",
    "figures",
    "module_sidecars",
    "outbound_config",
    "sidecars",
    "skip_without_plane",
    "static",
    "static_target",
    "with_defaults",
]

_RECORDED: list[tuple[str, dict[str, Any]]] = []


class Figures:
    """What one test measured, in insertion order (shown as ``key=value``)."""

    def __init__(self, test: str) -> None:
        self.test = test
        self.values: dict[str, Any] = {}

    def record(self, **values: Any) -> None:
        self.values.update(values)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    """Record this test's figures for the end-of-run table (also when it fails)."""
    recorded = Figures(request.node.nodeid.split("::", 1)[-1])
    yield recorded
    if recorded.values:
        _RECORDED.append((recorded.test, recorded.values))


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{v}" for k, v in value.items()) + "}"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line per fault test: its name and its figures."""
    if not _RECORDED:
        return
    terminalreporter.section("fault suite figures")
    width = max(len(name) for name, _ in _RECORDED)
    for name, values in _RECORDED:
        shown = "  ".join(f"{k}={_show(v)}" for k, v in values.items())
        terminalreporter.write_line(f"{name:<{width}}  {shown}")


# -- clients: in process, or through a sidecar process on each data plane ----------------------

#: Where calls go through: a balanced channel in this process, or the sidecar on each plane.
VIAS = ("inproc", "python", "envoy")
#: Retries as the issue ran them: UNAVAILABLE, 3 attempts, short backoff.
RETRY_CLUSTER = {
    "max_attempts": 3,
    "retryable_status_codes": ["UNAVAILABLE"],
    "initial_backoff": "20ms",
    "max_backoff": "100ms",
}
RETRY_POLICY = balancers.RetryPolicy(max_attempts=3, initial_backoff=0.02, max_backoff=0.1)


@dataclass
class Client:
    """An Echo stub and, when calls go through one, the sidecar process."""

    stub: Any
    sidecar: Sidecar | None = None


@contextlib.asynccontextmanager
async def echo_client(
    via: str,
    target: str,
    directory: Path,
    *,
    retry: bool,
    refresh: float | None = None,
    health_check: bool = False,
    **cluster: Any,
) -> AsyncIterator[Client]:
    """An Echo client to ``target``: ``inproc`` is ``balancers.aio.insecure_channel``, else a
    sidecar process on that data plane with one cluster (``cluster`` its extra settings).
    ``refresh``: seconds between DNS lookups (TTLs permitting). ``health_check``: follow each
    endpoint's grpc.health.v1 status (the server's own, service "")."""
    if health_check:
        cluster["health_check"] = {"service": ""}
    if refresh is not None:
        cluster["resolver"] = {"min_refresh": f"{refresh}s", "max_refresh": f"{refresh}s"}
    if via == "inproc":
        options = ResolverOptions(min_refresh=refresh, max_refresh=refresh) if refresh else None
        channel = balancers.aio.insecure_channel(
            target,
            retry=RETRY_POLICY if retry else None,
            resolver_options=options,
            health_check_service="" if health_check else None,
        )
        try:
            yield Client(EchoStub(channel))
        finally:
            await channel.close()
        return
    skip_without_plane(via)
    os.makedirs(directory, exist_ok=True)
    started = Sidecars(directory, via)
    try:
        if retry:
            cluster = {"retry": RETRY_CLUSTER, **cluster}
        sidecar = await started.start(outbound_config(target, **cluster))
        async with grpc.aio.insecure_channel(sidecar.outbound) as channel:
            yield Client(EchoStub(channel), sidecar)
    finally:
        started.kill_all()


@contextlib.asynccontextmanager
async def backend_processes(count: int = 3, **options: Any) -> AsyncIterator[list[BackendProcess]]:
    """``count`` echo backend processes named ``b0``..; every one started is killed after."""
    started: list[BackendProcess] = []
    try:
        for i in range(count):
            started.append(await BackendProcess.start(f"b{i}", **options))
        yield started
    finally:
        for backend in started:
            backend.kill()


def static_target(addresses: list[str]) -> str:
    return "static:///" + ",".join(addresses)
