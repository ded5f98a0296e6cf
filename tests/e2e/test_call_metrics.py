"""The sidecar's call metrics on both data planes: the same calls give the same numbers.

Real ``sidecar run`` processes, a real echo app, calls of the four RPC kinds outbound and
inbound; ``/metrics`` read back and checked against the counts of what was sent: started and
handled calls per direction and cluster on the server side (the listener) and the client side
(the upstream), messages both ways, a retry per cluster, and ``promtool check metrics``.
"""

from __future__ import annotations

import asyncio
import collections
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping

import grpc
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Sidecar, Sidecars, outbound_config, static
from tests.support.echo import (
    EchoRequest,
    EchoServer,
    EchoServicer,
    EchoStub,
    aiter_requests,
    echo_pb2_grpc,
)
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e]

SERVICE = "meshkit.test.Echo"
#: (direction, cluster, method) -> (calls, requests, responses)
Expected = Mapping[tuple[str, str, str], tuple[int, int, int]]
Samples = dict[tuple[str, ...], float]


def call_samples(text: str) -> Samples:
    """The exposition's samples of :data:`SERVICE`'s calls: (sample name, direction, cluster,
    method[, grpc_code]) -> value, summed over ``grpc_type`` (how a method's kind is known
    is not what these tests are about). Latency histograms are left out."""
    found: Samples = collections.defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("grpc_service") != SERVICE or not sample.name.endswith("_total"):
                continue  # other services, latency histograms, ``_created`` timestamps
            key: tuple[str, ...] = (
                sample.name,
                labels["direction"],
                labels["cluster"],
                labels["grpc_method"],
            )
            if "grpc_code" in labels:
                key = (*key, labels["grpc_code"])
            found[key] += sample.value
    return dict(found)


def cluster_counter(text: str, name: str, cluster: str) -> float | None:
    """``name{cluster=...}``'s value on the page, ``None`` when absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("cluster") == cluster:
                return sample.value
    return None


def expected_samples(expected: Expected, code: str = "OK") -> Samples:
    """The samples :func:`call_samples` must find after the ``expected`` calls."""
    samples: Samples = {}
    for (direction, cluster, method), (calls, requests, responses) in expected.items():
        where = (direction, cluster, method)
        for side in ("server", "client"):
            started: tuple[str, ...] = (f"grpc_{side}_started_total", *where)
            handled: tuple[str, ...] = (f"grpc_{side}_handled_total", *where, code)
            samples[started] = samples[handled] = calls
        for name, value in (
            ("grpc_server_msg_received_total", requests),
            ("grpc_server_msg_sent_total", responses),
            ("grpc_client_msg_sent_total", requests),
            ("grpc_client_msg_received_total", responses),
        ):
            key: tuple[str, ...] = (name, *where)
            samples[key] = value
    return samples


async def metrics_page(sidecar: Sidecar, done: Callable[[str], bool]) -> str:
    """``/metrics`` once ``done(text)``: both planes count a call when it has ended, which
    the caller may see a moment before the sidecar has."""
    page = ""

    async def ready() -> bool:
        nonlocal page
        status, page = await sidecar.get("/metrics")
        return status == 200 and done(page)

    await wait_until(ready, timeout=15, message="the calls counted on /metrics")
    return page


@pytest_asyncio.fixture
async def app() -> AsyncIterator[EchoServer]:
    from tests.support.echo import start_echo_server

    server = await start_echo_server("app")
    yield server
    await server.stop(None)


async def some_calls(address: str, unary: int, bidi: int) -> None:
    """``unary`` unary calls, one server-stream (3 replies), one client-stream (4 requests)
    and one bidi call of ``bidi`` messages each way."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = EchoStub(channel)
        for i in range(unary):
            assert (await stub.Unary(EchoRequest(message=f"u{i}"), timeout=10)).message == f"u{i}"
        replies = [r async for r in stub.ServerStream(EchoRequest(message="s", count=3))]
        assert len(replies) == 3
        reply = await stub.ClientStream(aiter_requests("a", "b", "c", "d"), timeout=10)
        assert reply.message == "a,b,c,d"
        words = [f"w{i}" for i in range(bidi)]
        replies = [r async for r in stub.BidiStream(aiter_requests(*words), timeout=10)]
        assert [r.message for r in replies] == words


async def test_calls_are_counted_per_direction_and_cluster(
    sidecars: Sidecars, app: EchoServer
) -> None:
    config = outbound_config(static(app))
    config["inbound"] = {"listen": "127.0.0.1:0", "app": app.address}
    sidecar = await sidecars.start(config)
    await some_calls(sidecar.outbound, unary=2, bidi=2)
    await some_calls(sidecar.inbound, unary=1, bidi=3)

    expected: Expected = {
        ("outbound", "backend", "Unary"): (2, 2, 2),
        ("outbound", "backend", "ServerStream"): (1, 1, 3),
        ("outbound", "backend", "ClientStream"): (1, 4, 1),
        ("outbound", "backend", "BidiStream"): (1, 2, 2),
        ("inbound", "app", "Unary"): (1, 1, 1),
        ("inbound", "app", "ServerStream"): (1, 1, 3),
        ("inbound", "app", "ClientStream"): (1, 4, 1),
        ("inbound", "app", "BidiStream"): (1, 3, 3),
    }
    want = expected_samples(expected)

    def counted(text: str) -> bool:
        found = call_samples(text)
        return all(found.get(k) == v for k, v in want.items() if "_handled_" in k[0])

    page = await metrics_page(sidecar, counted)
    found = call_samples(page)
    print(f"\n[{sidecars.plane}] {sorted(found.items())}")
    assert found == want
    # no retry, no ejection: no series (Envoy leaves out the stats never written)
    assert cluster_counter(page, "meshkit_cluster_retries_total", "backend") is None
    assert cluster_counter(page, "meshkit_cluster_ejections_total", "backend") is None

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus' provides it)")
    checked = await asyncio.to_thread(
        subprocess.run,
        [promtool, "check", "metrics"],
        input=page.encode(),
        capture_output=True,
        timeout=30,
    )
    # promtool's lint warnings (e.g. on third-party names) go to stderr with exit code 3;
    # only an unparsable page fails with 1
    assert checked.returncode in (0, 3), checked.stderr.decode() + checked.stdout.decode()
    assert b"error" not in checked.stderr.lower(), checked.stderr.decode()


class FailingOnce(EchoServicer):
    """Answers UNAVAILABLE at once (trailers-only: safe to retry) to the first unary call
    with a given message, then echoes."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.seen: collections.Counter[str] = collections.Counter()

    async def Unary(self, request, context):  # type: ignore[no-untyped-def]
        self.seen[request.message] += 1
        if self.seen[request.message] == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "failing once on purpose")
        return await super().Unary(request, context)  # type: ignore[no-untyped-call]


async def test_a_retried_call_counts_one_retry(sidecars: Sidecars) -> None:
    server = grpc.aio.server()
    servicer = FailingOnce("flaky")
    echo_pb2_grpc.add_EchoServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        flaky = EchoServer(server, port, servicer)
        retry = {
            "max_attempts": 3,
            "retryable_status_codes": ["UNAVAILABLE"],
            "initial_backoff": "10ms",
            "max_backoff": "50ms",
        }
        sidecar = await sidecars.start(outbound_config(static(flaky), retry=retry))
        async with grpc.aio.insecure_channel(sidecar.outbound) as channel:
            reply = await EchoStub(channel).Unary(EchoRequest(message="again"), timeout=10)
        assert reply.message == "again"
        assert servicer.seen["again"] == 2

        def counted(text: str) -> bool:
            return cluster_counter(text, "meshkit_cluster_retries_total", "backend") == 1

        page = await metrics_page(sidecar, counted)
        found = call_samples(page)
        print(f"\n[{sidecars.plane}] {sorted(found.items())}")
        # one call on each side, with the status of its last attempt; the messages once
        assert found == expected_samples({("outbound", "backend", "Unary"): (1, 1, 1)})
    finally:
        await server.stop(None)
