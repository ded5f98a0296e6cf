"""The access log through the real sidecar on both data planes: one JSON line per call with
the same fields, for OK and failing calls, inbound and outbound; health probes not logged."""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.access_log import FIELDS
from tests.e2e.conftest import Sidecar, Sidecars, outbound_config, static
from tests.support.echo import EchoReply, EchoRequest, EchoServer, EchoStub
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

UNARY = "/meshkit.test.Echo/Unary"
PEER = re.compile(r"^127\.0\.0\.1:\d+$")
# Envoy writes its access log file in batches (every few seconds at most)
LOG_WAIT = 20.0


def config(echo: EchoServer, path: str) -> dict[str, Any]:
    return {
        **outbound_config(static(echo)),
        "inbound": {"listen": "127.0.0.1:0", "app": echo.address},
        "telemetry": {"access_log": {"enabled": True, "path": path}},
    }


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def unary(address: str, request: Any) -> tuple[grpc.StatusCode, Any]:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            return grpc.StatusCode.OK, await EchoStub(channel).Unary(request, timeout=5)
        except grpc.aio.AioRpcError as error:
            return error.code(), None


def check_line(
    line: dict[str, Any],
    *,
    direction: str,
    status: str,
    request: Any,
    reply: Any,
    upstream: str | None,
) -> None:
    assert set(line) == set(FIELDS), line
    assert line["direction"] == direction
    assert line["method"] == UNARY
    assert line["grpc_status"] == status
    assert line["upstream_host"] == upstream
    assert line["request_bytes"] == len(request.SerializeToString()) + 5
    expected = 0 if reply is None else len(reply.SerializeToString()) + 5
    assert line["response_bytes"] == expected
    assert PEER.match(line["peer"]), line
    assert isinstance(line["duration_ms"], int) and line["duration_ms"] >= 0
    started = datetime.datetime.strptime(line["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc
    )
    age = datetime.datetime.now(datetime.timezone.utc) - started
    assert datetime.timedelta(0) <= age < datetime.timedelta(minutes=2), line["time"]


async def test_one_line_per_call_with_the_same_fields_on_both_planes(
    sidecars: Sidecars, echo: EchoServer, tmp_path: Path
) -> None:
    path = tmp_path / "access.log"
    sidecar: Sidecar = await sidecars.start(config(echo, str(path)))

    ok_request = EchoRequest(message="fine", delay_s=0.2)
    code, reply = await unary(sidecar.inbound, ok_request)
    assert code is grpc.StatusCode.OK
    failing = EchoRequest(message="missing", fail_code=grpc.StatusCode.NOT_FOUND.value[0])
    assert (await unary(sidecar.inbound, failing))[0] is grpc.StatusCode.NOT_FOUND
    # kubelet-style probes are answered by the sidecar and never logged (lines are written in
    # order: the outbound call's line comes after theirs would)
    async with grpc.aio.insecure_channel(sidecar.inbound) as channel:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    out_code, out_reply = await unary(sidecar.outbound, EchoRequest(message="out"))
    assert out_code is grpc.StatusCode.OK

    await wait_until(lambda: len(read_lines(path)) >= 3, timeout=LOG_WAIT, message="3 lines")
    lines = read_lines(path)
    inbound = [line for line in lines if line["direction"] == "inbound"]
    outbound = [line for line in lines if line["direction"] == "outbound"]
    assert len(inbound) == 2 and len(outbound) == 1, lines
    ok, failed = sorted(inbound, key=lambda line: line["grpc_status"] != "OK")
    check_line(
        ok, direction="inbound", status="OK", request=ok_request, reply=reply, upstream=echo.address
    )
    assert ok["duration_ms"] >= 200  # the app took 0.2 s
    check_line(
        failed,
        direction="inbound",
        status="NOT_FOUND",
        request=failing,
        reply=None,
        upstream=echo.address,
    )
    # the Python plane's relay does not see which endpoint the balanced channel picked
    picked = echo.address if sidecars.plane == "envoy" else None
    check_line(
        outbound[0],
        direction="outbound",
        status="OK",
        request=EchoRequest(message="out"),
        reply=out_reply,
        upstream=picked,
    )
    assert echo.servicer.calls["Unary"] == 3


async def test_no_route_is_logged_without_an_upstream(
    sidecars: Sidecars, echo: EchoServer, tmp_path: Path
) -> None:
    path = tmp_path / "access.log"
    raw = config(echo, str(path))
    raw["outbound"]["routes"] = [{"prefix": "/other.Service/", "cluster": "backend"}]
    sidecar = await sidecars.start(raw)
    request = EchoRequest(message="nowhere")
    code, _ = await unary(sidecar.outbound, request)
    assert code is grpc.StatusCode.UNIMPLEMENTED
    await wait_until(lambda: len(read_lines(path)) >= 1, timeout=LOG_WAIT, message="a line")
    (line,) = read_lines(path)
    assert (line["direction"], line["method"], line["grpc_status"]) == (
        "outbound",
        UNARY,
        "UNIMPLEMENTED",
    )
    assert line["upstream_host"] is None and line["response_bytes"] == 0


async def test_stdout_access_log(sidecars: Sidecars, echo: EchoServer) -> None:
    raw = {
        **outbound_config(static(echo)),
        "telemetry": {"access_log": {"enabled": True, "path": "-"}},
    }
    sidecar = await sidecars.start(raw)
    code, reply = await unary(sidecar.outbound, EchoRequest(message="to stdout"))
    assert code is grpc.StatusCode.OK and isinstance(reply, EchoReply)

    def logged() -> list[dict[str, Any]]:
        found = []
        for text in list(sidecar.stdout_lines):
            if text.startswith("{"):
                found.append(json.loads(text))
        return found

    await wait_until(lambda: len(logged()) >= 1, timeout=LOG_WAIT, message="a stdout line")
    (line,) = logged()
    assert (line["direction"], line["method"], line["grpc_status"]) == ("outbound", UNARY, "OK")
