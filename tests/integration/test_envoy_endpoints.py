"""The Envoy plane's endpoints come from meshkit's resolvers (sidecar.envoy.endpoints)."""

from __future__ import annotations

from typing import Any

from sidecar.config import ClusterConfig, ResolverConfig
from sidecar.envoy.endpoints import EndpointWatcher
from sidecar.envoy.translate import Endpoint
from tests.support.dns_server import DnsServer
from tests.support.waiting import wait_until


def _watcher() -> tuple[EndpointWatcher, list[str]]:
    changes: list[str] = []
    return EndpointWatcher(changes.append), changes


async def test_a_static_list_pushed_during_build_is_kept() -> None:
    # static resolvers answer synchronously inside build(), before update() returns
    watcher, changes = _watcher()
    await watcher.update({"a": ClusterConfig(target="static:///127.0.0.1:1,127.0.0.1:2")})
    try:
        assert watcher.endpoints() == {"a": (Endpoint("127.0.0.1", 1), Endpoint("127.0.0.1", 2))}
        assert watcher.not_warm() == []
        assert changes == ["a"]
    finally:
        await watcher.close()


async def test_host_names_of_a_static_list_are_looked_up() -> None:
    watcher, changes = _watcher()
    await watcher.update({"a": ClusterConfig(target="static:///localhost:7,127.0.0.9:8")})
    try:
        await wait_until(lambda: changes == ["a"], timeout=5, message="lookup done")
        hosts = {(e.host, e.port) for e in watcher.endpoints()["a"]}
        assert ("127.0.0.9", 8) in hosts
        assert ("127.0.0.1", 7) in hosts or ("::1", 7) in hosts  # localhost, by the system
        assert all(host != "localhost" for host, _ in hosts)
    finally:
        await watcher.close()


async def test_dns_changes_flow_through_and_nxdomain_is_not_warm() -> None:
    watcher, changes = _watcher()
    fast = ResolverConfig(min_refresh=0.2, max_refresh=1)  # type: ignore[arg-type]
    async with DnsServer() as dns:
        dns.set_a("svc.test", ["127.0.0.11"], ttl=1)
        configs: dict[str, Any] = {
            "svc": ClusterConfig(target=dns.target("svc.test", 80), resolver=fast),
            "gone": ClusterConfig(target=dns.target("gone.test", 80), resolver=fast),
        }
        await watcher.update(configs)
        try:
            await wait_until(lambda: "svc" in changes, timeout=5, message="first answer")
            assert watcher.endpoints()["svc"] == (Endpoint("127.0.0.11", 80),)
            assert watcher.not_warm() == ["gone"]  # NXDOMAIN: an answer, but no endpoints
            dns.set_a("svc.test", ["127.0.0.11", "127.0.0.12"], ttl=1)
            await wait_until(
                lambda: len(watcher.endpoints()["svc"]) == 2, timeout=5, message="new record"
            )
            assert changes.count("svc") == 2
        finally:
            await watcher.close()


async def test_a_replaced_cluster_ignores_its_old_resolver() -> None:
    watcher, _ = _watcher()
    await watcher.update({"a": ClusterConfig(target="static:///127.0.0.1:1")})
    old = watcher.clusters["a"]
    await watcher.update({"a": ClusterConfig(target="static:///127.0.0.1:2")})
    try:
        assert old.retired and not watcher.clusters["a"].retired
        assert watcher.endpoints() == {"a": (Endpoint("127.0.0.1", 2),)}
        await watcher.update({})
        assert watcher.endpoints() == {}
    finally:
        await watcher.close()
