"""Traces from the real ``sidecar run`` process on both data planes, into a real OTLP receiver.

A caller's traced call gets the sidecar's SERVER span (child of the caller's span) and a
CLIENT span per upstream attempt under it (retries visible), the upstream seeing the attempt
as its parent; OTLP/gRPC to an ``http://`` URL is plaintext (an in-cluster collector), OTLP/HTTP
works as well, and the standard ``OTEL_*`` variables configure a sidecar whose file is silent.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import yaml

from tests.e2e.conftest import Sidecars, outbound_config, static
from tests.support.echo import EchoRequest, EchoServer, EchoServicer, EchoStub, echo_pb2_grpc
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan, start_otlp_receiver

SERVER, CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind
ERROR = 2  # Status.StatusCode
# Envoy flushes spans every 5 s, the Python plane's batch processor as often
SPAN_WAIT = 15.0


@pytest_asyncio.fixture
async def otlp() -> AsyncIterator[OtlpReceiver]:
    receiver = await start_otlp_receiver()
    yield receiver
    await receiver.stop()


class FlakyEcho(EchoServicer):
    """Answers UNAVAILABLE to the first attempt of every message, then echoes."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.seen: collections.Counter[str] = collections.Counter()

    async def Unary(self, request, context):  # type: ignore[no-untyped-def]
        self.seen[request.message] += 1
        if self.seen[request.message] == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return await super().Unary(request, context)  # type: ignore[no-untyped-call]


@pytest_asyncio.fixture
async def flaky() -> AsyncIterator[EchoServer]:
    server = grpc.aio.server()
    servicer = FlakyEcho("flaky")
    echo_pb2_grpc.add_EchoServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield EchoServer(server, port, servicer)
    await server.stop(None)


def _traceparent_of(metadata: Any) -> tuple[str, str]:
    """(trace id, parent span id) of the ``traceparent`` the upstream received."""
    found = [m.partition("=")[2] for m in metadata if m.startswith("traceparent=")]
    assert len(found) == 1, metadata
    _, trace_id, parent, _ = found[0].split("-")
    return trace_id, parent


async def _traced_call(address: str, message: str) -> tuple[str, str, Any]:
    trace_id, caller_span = os.urandom(16).hex(), os.urandom(8).hex()
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await EchoStub(channel).Unary(
            EchoRequest(message=message),
            metadata=(("traceparent", f"00-{trace_id}-{caller_span}-01"),),
            timeout=10,
        )
    return trace_id, caller_span, reply


async def _spans_of(
    otlp: OtlpReceiver, trace_id: str, clients: int
) -> tuple[ReceivedSpan, list[ReceivedSpan]]:
    """The trace's SERVER span and, once all ``clients`` arrived, its CLIENT spans."""
    server = await otlp.wait_for_span(
        lambda s: s.trace_id == trace_id and s.kind == SERVER, timeout=SPAN_WAIT
    )

    def attempts() -> list[ReceivedSpan]:
        return [s for s in otlp.spans if s.trace_id == trace_id and s.kind == CLIENT]

    await otlp.wait_for_span(lambda s: len(attempts()) >= clients, timeout=SPAN_WAIT)
    found = sorted(attempts(), key=lambda s: s.span.start_time_unix_nano)
    return server, found


async def test_server_span_and_attempt_span_over_an_http_url(
    sidecars: Sidecars, echo: EchoServer, otlp: OtlpReceiver
) -> None:
    config = outbound_config(static(echo))
    # http:// with an IP: plaintext by the scheme, as for a collector Service in the cluster
    config["telemetry"] = {
        "tracing": {"otlp_endpoint": f"http://{otlp.address}", "sample_ratio": 1.0}
    }
    sidecar = await sidecars.start(config)
    trace_id, caller_span, reply = await _traced_call(sidecar.outbound, "traced")
    upstream_trace, upstream_parent = _traceparent_of(reply.metadata)
    assert upstream_trace == trace_id

    server, (attempt,) = await _spans_of(otlp, trace_id, 1)
    print(f"\n[{sidecars.plane}] server {server.attributes}\n  client {attempt.attributes}")
    assert server.service_name == "meshkit-sidecar"
    assert server.parent_span_id == caller_span
    assert attempt.parent_span_id == server.span_id
    assert upstream_parent == attempt.span_id  # the upstream's parent is the attempt
    assert server.status_code != ERROR and attempt.status_code != ERROR
    # the RPC conventions' attributes (Envoy's tags are strings, hence str() on both planes)
    assert server.attributes["rpc.system"] == "grpc"
    assert server.attributes["rpc.grpc.status_code"] == "0"
    assert server.attributes["network.peer.address"] == "127.0.0.1"
    assert int(server.attributes["network.peer.port"]) > 0


async def test_server_span_status_follows_the_rpc_conventions(
    sidecars: Sidecars, echo: EchoServer, otlp: OtlpReceiver
) -> None:
    config = outbound_config(static(echo))
    config["telemetry"] = {"tracing": {"otlp_endpoint": otlp.address, "sample_ratio": 1.0}}
    sidecar = await sidecars.start(config)
    for code, server_fault in (
        (grpc.StatusCode.NOT_FOUND, False),
        (grpc.StatusCode.INTERNAL, True),
    ):
        trace_id, caller_span = os.urandom(16).hex(), os.urandom(8).hex()
        async with grpc.aio.insecure_channel(sidecar.outbound) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await EchoStub(channel).Unary(
                    EchoRequest(message=f"no luck ({code.name})", fail_code=code.value[0]),
                    metadata=(("traceparent", f"00-{trace_id}-{caller_span}-01"),),
                    timeout=10,
                )
        assert (err.value.code(), err.value.details()) == (code, f"no luck ({code.name})")
        server, (attempt,) = await _spans_of(otlp, trace_id, 1)
        # the upstream's answer is an error of the attempt (a client span) in any case, and of
        # the sidecar's server span only when it is a server fault
        assert attempt.status_code == ERROR
        assert (server.status_code == ERROR) is server_fault
        assert server.attributes["rpc.grpc.status_code"] == str(code.value[0])
        if server_fault and sidecars.plane == "python":
            assert server.span.status.message == f"no luck ({code.name})"


async def test_retries_are_sibling_attempt_spans(
    sidecars: Sidecars, flaky: EchoServer, otlp: OtlpReceiver
) -> None:
    retry = {
        "max_attempts": 3,
        "retryable_status_codes": ["UNAVAILABLE"],
        "initial_backoff": "10ms",
        "max_backoff": "50ms",
    }
    config = outbound_config(static(flaky), retry=retry)
    config["telemetry"] = {"tracing": {"otlp_endpoint": otlp.address, "sample_ratio": 1.0}}
    sidecar = await sidecars.start(config)
    trace_id, _, reply = await _traced_call(sidecar.outbound, "retried")
    assert reply.message == "retried"
    _, upstream_parent = _traceparent_of(reply.metadata)

    server, attempts = await _spans_of(otlp, trace_id, 2)
    print(f"\n[{sidecars.plane}] attempts: {[(a.status_code, a.attributes) for a in attempts]}")
    assert len(attempts) == 2
    assert all(a.parent_span_id == server.span_id for a in attempts)
    first, second = attempts
    assert first.status_code == ERROR  # UNAVAILABLE: a failed attempt, visible as such
    assert second.status_code != ERROR and server.status_code != ERROR
    assert upstream_parent == second.span_id  # the call that answered was the second attempt


async def test_otlp_over_http(sidecars: Sidecars, echo: EchoServer, otlp: OtlpReceiver) -> None:
    config = outbound_config(static(echo))
    config["telemetry"] = {
        "tracing": {
            "otlp_endpoint": otlp.http_url,
            "protocol": "http/protobuf",
            "headers": {"x-tenant": "team-a"},
            "sample_ratio": 1.0,
        }
    }
    sidecar = await sidecars.start(config)
    trace_id, caller_span, _ = await _traced_call(sidecar.outbound, "over-http")
    server = await otlp.wait_for_span(
        lambda s: s.trace_id == trace_id and s.kind == SERVER, timeout=SPAN_WAIT
    )
    assert server.transport == "http" and server.parent_span_id == caller_span
    assert any(h.get("x-tenant") == "team-a" for h in otlp.headers)


async def test_otel_variables_configure_a_silent_file(
    sidecars: Sidecars, echo: EchoServer, otlp: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the sidecar process inherits the test's environment
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://{otlp.address}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=from-env")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "checkout-sidecar")
    sidecar = await sidecars.start(outbound_config(static(echo)))
    shown = await sidecar.get_json("/config")
    tracing = shown["telemetry"]["tracing"]
    assert tracing["otlp_endpoint"] == f"http://{otlp.address}"
    assert tracing["headers"] == "<redacted>" and tracing["sample_ratio"] == 1.0

    trace_id, caller_span, _ = await _traced_call(sidecar.outbound, "from-env")
    server = await otlp.wait_for_span(
        lambda s: s.trace_id == trace_id and s.kind == SERVER, timeout=SPAN_WAIT
    )
    assert server.service_name == "checkout-sidecar"
    assert server.parent_span_id == caller_span
    assert any(h.get("x-tenant") == "from-env" for h in otlp.headers)


def test_validate_prints_the_effective_otel_settings(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(outbound_config("static:///127.0.0.1:1")))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESHKIT_", "OTEL_"))}
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT="http://otel-collector.observability:4318",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer%20hunter2",
        OTEL_TRACES_SAMPLER="traceidratio",
        OTEL_TRACES_SAMPLER_ARG="0.25",
    )
    command = [sys.executable, "-m", "sidecar", "validate", "--config", str(path)]
    result = subprocess.run(
        [*command, "--print-config"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    dumped = yaml.safe_load(result.stdout[result.stdout.index("admin:") :])
    tracing = dumped["telemetry"]["tracing"]
    assert tracing == {
        "otlp_endpoint": "http://otel-collector.observability:4318/v1/traces",
        "protocol": "http/protobuf",
        "headers": "<redacted>",
        "sample_ratio": 0.25,
        "service_name": "meshkit-sidecar",
    }
    assert "hunter2" not in result.stdout + result.stderr

    env["OTEL_TRACES_SAMPLER_ARG"] = "lots"
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode != 0
    assert "telemetry.tracing.sample_ratio: $OTEL_TRACES_SAMPLER_ARG" in result.stderr


async def test_otel_metrics_export_the_rpc_metrics_over_otlp(
    sidecars: Sidecars, echo: EchoServer, otlp: OtlpReceiver
) -> None:
    config = outbound_config(static(echo))
    config["telemetry"] = {
        "otel_metrics": {"otlp_endpoint": f"http://{otlp.address}", "interval": "1s"},
        "tracing": {"service_name": "metrics-sidecar"},
    }
    sidecar = await sidecars.start(config)
    async with grpc.aio.insecure_channel(sidecar.outbound) as channel:
        for i in range(3):
            await EchoStub(channel).Unary(EchoRequest(message=f"m{i}"), timeout=10)

    def three_calls(metric: Any) -> bool:
        if metric.name != "rpc.server.call.duration" or metric.service_name != "metrics-sidecar":
            return False
        points = metric.metric.histogram.data_points
        return sum(p.count for p in points) >= 3

    found = await otlp.wait_for_metric(three_calls, timeout=SPAN_WAIT)
    assert found.unit == "s"
    attributes = {
        kv.key: kv.value.string_value
        for p in found.metric.histogram.data_points
        for kv in p.attributes
    }
    assert attributes.get("rpc.system.name") == "grpc"
    assert attributes.get("rpc.method") == "meshkit.test.Echo/Unary"
    assert attributes.get("meshkit.direction") == "outbound"
    assert attributes.get("meshkit.cluster") == "backend"
    client = await otlp.wait_for_metric(
        lambda m: m.name == "rpc.client.call.duration", timeout=SPAN_WAIT
    )
    assert client.service_name == "metrics-sidecar"
