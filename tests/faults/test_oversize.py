"""Oversize requests through the sidecar, on each data plane: RESOURCE_EXHAUSTED, and the
sidecar keeps serving.

The Python plane's own limit is ``sidecar.proxy.DEFAULT_MAX_MESSAGE_BYTES`` (64 MiB, its grpc
``max_receive_message_length``); the Envoy plane sets no message limit of its own (it streams
bodies), so there the app's limit (grpc's default 4 MiB) answers. A request past the app's
limit but under the sidecar's is refused by the app on both planes.
"""

from __future__ import annotations

import grpc
import pytest

from sidecar.proxy import DEFAULT_MAX_MESSAGE_BYTES
from tests.faults.conftest import Figures, Sidecars, outbound_config, static
from tests.support.echo import EchoRequest, EchoServer, EchoStub

pytestmark = pytest.mark.timeout(60)

APP_LIMIT = 4 * 1024 * 1024
SIZES = {"over_app_limit": APP_LIMIT + 1024, "over_sidecar_limit": DEFAULT_MAX_MESSAGE_BYTES + 1024}


async def test_oversize_requests_get_resource_exhausted(
    sidecars: Sidecars, echo: EchoServer, figures: Figures
) -> None:
    sidecar = await sidecars.start(outbound_config(static(echo)))
    codes: dict[str, str] = {}
    async with grpc.aio.insecure_channel(
        sidecar.outbound, options=[("grpc.max_send_message_length", -1)]
    ) as channel:
        stub = EchoStub(channel)
        for name, size in SIZES.items():
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await stub.Unary(EchoRequest(message="x" * size), timeout=20)
            codes[name] = failure.value.code().name
            reply = await stub.Unary(EchoRequest(message="after"), timeout=5)
            assert reply.message == "after"
    figures.record(**codes, sidecar_limit_MiB=DEFAULT_MAX_MESSAGE_BYTES // 2**20)
    assert set(codes.values()) == {"RESOURCE_EXHAUSTED"}, codes
    assert sidecar.process.poll() is None
