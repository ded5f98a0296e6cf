"""Hostile files written over the config of a running sidecar, each followed by SIGHUP, under
load, on each data plane: a YAML alias bomb, 2,000 ``[``, a 50 MB file. No call fails,
``/live`` stays 200, memory stays bounded, the old config keeps serving, each is logged."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from tests.faults.conftest import Figures, Sidecar, Sidecars, outbound_config, static
from tests.support.echo import EchoServer, EchoStub
from tests.support.load import steady_load
from tests.support.procmem import rss_bytes
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(90)

#: The manifests give the sidecar container 256Mi.
RSS_LIMIT = 256 * 1024 * 1024
KEPT = "keeping the running config"


def alias_bomb(levels: int = 10) -> str:
    """A "billion laughs" document: 9**levels strings from ~700 bytes."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


HOSTILE: dict[str, Callable[[], str]] = {
    "alias_bomb": lambda: alias_bomb(),
    "nesting_2000": lambda: "outbound: " + "[" * 2000 + "\n",
    "file_50MB": lambda: "clusters: {x: {target: '" + "x" * (50 * 1024 * 1024) + "'}}\n",
}


def _write_over(path: Path, text: str) -> None:
    tmp = path.with_suffix(".hostile")
    tmp.write_text(text)
    os.replace(tmp, path)


def _logged_more(sidecar: Sidecar, seen: int) -> bool:
    return sidecar.log.count(KEPT) > seen


async def _watch(sidecar: Sidecar, rss: list[int], live: list[int]) -> None:
    """Sample the sidecar's memory and ``/live`` until cancelled."""
    while True:
        rss.append(rss_bytes(sidecar.process.pid))
        live.append((await sidecar.get("/live"))[0])
        await asyncio.sleep(0.05)


async def test_hostile_config_reload_under_load_costs_nothing(
    sidecars: Sidecars, echo: EchoServer, figures: Figures
) -> None:
    sidecar = await sidecars.start(outbound_config(static(echo)))
    config_before = (await sidecar.get_json("/config"))["clusters"]
    rss: list[int] = []
    live: list[int] = []
    watcher = asyncio.create_task(_watch(sidecar, rss, live))
    try:
        async with grpc.aio.insecure_channel(sidecar.outbound) as channel:
            async with steady_load(EchoStub(channel), callers=4, interval=0.02) as load:
                await load.wait_calls(20)
                for name, make in HOSTILE.items():
                    seen = sidecar.log.count(KEPT)
                    _write_over(sidecar.config_path, make())
                    sidecar.send(signal.SIGHUP)
                    await wait_until(
                        functools.partial(_logged_more, sidecar, seen),
                        timeout=15,
                        message=f"{name} rejected",
                    )
                    await load.wait_calls(20)
            result = load.result
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    config_after = (await sidecar.get_json("/config"))["clusters"]
    figures.record(
        **result.figures(),
        rss_peak_MB=round(max(rss) / 2**20),
        live_checks=len(live),
        live_not_200=sum(code != 200 for code in live),
    )
    assert result.failed == 0, result.failure_summary()
    assert set(result.servers) == {"echo"}, result.servers  # the old config kept serving
    assert config_after == config_before
    assert live and all(code == 200 for code in live), live
    assert max(rss) < RSS_LIMIT, max(rss)
    assert sidecar.log.count("config reload rejected") >= len(HOSTILE), sidecar.log[-3000:]
    assert sidecar.process.poll() is None
