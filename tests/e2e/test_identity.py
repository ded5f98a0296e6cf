"""Inbound authorization by workload identity, through the real sidecar on both data planes:
client certificates carrying SPIFFE IDs (URI SANs) allowed, denied, missing; health calls
served whatever the identity; the sidecar's own certificate rotated to a new SPIFFE ID
without a restart; authorization without verified client certificates refused at start."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.conftest import PLANES, Sidecars, skip_without_plane, with_defaults
from tests.support.echo import EchoRequest, EchoServer, EchoStub
from tests.support.spiffe_certs import (
    WorkloadPki,
    issue_workload,
    make_workload_pki,
    spiffe_id,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

WEB = spiffe_id("prod", "web")
BATCH = spiffe_id("prod", "batch")
INTRUDER = spiffe_id("dev", "intruder")


@pytest.fixture
def workload_pki(tmp_path: Path) -> WorkloadPki:
    directory = tmp_path / "pki"
    directory.mkdir()
    return make_workload_pki(str(directory))


def inbound(app: EchoServer, pki: WorkloadPki, **authorization: Any) -> dict[str, Any]:
    tls = {"cert": pki.server_cert, "key": pki.server_key, "client_ca": pki.ca_path}
    return {
        "inbound": {
            "listen": "127.0.0.1:0",
            "app": app.address,
            "tls": tls,
            "authorization": authorization,
        }
    }


def credentials(pki: WorkloadPki, cert: str, key: str) -> grpc.ChannelCredentials:
    def read(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    return grpc.ssl_channel_credentials(read(pki.ca_path), read(key), read(cert))


async def call(address: str, creds: grpc.ChannelCredentials) -> tuple[grpc.StatusCode, str]:
    """One unary echo call over mTLS: (code, details or the replying server's name)."""
    async with grpc.aio.secure_channel(address, creds) as channel:
        try:
            reply = await EchoStub(channel).Unary(EchoRequest(message="who"), timeout=5)
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or ""
    return grpc.StatusCode.OK, str(reply.server)


async def health(address: str, creds: grpc.ChannelCredentials) -> int:
    async with grpc.aio.secure_channel(address, creds) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return int(reply.status)


async def test_allowed_denied_and_missing_identities(
    sidecars: Sidecars, echo: EchoServer, workload_pki: WorkloadPki
) -> None:
    pki = workload_pki
    config = inbound(
        echo, pki, allowed_ids=[WEB], allowed_san_patterns=["spiffe://cluster.local/ns/ops/*/*"]
    )
    access_log = Path(pki.directory) / "access.log"
    config["telemetry"] = {"access_log": {"enabled": True, "path": str(access_log)}}
    sidecar = await sidecars.start(config)
    web = credentials(pki, *pki.client("web", WEB))
    ops = credentials(pki, *pki.client("ops", spiffe_id("ops", "backup")))
    batch = credentials(pki, *pki.client("batch", BATCH))
    # an identity below the pattern's segments is not matched by a single '*'
    deep = credentials(pki, *pki.client("deep", "spiffe://cluster.local/ns/ops/sa/x/y"))
    anonymous = credentials(pki, *pki.client("anon", dns_names=("web.prod.svc",)))
    other_uri = credentials(pki, *pki.client("https", "https://example.com/web"))

    assert await call(sidecar.inbound, web) == (grpc.StatusCode.OK, "echo")
    assert await call(sidecar.inbound, ops) == (grpc.StatusCode.OK, "echo")
    denied = grpc.StatusCode.PERMISSION_DENIED
    for name, creds, identity in (
        ("batch", batch, BATCH),
        ("deep", deep, "spiffe://cluster.local/ns/ops/sa/x/y"),
    ):
        code, details = await call(sidecar.inbound, creds)
        assert code is denied, name
        assert identity in details and "not allowed" in details, (name, details)
    for name, creds in (("anonymous", anonymous), ("https uri", other_uri)):
        code, details = await call(sidecar.inbound, creds)
        assert code is denied, name
        assert "no SPIFFE ID" in details, (name, details)
    assert echo.servicer.calls["Unary"] == 2  # refused calls never reached the app

    def logged() -> list[dict[str, Any]]:
        text = access_log.read_text() if access_log.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    # probes and peers' health checks are served whoever asks
    serving = health_pb2.HealthCheckResponse.SERVING
    assert await health(sidecar.inbound, anonymous) == serving
    assert await health(sidecar.inbound, batch) == serving
    assert await call(sidecar.inbound, web) == (grpc.StatusCode.OK, "echo")

    # the access log has every call but the health checks (written in order: the last call's
    # line comes after theirs), refused ones with no upstream
    await wait_until(lambda: len(logged()) >= 7, timeout=20, message="7 access log lines")
    lines = logged()
    assert sorted((line["grpc_status"], line["upstream_host"]) for line in lines) == [
        *[("OK", echo.address)] * 3,
        *[("PERMISSION_DENIED", None)] * 4,
    ]
    assert {line["method"] for line in lines} == {"/meshkit.test.Echo/Unary"}


def _peer_uris(address: str, pki: WorkloadPki, cert: str, key: str) -> list[str]:
    """The URI SANs of the certificate the listener presents to a fresh handshake."""
    context = ssl.create_default_context(cafile=pki.ca_path)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    host, _, port = address.rpartition(":")
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        peer = tls.getpeercert()
    assert peer is not None
    sans: Any = peer.get("subjectAltName", ())
    return [str(value) for kind, value in sans if kind == "URI"]


def _replace(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


async def test_certificates_rotate_to_a_new_identity_without_restart(
    sidecars: Sidecars, echo: EchoServer, workload_pki: WorkloadPki
) -> None:
    pki = workload_pki
    first = issue_workload(pki.ca, (spiffe_id("prod", "api"),), dns_names=("localhost",))
    cert, key = first.write(pki.directory, "served")
    tls = {"cert": cert, "key": key, "client_ca": pki.ca_path}
    config = {
        "inbound": {
            "listen": "127.0.0.1:0",
            "app": echo.address,
            "tls": tls,
            "authorization": {"allowed_ids": [WEB]},
        }
    }
    sidecar = await sidecars.start(config)
    pid = sidecar.process.pid
    web_cert, web_key = pki.client("web", WEB)
    uris = await asyncio.to_thread(_peer_uris, sidecar.inbound, pki, web_cert, web_key)
    assert uris == [spiffe_id("prod", "api")]

    # cert-manager renews the pod's certificate with a new SPIFFE ID (key first, then cert)
    renewed = issue_workload(pki.ca, (spiffe_id("prod", "api-v2"),), dns_names=("localhost",))
    _replace(key, renewed.key_pem)
    _replace(cert, renewed.cert_pem)

    async def rotated() -> bool:
        try:
            found = await asyncio.to_thread(_peer_uris, sidecar.inbound, pki, web_cert, web_key)
        except (OSError, ssl.SSLError):
            return False  # a handshake between the two writes
        return found == [spiffe_id("prod", "api-v2")]

    await wait_until(rotated, timeout=20, message="the renewed certificate is served")
    assert sidecar.process.pid == pid and sidecar.process.poll() is None
    # the renewed certificate names localhost only (no IP SAN)
    async with grpc.aio.secure_channel(
        sidecar.inbound,
        credentials(pki, web_cert, web_key),
        options=[("grpc.ssl_target_name_override", "localhost")],
    ) as channel:
        reply = await EchoStub(channel).Unary(EchoRequest(message="after"), timeout=5)
    assert reply.server == "echo"


@pytest.mark.parametrize("plane", PLANES)
@pytest.mark.parametrize(
    "tls_change", [{"require_client_cert": False}, {"client_ca": None}, None], ids=str
)
def test_authorization_without_verified_client_certificates_is_a_config_error(
    plane: str, tls_change: dict[str, Any] | None, tmp_path: Path
) -> None:
    skip_without_plane(plane)
    pki = make_workload_pki(str(tmp_path))
    inbound: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "app": "127.0.0.1:1",
        "authorization": {"allowed_ids": [WEB]},
    }
    if tls_change is not None:
        tls = {"cert": pki.server_cert, "key": pki.server_key, "client_ca": pki.ca_path}
        inbound["tls"] = {**tls, "require_client_cert": True, **tls_change}
    config = with_defaults({"inbound": inbound, "data_plane": plane})
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MESHKIT_")}
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode != 0
    assert "inbound.authorization: needs verified client certificates" in result.stderr
    assert "listening" not in result.stdout
