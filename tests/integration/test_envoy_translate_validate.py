"""The translation against a real Envoy: ``--mode validate`` on rich and minimal configs, and
real gRPC calls through Envoy running the static bootstrap (auth answered as the Python plane
answers, health routing, deadlines, exact and prefix routes, no route)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.envoy import INSTALL_HINT, find_envoy
from health.aio import HealthService as AioHealthService
from sidecar.config import SidecarConfig, parse_config
from sidecar.envoy.translate import (
    RUNTIME,
    Endpoint,
    PlaneInputs,
    Resources,
    static_bootstrap,
    translate,
    unsupported,
)
from sidecar.inbound import authenticator
from tests.support.calls import assert_deadline_carried
from tests.support.certs import Pki, make_pki
from tests.support.echo import EchoRequest, EchoServer, EchoStub, start_echo_server
from tests.support.waiting import wait_until

ENVOY = find_envoy()
pytestmark = pytest.mark.skipif(ENVOY is None, reason=INSTALL_HINT)

START_TIMEOUT = 30.0
TOKENS = ("tok-alpha", "tok-beta")


def write_bootstrap(bootstrap: dict[str, Any], directory: Path) -> Path:
    path = directory / "envoy.json"
    # the dump holds private keys and tokens: owner-only, like the real bootstrap
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(bootstrap, f, indent=1)
    return path


def validate(bootstrap: dict[str, Any], directory: Path) -> None:
    assert ENVOY is not None
    path = write_bootstrap(bootstrap, directory)
    result = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(path), "--disable-hot-restart", "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # On failure Envoy echoes the config; its first line says what is wrong.
    first_line = (result.stderr or result.stdout).strip().splitlines()[:1]
    assert result.returncode == 0, first_line
    assert "OK" in result.stdout


def files_of(config: SidecarConfig) -> dict[str, bytes]:
    paths: list[str | None] = []
    if config.inbound is not None and config.inbound.tls is not None:
        tls = config.inbound.tls
        paths += [tls.cert, tls.key, tls.client_ca]
    for cluster in config.clusters.values():
        if cluster.tls is not None:
            paths += [cluster.tls.ca, cluster.tls.cert, cluster.tls.key]
    return {p: Path(p).read_bytes() for p in paths if p is not None}


# --------------------------------------------------------------------------- validate


def rich_config(pki: Pki, tokens_file: Path) -> SidecarConfig:
    return parse_config(
        {
            "outbound": {
                "listen": "127.0.0.1:0",
                "max_concurrent_streams": 500,
                "keepalive": {"time": "1m", "timeout": "10s"},
                "routes": [
                    {"prefix": "/pkg.Svc/Get", "cluster": "first", "timeout": "2s"},
                    {"prefix": "/pkg.Svc/", "cluster": "weighted"},
                    {"prefix": "/", "cluster": "public"},
                ],
            },
            "inbound": {
                "listen": "127.0.0.1:0",
                "app": "127.0.0.1:1",
                "tls": {"cert": pki.server_cert, "key": pki.server_key, "client_ca": pki.ca},
                "auth": {"tokens_file": str(tokens_file)},
            },
            "clusters": {
                "first": {
                    "target": "dns:///first.example:50051",
                    "lb_policy": "pick_first",
                    "timeout": "5s",
                    "health_check": {"service": "pkg.Svc"},
                    "outlier_detection": {"failure_codes": ["UNAVAILABLE", "INTERNAL"]},
                    "retry": {
                        "max_attempts": 5,
                        "retryable_status_codes": [
                            "UNAVAILABLE",
                            "RESOURCE_EXHAUSTED",
                            "CANCELLED",
                            "DEADLINE_EXCEEDED",
                            "INTERNAL",
                        ],
                    },
                    "tls": {
                        "ca": pki.ca,
                        "cert": pki.client_cert,
                        "key": pki.client_key,
                        "server_name": "first.internal",
                    },
                },
                "weighted": {
                    "target": "dns+srv:///_grpc._tcp.weighted.example",
                    "lb_policy": "weighted_round_robin",
                    "outlier_detection": {"failure_codes": ["UNAVAILABLE"]},
                    "keepalive": {"time": "30s", "timeout": "5s", "permit_without_calls": True},
                },
                "public": {"target": "dns:///api.example:443", "tls": {}},
            },
            "telemetry": {
                "tracing": {"otlp_endpoint": "https://otel.example:4317", "sample_ratio": 0.2}
            },
        },
        {},
    )


def rich_resources(directory: Path) -> Resources:
    pki = make_pki(str(directory))
    tokens_file = directory / "tokens"
    tokens_file.write_text("\n".join(TOKENS))
    config = rich_config(pki, tokens_file)
    # Envoy 1.40 has no pick_first policy: the one setting it cannot express here
    assert [e.path for e in unsupported(config)] == ["clusters.first.lb_policy"]
    return translate(
        config,
        PlaneInputs(
            endpoints={
                "first": [Endpoint("10.0.0.1", 50051), Endpoint("::1", 50051)],
                "weighted": [Endpoint("10.0.0.2", 50051, 5), Endpoint("10.0.0.3", 50051, 1)],
                "public": [Endpoint("/run/api.sock", 0)],
            },
            health_address=("127.0.0.1", 15020),
            files=files_of(config),
            tokens=TOKENS,
        ),
    )


def test_a_config_with_every_feature_validates(tmp_path: Path) -> None:
    validate(static_bootstrap(rich_resources(tmp_path)), tmp_path)


def test_the_resources_as_served_over_ads_validate(tmp_path: Path) -> None:
    """Listeners and clusters as ADS serves them (RDS, EDS and SDS over the ADS stream)."""
    resources = rich_resources(tmp_path)

    def untyped(resource: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in resource.items() if k != "@type"}

    xds = {
        "name": "meshkit_xds",
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3"
                ".HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": "meshkit_xds",
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": "/xds.sock"}}}}]}
            ],
        },
    }
    bootstrap = {
        "node": {"id": "meshkit", "cluster": "meshkit"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "meshkit_xds"}}],
            }
        },
        "static_resources": {
            "listeners": [untyped(r) for r in resources.listeners.values()],
            "clusters": [untyped(r) for r in resources.clusters.values()] + [xds],
        },
    }
    validate(bootstrap, tmp_path)


def test_long_tokens_need_the_runtime_program_size_limit(tmp_path: Path) -> None:
    """Each token route spells its token out in a regex: past ~80 bytes Envoy's default RE2
    program-size limit refuses it, which ``RUNTIME`` lifts."""
    config = parse_config(
        {"inbound": {"app": "127.0.0.1:1", "auth": {"tokens_file": "/t"}}}, {}, check_files=False
    )
    bootstrap = static_bootstrap(translate(config, PlaneInputs(tokens=["x" * 4000])))
    assert bootstrap["layered_runtime"]["layers"][0]["static_layer"] == dict(RUNTIME)
    validate(bootstrap, tmp_path)
    del bootstrap["layered_runtime"]
    path = write_bootstrap(bootstrap, tmp_path)
    assert ENVOY is not None
    result = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "program size" in result.stdout + result.stderr


def test_a_minimal_config_validates(tmp_path: Path) -> None:
    config = parse_config(
        {
            "outbound": {"routes": [{"prefix": "/", "cluster": "backend"}]},
            "clusters": {"backend": {"target": "static:///127.0.0.1:10000"}},
        },
        {},
    )
    assert unsupported(config) == []
    validate(static_bootstrap(translate(config, PlaneInputs())), tmp_path)


@pytest.mark.parametrize("log_path", ["-", "access.log"])
def test_authorization_and_the_access_log_validate(tmp_path: Path, log_path: str) -> None:
    pki = make_pki(str(tmp_path))
    config = parse_config(
        {
            "outbound": {"routes": [{"prefix": "/", "cluster": "backend"}]},
            "clusters": {"backend": {"target": "static:///127.0.0.1:10000"}},
            "inbound": {
                "listen": "127.0.0.1:0",
                "app": "127.0.0.1:1",
                "tls": {"cert": pki.server_cert, "key": pki.server_key, "client_ca": pki.ca},
                "authorization": {
                    "allowed_ids": ["spiffe://cluster.local/ns/prod/sa/web"],
                    "allowed_san_patterns": ["spiffe://cluster.local/ns/ops/*/**"],
                },
            },
            "telemetry": {
                "access_log": {
                    "enabled": True,
                    "path": log_path if log_path == "-" else str(tmp_path / log_path),
                }
            },
        },
        {},
    )
    resources = translate(
        config,
        PlaneInputs(health_address=("127.0.0.1", 15020), files=files_of(config)),
    )
    validate(static_bootstrap(resources), tmp_path)


# --------------------------------------------------------------------------- a running Envoy


@dataclass
class RunningEnvoy:
    process: asyncio.subprocess.Process
    admin: str
    ports: dict[str, int]

    def address(self, listener: str) -> str:
        return f"127.0.0.1:{self.ports[listener]}"


def _bound_ports(admin: str, names: set[str]) -> dict[str, int] | None:
    with urllib.request.urlopen(f"http://{admin}/listeners?format=json", timeout=2) as resp:
        doc = json.loads(resp.read())
    ports = {
        s["name"]: int(s["local_address"]["socket_address"]["port_value"])
        for s in doc.get("listener_statuses", [])
        if s.get("local_address")
    }
    if set(ports) >= names and all(ports[n] for n in names):
        return ports
    return None


@dataclass
class EnvoyRunner:
    """Starts Envoy processes on static bootstraps; the fixture stops them all."""

    directory: Path
    started: list[asyncio.subprocess.Process] = field(default_factory=list)

    async def start(self, resources: Resources) -> RunningEnvoy:
        """Start Envoy on the static bootstrap; return once every listener is bound."""
        assert ENVOY is not None
        config = write_bootstrap(static_bootstrap(resources), self.directory)
        admin_path = self.directory / "admin-address"
        log = self.directory / "envoy.log"
        process = await asyncio.create_subprocess_exec(
            ENVOY,
            *("-c", str(config), "--admin-address-path", str(admin_path)),
            *("--disable-hot-restart", "--concurrency", "1", "-l", "warn"),
            *("--log-path", str(log)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self.started.append(process)
        names = set(resources.listeners)
        found: dict[str, Any] = {}

        async def bound() -> bool:
            if process.returncode is not None:
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise AssertionError(f"envoy exited ({process.returncode}): {tail}")
            admin = admin_path.read_text().strip() if admin_path.exists() else ""
            if not admin:
                return False
            try:
                ports = await asyncio.to_thread(_bound_ports, admin, names)
            except OSError:
                return False
            if ports is None:
                return False
            found.update(admin=admin, ports=ports)
            return True

        await wait_until(bound, timeout=START_TIMEOUT, interval=0.05, message="envoy listening")
        return RunningEnvoy(process, found["admin"], found["ports"])

    async def stop_all(self) -> None:
        for process in self.started:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 10)
                except asyncio.TimeoutError:
                    process.kill()
                    await asyncio.wait_for(process.wait(), 10)


@pytest.fixture
async def envoy(tmp_path: Path) -> AsyncIterator[EnvoyRunner]:
    runner = EnvoyRunner(tmp_path)
    try:
        yield runner
    finally:
        await runner.stop_all()


@pytest.fixture
async def app() -> AsyncIterator[EchoServer]:
    server = await start_echo_server("app")
    try:
        yield server
    finally:
        await server.stop(None)


@dataclass
class HealthServer:
    service: AioHealthService
    server: grpc.aio.Server
    port: int


@pytest.fixture
async def meshkit_health() -> AsyncIterator[HealthServer]:
    """A grpc.health.v1 server standing for meshkit's own (what inbound health calls reach)."""
    service = AioHealthService()
    server = grpc.aio.server()
    service.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield HealthServer(service, server, port)
    finally:
        await server.stop(None)


def inbound_config(app: EchoServer, pki: Pki, tokens_file: Path, **auth: str) -> SidecarConfig:
    return parse_config(
        {
            "inbound": {
                "listen": "127.0.0.1:0",
                "app": app.address,
                "tls": {"cert": pki.server_cert, "key": pki.server_key, "client_ca": pki.ca},
                "auth": {"tokens_file": str(tokens_file), **auth},
            }
        },
        {},
    )


def mtls_channel(pki: Pki, address: str, *, client_cert: bool = True) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Pki.read(pki.ca),
        private_key=Pki.read(pki.client_key) if client_cert else None,
        certificate_chain=Pki.read(pki.client_cert) if client_cert else None,
    )
    return grpc.aio.secure_channel(address, credentials)


async def code_of(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def outcome(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str | None]:
    """A call's status code and details (``None`` details when it succeeded)."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, None


# Tokens as a file may hold them: regex metacharacters (taken literally) and a long one.
AUTH_TOKENS = ("tok-alpha", r"a.b*c(d)|e\E[f]+?{2}$^", "L" * 300)


def presented(scheme: str) -> list[str]:
    """Values of the auth header worth comparing for ``scheme``: good ones in several
    spellings, bare tokens, other schemes, no token, near misses, regex-looking tokens."""
    good, meta, long = AUTH_TOKENS
    s = scheme
    return [
        *(f"{s} {t}" for t in AUTH_TOKENS),
        f"{s.lower()} {good}",
        f"{s.upper()} {good}",
        f"  {s}   {good}  ",
        good,
        f"{s}{good}",
        f"Basic {good}",
        f"{s}-x {good}",
        s,
        f"{s} ",
        f"{s}  ",
        "",
        f"{s} nope",
        f"{s} {good}x",
        f"{s} x{good}",
        f"{s} {good} {good}",
        f"{s} {good.upper()}",
        f"{s} {meta[:-1]}",
        f"{s} {meta.replace('.', 'X')}",
        f"{s} {meta.replace('*', '')}",
        f"{s} .*",
        f"{s} {long[1:]}",
    ]


@pytest.mark.parametrize(
    "auth",
    [
        {},
        {"scheme": "bearer"},
        {"header": "x-token", "scheme": "Token"},
        {"header": "authorization", "scheme": "Api-Key.v2"},
        {"header": "x-api-key", "scheme": ""},
    ],
    ids=["bearer", "lowercase-scheme", "custom-header-and-scheme", "odd-scheme", "no-scheme"],
)
async def test_inbound_auth_answers_as_the_python_plane(
    tmp_path: Path,
    envoy: EnvoyRunner,
    app: EchoServer,
    meshkit_health: HealthServer,
    auth: dict[str, str],
) -> None:
    """Every value (and no value) of the auth header gets from Envoy what the Python plane's
    check answers: forwarded, or UNAUTHENTICATED with the same details."""
    pki = make_pki(str(tmp_path))
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("\n".join(("# tokens", *AUTH_TOKENS)) + "\n")
    config = inbound_config(app, pki, tokens_file, **auth)
    assert config.inbound is not None and config.inbound.auth is not None
    header, scheme = config.inbound.auth.header, config.inbound.auth.scheme
    python_plane = authenticator(config.inbound.auth)
    resources = translate(
        config,
        PlaneInputs(
            health_address=("127.0.0.1", meshkit_health.port),
            files=files_of(config),
            tokens=AUTH_TOKENS,
        ),
    )
    running = await envoy.start(resources)
    cases: list[tuple[tuple[str, str], ...]] = [()] + [((header, v),) for v in presented(scheme)]
    cases.append((("x-other", f"{scheme} {AUTH_TOKENS[0]}"),))  # the token in another header
    accepted = 0
    async with mtls_channel(pki, running.address("inbound")) as channel:
        stub = EchoStub(channel)
        for metadata in cases:
            details = python_plane(metadata)
            expected: tuple[grpc.StatusCode, str | None] = (grpc.StatusCode.OK, None)
            if details is not None:
                expected = (grpc.StatusCode.UNAUTHENTICATED, details)
            got = await outcome(stub.Unary(EchoRequest(message="m"), metadata=metadata, timeout=10))
            assert got == expected, metadata
            accepted += details is None
        assert accepted >= len(AUTH_TOKENS) + 1  # all tokens, and a respelling of the scheme
        assert app.servicer.calls["Unary"] == accepted  # refused calls never reached the app

        # The app still sees the credential; health calls need none and reach meshkit.
        good = f"{scheme} {AUTH_TOKENS[0]}".strip()
        reply = await stub.Unary(EchoRequest(message="hi"), metadata=((header, good),), timeout=10)
        assert f"{header}={good}" in reply.metadata
        health = health_pb2_grpc.HealthStub(channel)
        check = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert check.status == health_pb2.HealthCheckResponse.SERVING


async def test_inbound_auth_over_mtls_and_health_from_meshkit(
    tmp_path: Path,
    envoy: EnvoyRunner,
    app: EchoServer,
    meshkit_health: HealthServer,
) -> None:
    pki = make_pki(str(tmp_path))
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("\n".join(TOKENS))
    config = inbound_config(app, pki, tokens_file)
    resources = translate(
        config,
        PlaneInputs(
            health_address=("127.0.0.1", meshkit_health.port),
            files=files_of(config),
            tokens=TOKENS,
        ),
    )
    running = await envoy.start(resources)
    good = (("authorization", "Bearer tok-alpha"),)
    async with mtls_channel(pki, running.address("inbound")) as channel:
        stub = EchoStub(channel)
        reply = await stub.Unary(EchoRequest(message="hi"), metadata=good, timeout=10)
        assert (reply.message, reply.server) == ("hi", "app")
        # the peer is appended to x-forwarded-for (for a loopback peer Envoy writes its own
        # address, so only its presence is checked here)
        assert any(m.startswith("x-forwarded-for=") for m in reply.metadata), reply.metadata
        code, details = await outcome(
            stub.Unary(EchoRequest(), metadata=(("authorization", "tok-alpha"),), timeout=10)
        )
        assert code is grpc.StatusCode.UNAUTHENTICATED
        assert details == "missing bearer token: expected metadata 'authorization: Bearer <token>'"
        assert app.servicer.calls["Unary"] == 1

        # Health calls carry no token and are answered by meshkit's server (the app has none).
        health = health_pb2_grpc.HealthStub(channel)
        check = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        await meshkit_health.service.set("", False)
        check = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING

    # mTLS: a client without a certificate does not get through at all.
    async with mtls_channel(pki, running.address("inbound"), client_cert=False) as channel:
        call = EchoStub(channel).Unary(EchoRequest(), metadata=good, timeout=10)
        assert await code_of(call) is grpc.StatusCode.UNAVAILABLE
    assert app.servicer.calls["Unary"] == 1


@pytest.fixture
async def two_backends() -> AsyncIterator[tuple[EchoServer, EchoServer]]:
    exact = await start_echo_server("exact")
    service = await start_echo_server("service")
    try:
        yield exact, service
    finally:
        await exact.stop(None)
        await service.stop(None)


async def test_outbound_routes_and_default_deadline(
    envoy: EnvoyRunner, two_backends: tuple[EchoServer, EchoServer]
) -> None:
    exact, service = two_backends
    config = parse_config(
        {
            "outbound": {
                "listen": "127.0.0.1:0",
                "routes": [
                    {"prefix": "/meshkit.test.Echo/Unary", "cluster": "exact"},
                    {"prefix": "/meshkit.test.Echo/", "cluster": "service"},
                ],
            },
            "clusters": {
                # the cluster's default deadline; the route names none
                "exact": {"target": f"static:///{exact.address}", "timeout": "1s"},
                "service": {"target": f"static:///{service.address}"},
            },
        },
        {},
    )
    resources = translate(
        config,
        PlaneInputs(
            endpoints={
                "exact": [Endpoint("127.0.0.1", exact.port)],
                "service": [Endpoint("127.0.0.1", service.port)],
            }
        ),
    )
    running = await envoy.start(resources)
    async with grpc.aio.insecure_channel(running.address("outbound")) as channel:
        stub = EchoStub(channel)
        # exact method route vs the service's prefix route
        assert (await stub.Unary(EchoRequest(message="u"), timeout=10)).server == "exact"
        streamed = [r.server async for r in stub.ServerStream(EchoRequest(count=2), timeout=10)]
        assert streamed == ["service", "service"]

        # the caller's deadline is kept (not capped by the 1 s default)...
        await assert_deadline_carried(stub)
        slow = await stub.Unary(EchoRequest(message="slow", delay_s=1.5), timeout=5)
        assert slow.message == "slow"

        # ...and a call without one gets the default, which the server sees too
        reply = await stub.Unary(EchoRequest(message="d"))
        assert 0.5 < reply.time_remaining <= 1.0
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.Unary(EchoRequest(message="too slow", delay_s=5))
        assert failure.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 3.0

        # no route: UNIMPLEMENTED naming the path
        method: Callable[..., Any] = channel.unary_unary("/other.Svc/Method")
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await method(b"", timeout=10)
        assert failure.value.code() is grpc.StatusCode.UNIMPLEMENTED
        assert "/other.Svc/Method" in (failure.value.details() or "")


async def test_inbound_without_tokens_refuses_every_call_but_health(
    tmp_path: Path, envoy: EnvoyRunner, app: EchoServer, meshkit_health: HealthServer
) -> None:
    pki = make_pki(str(tmp_path))
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("# emptied\n")
    config = inbound_config(app, pki, tokens_file)
    resources = translate(
        config,
        PlaneInputs(
            health_address=("127.0.0.1", meshkit_health.port),
            files=files_of(config),
            tokens=(),
        ),
    )
    running = await envoy.start(resources)
    async with mtls_channel(pki, running.address("inbound")) as channel:
        for value in ("Bearer ", "Bearer tok-alpha", ""):
            call = EchoStub(channel).Unary(
                EchoRequest(), metadata=(("authorization", value),), timeout=10
            )
            assert await code_of(call) is grpc.StatusCode.UNAUTHENTICATED, value
        health = health_pb2_grpc.HealthStub(channel)
        check = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
    assert app.servicer.calls["Unary"] == 0


async def test_retries_and_ejection_keep_calls_away_from_a_failing_endpoint(
    envoy: EnvoyRunner, two_backends: tuple[EchoServer, EchoServer]
) -> None:
    bad, good = two_backends
    bad.servicer.fail_with = grpc.StatusCode.UNAVAILABLE
    config = parse_config(
        {
            "outbound": {
                "listen": "127.0.0.1:0",
                "routes": [{"prefix": "/", "cluster": "echo"}],
            },
            "clusters": {
                "echo": {
                    "target": f"static:///{bad.address},{good.address}",
                    "retry": {"max_attempts": 3, "retryable_status_codes": ["UNAVAILABLE"]},
                    "outlier_detection": {
                        "consecutive_failures": 2,
                        "failure_codes": ["UNAVAILABLE"],
                    },
                }
            },
        },
        {},
    )
    endpoints = [Endpoint("127.0.0.1", bad.port), Endpoint("127.0.0.1", good.port)]
    resources = translate(config, PlaneInputs(endpoints={"echo": endpoints}))
    running = await envoy.start(resources)
    async with grpc.aio.insecure_channel(running.address("outbound")) as channel:
        stub = EchoStub(channel)
        for i in range(10):
            reply = await stub.Unary(EchoRequest(message=str(i)), timeout=10)
            assert reply.server == "service"  # every failure was retried on the good one
        failed = bad.servicer.calls["Unary"]
        assert 1 <= failed <= 3
        for i in range(10):
            await stub.Unary(EchoRequest(message=str(i)), timeout=10)
        assert bad.servicer.calls["Unary"] == failed  # ejected: no more calls reach it
