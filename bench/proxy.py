"""The proxy suite: h2load through each target, interleaved and repeated, verified by the backends.

One measurement (target x case x repeat):

1. warm-up: a separate short h2load run with the same shape, discarded. It is separate rather than
   h2load's ``--warm-up-time`` because requests completed during an in-run warm-up reach the
   backends but are missing from h2load's counts, which would make the check below unprovable;
2. read every backend's OK counter and the proxy's CPU time;
3. the measured run: ``h2load -D`` (one h2load per endpoint, started together), peak proxy RSS
   sampled meanwhile, per-request durations from ``--log-file``;
4. read the counters and CPU again. The run is *verified* when h2load reports no failure and
   ``succeeded <= backend OK increase <= succeeded + in-flight at cutoff``. A success h2load saw
   was counted by a backend before the reply left it, hence the lower bound; the only backend
   successes h2load does not count are the requests in flight when the duration ran out (h2load
   prints them: ``started - done``), hence the upper bound. A proxy that answers by itself (an
   Envoy 200 with grpc-status 14, an unknown method) breaks the lower bound.

Targets are rotated between repeats (A B C, B C A, …) so no target always runs first after a
different case's load.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import h2load, procstat
from bench.backend import STREAM, UNARY, Backend
from bench.procs import Children
from bench.stats import percentile
from bench.targets import Target


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    payload: int
    clients: int
    streams: int

    @property
    def concurrency(self) -> int:
        return self.clients * self.streams

    def describe(self, stream_messages: int) -> str:
        kind = "unary" if self.path == UNARY else f"server stream x{stream_messages} replies"
        return (
            f"{kind}, {_size(self.payload)} payload, {self.clients} conn x {self.streams} streams"
        )


def _size(n: int) -> str:
    return f"{n // 1024} KiB" if n >= 1024 and n % 1024 == 0 else f"{n} B"


CASES: tuple[Case, ...] = (
    Case("unary-100B-1", UNARY, 100, 1, 1),
    Case("unary-100B-64", UNARY, 100, 4, 16),
    Case("unary-64KiB-1", UNARY, 65536, 1, 1),
    Case("unary-64KiB-64", UNARY, 65536, 4, 16),
    Case("stream-100B-64", STREAM, 100, 4, 16),
)


def split_load(endpoints: list[str], clients: int) -> list[tuple[str, int]]:
    """Spread ``clients`` connections over the endpoints (one h2load each); drop empty shares.

    One client stays on the first endpoint: with one stream there is nothing to spread.
    """
    shares = [0] * len(endpoints)
    for i in range(clients):
        shares[i % len(endpoints)] += 1
    return [(ep, n) for ep, n in zip(endpoints, shares, strict=True) if n > 0]


@dataclass
class RunResult:
    target: str
    case: str
    repeat: int
    ok: bool = False
    error: str | None = None
    rps: float | None = None
    p50_us: float | None = None
    p99_us: float | None = None
    mean_us: float | None = None
    succeeded: int = 0
    in_flight_at_cutoff: int = 0
    backend_ok_delta: int = 0
    backend_share: list[int] = field(default_factory=list)
    proxy_cpu_us_per_req: float | None = None
    proxy_cpu_util: float | None = None
    backend_cpu_us_per_req: float | None = None
    rss_load_kib: int | None = None
    duration_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Settings:
    h2load: str
    duration_s: float
    warm_up_s: float
    workdir: Path


class Runner:
    """Runs single measurements against started targets."""

    def __init__(self, procs: Children, settings: Settings, backends: list[Backend]) -> None:
        self.procs = procs
        self.settings = settings
        self.backends = backends
        self._data_files: dict[int, Path] = {}
        self._seq = 0

    def data_file(self, payload: int) -> Path:
        if payload not in self._data_files:
            path = self.settings.workdir / f"request-{payload}.bin"
            path.write_bytes(h2load.grpc_frame(h2load.grpc_message(payload)))
            self._data_files[payload] = path
        return self._data_files[payload]

    def _h2load_group(
        self, target: Target, case: Case, duration_s: float, log: bool
    ) -> tuple[list[h2load.Summary], list[float]]:
        plan = split_load(target.endpoints, case.clients)
        runs = []
        for endpoint, clients in plan:
            self._seq += 1
            log_file = self.settings.workdir / f"h2load-{self._seq}.tsv" if log else None
            argv = h2load.command(
                self.settings.h2load,
                f"http://{endpoint}{case.path}",
                data_file=self.data_file(case.payload),
                clients=clients,
                streams=case.streams,
                duration_s=duration_s,
                log_file=log_file,
            )
            runs.append((self.procs.spawn(f"h2load-{target.name}", argv), log_file))
        deadline = time.monotonic() + duration_s + 30.0
        summaries: list[h2load.Summary] = []
        durations: list[float] = []
        try:
            for child, log_file in runs:
                child.popen.wait(max(deadline - time.monotonic(), 0.1))
                if child.popen.returncode != 0:
                    raise RuntimeError(f"h2load exited {child.popen.returncode}: {child.tail()}")
                summaries.append(h2load.parse_output(child.output()))
                if log_file is not None:
                    with open(log_file) as f:
                        durations.extend(h2load.parse_log(f))
                    log_file.unlink()
        finally:
            for child, _ in runs:
                self.procs.stop(child)
                child.log_path.unlink(missing_ok=True)
        return summaries, durations

    def measure(self, target: Target, case: Case, repeat: int) -> RunResult:
        result = RunResult(target.name, case.name, repeat)
        try:
            self._measure(target, case, result)
        except Exception as exc:  # one failed run is reported, the others still run
            result.ok = False
            result.error = f"{type(exc).__name__}: {exc}"
        return result

    def _measure(self, target: Target, case: Case, result: RunResult) -> None:
        target.check_alive()
        if self.settings.warm_up_s > 0:
            warm, _ = self._h2load_group(target, case, self.settings.warm_up_s, log=False)
            if not all(s.clean for s in warm):
                raise RuntimeError(f"warm-up failed: {warm}")
        backend_pids = [b.child.pid for b in self.backends]
        counts0 = [b.ok_total() for b in self.backends]
        cpu0 = procstat.cpu_seconds(target.proxy_pids)
        bcpu0 = procstat.cpu_seconds(backend_pids)
        t0 = time.monotonic()
        with procstat.RssSampler(target.proxy_pids) as rss:
            summaries, durations = self._h2load_group(
                target, case, self.settings.duration_s, log=True
            )
        wall = time.monotonic() - t0
        cpu1 = procstat.cpu_seconds(target.proxy_pids)
        bcpu1 = procstat.cpu_seconds(backend_pids)
        counts1 = [b.ok_total() for b in self.backends]

        succeeded = sum(s.succeeded for s in summaries)
        result.succeeded = succeeded
        result.in_flight_at_cutoff = sum(s.in_flight_at_cutoff for s in summaries)
        result.backend_share = [c1 - c0 for c0, c1 in zip(counts0, counts1, strict=True)]
        result.backend_ok_delta = sum(result.backend_share)
        result.rps = sum(s.rps for s in summaries)
        result.duration_s = max(s.duration_s for s in summaries)
        if durations:
            result.p50_us = percentile(durations, 50)
            result.p99_us = percentile(durations, 99)
            result.mean_us = sum(durations) / len(durations)
        if succeeded:
            if target.proxy_pids:
                result.proxy_cpu_us_per_req = (cpu1 - cpu0) * 1e6 / succeeded
                result.proxy_cpu_util = (cpu1 - cpu0) / wall
                result.rss_load_kib = rss.peak_kib
            result.backend_cpu_us_per_req = (bcpu1 - bcpu0) * 1e6 / succeeded
        problems = []
        for s in summaries:
            if not s.clean:
                problems.append(
                    f"h2load: {s.succeeded} succeeded, {s.failed} failed, {s.errored} errored, "
                    f"{s.timeout} timeout, {s.status_other} non-2xx"
                )
        excess = result.backend_ok_delta - succeeded
        if not 0 <= excess <= result.in_flight_at_cutoff:
            problems.append(
                f"backends counted {result.backend_ok_delta} OK for {succeeded} h2load successes "
                f"(allowed excess 0..{result.in_flight_at_cutoff} in flight at cutoff)"
            )
        result.ok = not problems
        result.error = "; ".join(problems) or None
        target.check_alive()


def schedule(
    targets: list[Target], cases: list[Case], repeats: int
) -> list[tuple[int, Case, Target]]:
    """Interleaved order: per repeat, per case, every target; targets rotated each repeat."""
    order = []
    for repeat in range(repeats):
        shift = repeat % len(targets) if targets else 0
        rotated = targets[shift:] + targets[:shift]
        for case in cases:
            for target in rotated:
                order.append((repeat, case, target))
    return order
