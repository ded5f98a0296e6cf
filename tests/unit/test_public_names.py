"""The public names follow grpcio's convention, and the former names still work for a release.

grpcio's shape: the sync API at the top of a package, its asyncio twin under the same names in
``.aio``, reachable after a bare ``import`` of the package (``import grpc; grpc.aio.Channel``).
"""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import grpc
import pytest

import balancers
import health
import health.drain
import health.service
import health.watch
import telemetry

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("package", ["balancers", "health", "telemetry"])
def test_a_bare_import_reaches_the_aio_twin(package: str) -> None:
    # A fresh interpreter: in this one, other tests may have imported the twin already.
    code = f"import {package}; print({package}.aio.__name__)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{package}.aio"


def test_every_aio_name_has_its_sync_twin_under_the_same_name() -> None:
    for package in (balancers, health, telemetry):
        for name in package.aio.__all__:
            assert name in package.__all__, f"{package.__name__}.aio.{name} has no sync twin"
            sync, aio = getattr(package, name), getattr(package.aio, name)
            assert sync is not aio


def test_the_twins_are_the_grpcio_kinds_they_mirror() -> None:
    assert issubclass(balancers.BalancedChannel, grpc.Channel)
    assert issubclass(balancers.aio.BalancedChannel, grpc.aio.Channel)
    assert not issubclass(balancers.BalancedChannel, grpc.aio.Channel)
    assert inspect.iscoroutinefunction(health.aio.HealthService.set)
    assert not inspect.iscoroutinefunction(health.HealthService.set)
    assert inspect.iscoroutinefunction(health.aio.GracefulDrain.wait)
    assert not inspect.iscoroutinefunction(health.GracefulDrain.wait)
    assert inspect.iscoroutinefunction(health.aio.watch_health)
    assert not inspect.iscoroutinefunction(health.watch_health)


FORMER = [
    (balancers, "BalancedSyncChannel", "balancers.BalancedChannel", balancers.BalancedChannel),
    (health, "AioHealthService", "health.aio.HealthService", health.aio.HealthService),
    (health, "SyncGracefulDrain", "health.GracefulDrain", health.GracefulDrain),
    (health, "watch_health_blocking", "health.watch_health", health.watch_health),
    (health.service, "AioHealthService", "health.aio.HealthService", health.aio.HealthService),
    (health.drain, "SyncGracefulDrain", "health.GracefulDrain", health.GracefulDrain),
    (health.watch, "watch_health_blocking", "health.watch_health", health.watch_health),
    (
        telemetry,
        "aio_client_interceptors",
        "telemetry.aio.client_interceptors",
        telemetry.aio.client_interceptors,
    ),
    (
        telemetry,
        "aio_server_interceptor",
        "telemetry.aio.server_interceptor",
        telemetry.aio.server_interceptor,
    ),
]


@pytest.mark.parametrize(
    ("module", "former", "new", "value"), FORMER, ids=[f"{m.__name__}.{f}" for m, f, _, _ in FORMER]
)
def test_former_names_warn_and_give_the_new_object(
    module: Any, former: str, new: str, value: object
) -> None:
    with pytest.warns(
        DeprecationWarning, match=rf"{module.__name__}\.{former} .* use {new}"
    ) as seen:
        assert getattr(module, former) is value
    assert seen[0].filename == __file__  # points at the line using the former name
    assert former not in getattr(module, "__all__", ())  # a star import does not warn


def test_former_names_import_with_a_from_statement() -> None:
    with pytest.warns(DeprecationWarning, match="health.aio.HealthService"):
        from health import AioHealthService
    assert AioHealthService is health.aio.HealthService


def test_unknown_names_still_raise_attribute_error() -> None:
    for module in (balancers, health, health.service, health.drain, health.watch, telemetry):
        with pytest.raises(AttributeError, match="no attribute 'Nope'"):
            getattr(module, "Nope")  # noqa: B009
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hasattr(health, "HealthService") and hasattr(balancers, "BalancedChannel")


# -- names whose meaning moved to the sync twin: the former (asyncio) use still works ----------


class _AsyncServerGroup:
    """Duck-typed like several grpc.aio servers stopped together (the sidecar's ServerGroup)."""

    async def stop(self, grace: float | None) -> None:
        pass


async def test_graceful_drain_given_an_asyncio_server_builds_the_aio_twin() -> None:
    server = grpc.aio.server()
    config = health.DrainConfig(drain_delay=0)
    former_uses: list[tuple[Any, Any]] = [
        (server, health.aio.HealthService()),
        (_AsyncServerGroup(), None),  # recognised by its coroutine stop()
    ]
    for target, service in former_uses:
        with pytest.warns(DeprecationWarning, match="health.aio.GracefulDrain"):
            drain: Any = health.GracefulDrain(target, service, config)
        assert type(drain) is health.aio.GracefulDrain
        assert drain.config is config
    await server.stop(None)


def test_graceful_drain_given_a_sync_server_is_the_sync_drain() -> None:
    server = grpc.server(thread_pool=None)  # never started: no thread pool needed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        drain = health.GracefulDrain(server, health.HealthService())
    assert type(drain) is health.GracefulDrain and not drain.draining
    server.stop(None)


async def test_watch_health_given_an_aio_channel_and_no_stop_is_the_aio_twin() -> None:
    channel = grpc.aio.insecure_channel("127.0.0.1:1")

    def on_change(verdict: health.HealthVerdict, reason: str) -> None:
        pass

    with pytest.warns(DeprecationWarning, match="health.aio.watch_health"):
        watching = health.watch_health(channel, "", on_change)
    assert inspect.iscoroutine(watching)
    task = asyncio.ensure_future(watching)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await channel.close()


def test_watch_health_on_a_sync_channel_needs_stop() -> None:
    channel = grpc.insecure_channel("127.0.0.1:1")
    try:
        with pytest.raises(TypeError, match="needs stop"):
            _ = health.watch_health(channel, "", lambda verdict, reason: None)
        stop = threading.Event()
        stop.set()
        assert health.watch_health(channel, "", lambda verdict, reason: None, stop) is None
    finally:
        channel.close()
