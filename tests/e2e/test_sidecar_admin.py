"""The admin HTTP endpoints of the real sidecar: /live, /ready, /clusters, /config, /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio

from sidecar.config import REDACTED
from tests.e2e.conftest import Sidecar, Sidecars, outbound_config, static
from tests.e2e.test_call_metrics import call_samples, expected_samples
from tests.support.certs import make_pki
from tests.support.echo import EchoRequest, EchoServer, EchoStub, start_echo_server

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]


@dataclass
class Env:
    echo: EchoServer
    sidecar: Sidecar
    token_file: str
    key_file: str


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(
    module_sidecars: Sidecars, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Env]:
    directory = tmp_path_factory.mktemp("admin")
    pki = make_pki(str(directory))
    tokens = directory / "tokens"
    tokens.write_text("t0ken\n")
    echo = await start_echo_server("backend")
    try:  # a failed start must not leave the server to a garbage-collected shutdown
        config = outbound_config(static(echo), lb_policy="round_robin")
        config["inbound"] = {
            "listen": "127.0.0.1:0",
            "app": echo.address,
            "tls": {"cert": pki.server_cert, "key": pki.server_key, "client_ca": pki.ca},
            "auth": {"tokens_file": str(tokens)},
        }
        sidecar = await module_sidecars.start(config)
        async with grpc.aio.insecure_channel(sidecar.outbound) as channel:
            await EchoStub(channel).Unary(EchoRequest(message="pick me"), timeout=5)
        yield Env(echo, sidecar, str(tokens), pki.server_key)
    finally:
        await echo.stop(None)


async def test_live_and_ready(env: Env) -> None:
    assert await env.sidecar.get("/live") == (200, "ok\n")
    assert await env.sidecar.get("/ready") == (200, "ready\n")


async def test_clusters_lists_endpoints(env: Env) -> None:
    clusters = await env.sidecar.get_json("/clusters")
    backend = clusters["backend"]
    assert backend["target"] == static(env.echo)
    assert backend["lb_policy"] == "round_robin"
    assert backend["state"] == "READY"
    (endpoint,) = backend["endpoints"]
    assert endpoint["address"] == env.echo.address
    assert endpoint["state"] == "READY"
    assert endpoint["ejected"] is False
    assert endpoint["picks"] >= 1
    assert "health" in endpoint


async def test_config_is_the_effective_config_with_secrets_redacted(env: Env) -> None:
    config = await env.sidecar.get_json("/config")
    assert config["clusters"]["backend"]["target"] == static(env.echo)
    assert config["inbound"]["tls"]["key"] == REDACTED
    assert config["inbound"]["auth"]["tokens_file"] == REDACTED
    assert config["inbound"]["tls"]["cert"].endswith("server.crt")
    _, text = await env.sidecar.get("/config")
    assert env.token_file not in text and env.key_file not in text and "t0ken" not in text


async def test_metrics(env: Env) -> None:
    status, text = await env.sidecar.get("/metrics")
    assert status == 200
    # the same lines on both planes for the fixture's one outbound call: the listener's side
    # and the upstream's, labelled with the direction and the cluster, messages both ways
    assert call_samples(text) == expected_samples({("outbound", "backend", "Unary"): (1, 1, 1)})
    assert 'meshkit_cluster_endpoints{cluster="backend",state="READY"} 1.0' in text
    assert "meshkit_config_reloads_total" in text


async def test_not_ready_until_every_cluster_has_endpoints(sidecars: Sidecars, env: Env) -> None:
    config = outbound_config(static(env.echo))
    # a name that never resolves (.invalid is reserved): the cluster never gets endpoints
    config["clusters"]["nowhere"] = {"target": "dns:///nowhere.invalid:50051"}
    config["outbound"]["routes"].insert(0, {"prefix": "/nowhere.Service/", "cluster": "nowhere"})
    sidecar = await sidecars.start(config, ready=False)
    status, reason = await sidecar.get("/ready")
    assert status == 503
    assert "nowhere" in reason and "backend" not in reason
    assert await sidecar.get("/live") == (200, "ok\n")
