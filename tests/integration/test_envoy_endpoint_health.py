"""The Envoy plane's control plane watches endpoint health (sidecar.envoy.endpoint_health).

Real ``grpc.aio`` servers on loopback with meshkit's health service; the watches follow
NOT_SERVING at once, treat a server without a health service as healthy, an unreachable one as
unhealthy, use the cluster's TLS and server name, and stop with the endpoint or at close.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from health.aio import HealthService
from sidecar.config import ClusterConfig, ClusterTlsConfig, HealthCheckConfig
from sidecar.envoy.endpoint_health import HEALTHY, UNHEALTHY, EndpointHealth
from sidecar.envoy.translate import Endpoint
from tests.support.certs import make_ca, server_cert
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)


@dataclass
class Server:
    server: grpc.aio.Server
    port: int
    health: HealthService | None

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint("127.0.0.1", self.port)


@contextlib.asynccontextmanager
async def serving(
    *, health: bool = True, credentials: grpc.ServerCredentials | None = None
) -> AsyncIterator[Server]:
    server = grpc.aio.server()
    service = None
    if health:
        service = HealthService()
        service.add_to_server(server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield Server(server, port, service)
    finally:
        await server.stop(None)


@dataclass
class Tracker:
    changes: list[str] = field(default_factory=list)
    watch: EndpointHealth = field(init=False)

    def __post_init__(self) -> None:
        self.watch = EndpointHealth(self.changes.append, max_backoff=0.5)

    def status(self, cluster: str, endpoint: Endpoint) -> str | None:
        return self.watch.statuses().get(cluster, {}).get((endpoint.host, endpoint.port))


def checked(target: str = "static:///127.0.0.1:1", **fields: Any) -> ClusterConfig:
    return ClusterConfig(target=target, health_check=HealthCheckConfig(service=""), **fields)


async def test_not_serving_is_unhealthy_at_once_and_serving_healthy_again() -> None:
    tracker = Tracker()
    async with serving() as a, serving() as b:
        assert a.health is not None
        endpoints = {"c": (a.endpoint, b.endpoint)}
        tracker.watch.follow({"c": checked()}, endpoints, {})
        try:
            await wait_until(
                lambda: (
                    tracker.watch.statuses()
                    == {"c": {("127.0.0.1", a.port): HEALTHY, ("127.0.0.1", b.port): HEALTHY}}
                ),
                timeout=5,
                message="both healthy",
            )
            seen = len(tracker.changes)
            await a.health.set("", False)
            took = await wait_until(
                lambda: tracker.status("c", a.endpoint) == UNHEALTHY, timeout=5, message="drain"
            )
            assert took < 1.0  # a Watch stream, not a poll
            assert tracker.changes[seen:] == ["c"]
            assert tracker.status("c", b.endpoint) == HEALTHY
            health, reason = tracker.watch.view()["c"][f"127.0.0.1:{a.port}"]
            assert health == "unhealthy" and "NOT_SERVING" in reason
            await a.health.set("", True)
            await wait_until(lambda: tracker.status("c", a.endpoint) == HEALTHY, timeout=5)
        finally:
            await tracker.watch.close()


async def test_no_health_service_is_healthy_and_unreachable_is_unhealthy() -> None:
    tracker = Tracker()
    async with serving(health=False) as bare:
        async with serving() as gone:
            dead = gone.endpoint
        # gone has stopped: nothing listens on its port any more
        tracker.watch.follow({"c": checked()}, {"c": (bare.endpoint, dead)}, {})
        try:
            await wait_until(
                lambda: (
                    tracker.status("c", bare.endpoint) == HEALTHY
                    and tracker.status("c", dead) == UNHEALTHY
                ),
                timeout=5,
                message="bare healthy, dead unhealthy",
            )
        finally:
            await tracker.watch.close()


async def test_watches_follow_the_endpoints_and_stop_at_close() -> None:
    tracker = Tracker()
    async with serving() as a, serving() as b:
        configs = {"c": checked(), "plain": ClusterConfig(target="static:///127.0.0.1:1")}
        tracker.watch.follow(configs, {"c": (a.endpoint, b.endpoint), "plain": (a.endpoint,)}, {})
        try:
            assert tracker.watch.watching() == 2  # none for a cluster without health_check
            await wait_until(lambda: len(tracker.watch.statuses()["c"]) == 2, timeout=5)
            tracker.watch.follow(configs, {"c": (b.endpoint,)}, {})
            assert tracker.watch.watching() == 1
            assert tracker.watch.statuses() == {"c": {("127.0.0.1", b.port): HEALTHY}}
            # a changed health service restarts the cluster's watches; the last verdict
            # holds until the new watch answers
            other = {
                "c": ClusterConfig(
                    target="static:///127.0.0.1:1", health_check=HealthCheckConfig(service="x")
                )
            }
            tracker.watch.follow(other, {"c": (b.endpoint,)}, {})
            assert tracker.status("c", b.endpoint) == HEALTHY
            await wait_until(lambda: tracker.status("c", b.endpoint) == UNHEALTHY, timeout=5)
            assert "SERVICE_UNKNOWN" in tracker.watch.view()["c"][f"127.0.0.1:{b.port}"][1]
            tracker.watch.follow({}, {}, {})
            assert tracker.watch.watching() == 0 and tracker.watch.statuses() == {}
        finally:
            await tracker.watch.close()
        assert tracker.watch.watching() == 0
        tracker.watch.follow(configs, {"c": (a.endpoint,)}, {})  # closed: starts nothing
        assert tracker.watch.watching() == 0


async def test_the_watch_uses_the_clusters_tls_and_server_name() -> None:
    ca, other_ca = make_ca("health CA"), make_ca("other CA")
    issued = server_cert(ca)  # localhost and 127.0.0.1
    credentials = grpc.ssl_server_credentials([(issued.key_pem, issued.cert_pem)])
    tracker = Tracker()
    with tempfile.TemporaryDirectory() as directory:
        good, bad = f"{directory}/ca.crt", f"{directory}/other.crt"
        files = {good: ca.cert_pem, bad: other_ca.cert_pem}
        async with serving(credentials=credentials) as server:
            configs = {
                "good": checked(tls=ClusterTlsConfig(ca=good, server_name="localhost")),
                "bad": checked(tls=ClusterTlsConfig(ca=bad, server_name="localhost")),
                "wrong_name": checked(tls=ClusterTlsConfig(ca=good, server_name="elsewhere")),
                "plain": checked(),
            }
            endpoints = {name: (server.endpoint,) for name in configs}
            tracker.watch.follow(configs, endpoints, files)
            try:
                await wait_until(
                    lambda: (
                        {n: tracker.status(n, server.endpoint) for n in configs}
                        == {
                            "good": HEALTHY,
                            "bad": UNHEALTHY,
                            "wrong_name": UNHEALTHY,
                            "plain": UNHEALTHY,
                        }
                    ),
                    timeout=10,
                    message="only the right CA and name pass",
                )
            finally:
                await tracker.watch.close()
