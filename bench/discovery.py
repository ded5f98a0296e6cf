"""The discovery suite: from "a new endpoint is visible to meshkit" to "a call lands on it".

Two backends answer ``/bench.Who/*`` with their address and the ``time.monotonic()`` at which
the call reached them (:class:`bench.backend.WhoHandler`): ``old`` on 127.0.0.1:P and ``new``
on 127.0.0.2:P. One sidecar per data plane (``meshkit-envoy``: ``data_plane: envoy``;
``meshkit``: ``data_plane: python``), both running through the whole suite, each with two
clusters:

- ``static`` (route ``/bench.Who/Static``): ``static:///OLD``; the **sighup** trigger rewrites
  the config file with ``static:///OLD,NEW`` and sends SIGHUP (reload, new snapshot, for the
  Envoy plane translation and the xDS push, and Envoy applying it);
- ``dns`` (route ``/bench.Who/Dns``): ``dns://127.0.0.1:DNSPORT/<plane>.discovery.bench.test:P``
  with ``resolver: {min_refresh: 100ms}`` against a loopback DNS server
  (:mod:`bench.loopback_dns`, TTL 1 s); the **dns** trigger adds the record 127.0.0.2. The
  server notes when it answered each query, which splits the delay in two: the wait until the
  resolver asks again (``dns wait``: up to the TTL plus jitter, by design) and what follows the
  answer (``push``: resolver state, snapshot, xDS, Envoy; for the Python plane its balancer).

One measurement: a client thread calls the cluster's route through the sidecar every
``--discovery-interval`` (2 ms; one call at a time, so at most 500 calls/s), and each reply says
which backend answered and when. First the cluster is put back to ``old`` only, until
``SETTLE_CALLS`` calls in a row reached ``old`` (round robin would send every other call to
``new`` while it is still there); then the trigger, at ``t0``; the result is the ``new``
backend's receipt time of the first call that reached it, minus ``t0``. Round robin over two
endpoints sends every other call to the new one, so the resolution is about two call intervals.
Calls that fail meanwhile are counted (a change must not break calls).

Planes are interleaved per repeat (rotated), triggers run in turn, medians with min-max.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench import report, sidecar
from bench.backend import Backend, parse_who, start_same_port_pair
from bench.loopback_dns import ThreadedDns
from bench.procs import Child, ChildFailed, Children
from bench.stats import spread

#: (target name, data_plane) of the two sidecars compared.
PLANES = (("meshkit-envoy", "envoy"), ("meshkit", "python"))
TRIGGERS = ("sighup", "dns")
METHODS = {"sighup": "/bench.Who/Static", "dns": "/bench.Who/Dns"}
#: Calls in a row on the old backend before the new one counts as gone.
SETTLE_CALLS = 50
DNS_TTL = 1
MIN_REFRESH = "100ms"
#: How long a trigger may take before the measurement is reported failed.
FIRST_CALL_TIMEOUT = 10.0
SETTLE_TIMEOUT = 15.0
#: What the issue asks of the Envoy plane: resolver change to first call.
TARGET_MS = 100.0


@dataclass(frozen=True)
class Call:
    """One call of the client: when it was sent, and who answered when (or the error)."""

    sent: float
    backend: str | None
    at: float | None
    error: str | None = None


class Caller:
    """Calls ``method`` through ``address`` every ``interval`` seconds on its own thread."""

    def __init__(self, address: str, method: str, interval: float) -> None:
        self.address = address
        self.method = method
        self.interval = interval
        self.calls: list[Call] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="discovery-caller", daemon=True)

    def __enter__(self) -> Caller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10.0)

    def _run(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            call = channel.unary_unary(self.method)
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    backend, at = parse_who(call(b"", timeout=2.0))
                    record = Call(sent, backend, at)
                except grpc.RpcError as exc:
                    record = Call(sent, None, None, f"{exc.code().name}: {exc.details()}")
                with self._cond:
                    self.calls.append(record)
                    self._cond.notify_all()
                # Pacing, not ordering: a bounded call rate.
                self._stop.wait(max(0.0, sent + self.interval - time.monotonic()))

    def first_on(self, backend: str, since: float, timeout: float) -> Call | None:
        """The first call after ``since`` that ``backend`` answered; ``None`` after ``timeout``."""
        scanned = 0
        hit: Call | None = None

        def found() -> bool:  # scans each call once, however often it is woken
            nonlocal scanned, hit
            while hit is None and scanned < len(self.calls):
                call = self.calls[scanned]
                scanned += 1
                if call.backend == backend and call.at is not None and call.at >= since:
                    hit = call
            return hit is not None

        with self._cond:
            self._cond.wait_for(found, timeout)
        return hit

    def settle(self, backend: str, since: float, count: int, timeout: float) -> bool:
        """Wait until the last ``count`` calls, all sent after ``since``, reached ``backend``."""

        def settled() -> bool:
            tail = self.calls[-count:]
            return (
                len(tail) == count
                and tail[0].sent >= since
                and all(c.backend == backend for c in tail)
            )

        with self._cond:
            return self._cond.wait_for(settled, timeout)

    def between(self, start: float, end: float) -> list[Call]:
        with self._cond:
            return [c for c in self.calls if start <= c.sent <= end]


def config(
    data_plane: str, static: list[str], dns_target: str, admin_port: int = 0
) -> dict[str, Any]:
    """The sidecar config of one plane: ``static`` and ``dns`` clusters, one route each."""
    return {
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "outbound": {
            "listen": "127.0.0.1:0",
            "routes": [
                {"prefix": METHODS["sighup"], "cluster": "static"},
                {"prefix": METHODS["dns"], "cluster": "dns"},
            ],
        },
        "clusters": {
            "static": {"target": "static:///" + ",".join(static)},
            "dns": {"target": dns_target, "resolver": {"min_refresh": MIN_REFRESH}},
        },
        "drain": dict(sidecar.FAST_DRAIN),
        "log_level": "warning",
        "data_plane": data_plane,
    }


class PlaneSidecar:
    """One sidecar of the suite: its config file, process and outbound address."""

    def __init__(self, name: str, data_plane: str, workdir: Path, dns: ThreadedDns) -> None:
        self.name = name
        self.data_plane = data_plane
        self.path = workdir / f"discovery-{name}.yaml"
        self.dns_name = f"{data_plane}.discovery.bench.test"
        self.dns = dns
        self.child: Child | None = None
        self.address = ""
        self.static: list[str] = []
        self._dns_target = ""

    def start(self, procs: Children, old: Backend, cwd: str) -> None:
        reason = sidecar.unavailable_reason(cwd)
        if reason:
            raise ChildFailed(reason)
        self.dns.set_a(self.dns_name, [old.host], DNS_TTL)
        self._dns_target = f"dns://{self.dns.authority}/{self.dns_name}:{old.port}"
        self.static = [old.address]
        self._write()
        problem = sidecar.validate_error(self.path, cwd)
        if problem:
            raise ChildFailed(problem)
        child = procs.spawn(
            f"discovery-{self.name}",
            sidecar.argv(self.path, []),
            env=sidecar.environment({}),
            cwd=cwd,
        )
        self.child = child
        host, port = _wait_listening(child)
        self.address = f"{host}:{port}"
        plane = sidecar.parse_data_plane(child.output())
        if plane != self.data_plane:
            raise ChildFailed(f"asked for data_plane: {self.data_plane}, runs {plane}")

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        sidecar.write_config(tmp, config(self.data_plane, self.static, self._dns_target))
        os.replace(tmp, self.path)  # the sidecar's file watcher never sees half a file

    def set_static(self, addresses: list[str]) -> None:
        """Rewrite the ``static`` cluster's target and send SIGHUP."""
        assert self.child is not None
        self.static = list(addresses)
        self._write()
        os.kill(self.child.pid, signal.SIGHUP)


def _wait_listening(child: Child, timeout: float = 30.0) -> tuple[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        found = sidecar.parse_listening(child.output())
        if found:
            return found
        if not child.alive():
            raise ChildFailed(f"sidecar exited {child.popen.returncode}:\n{child.tail()}")
        if time.monotonic() > deadline:
            raise ChildFailed(f"sidecar bound nothing within {timeout:g} s:\n{child.tail()}")
        time.sleep(0.05)


def measure(
    side: PlaneSidecar, trigger: str, old: Backend, new: Backend, repeat: int, interval: float
) -> dict[str, Any]:
    """One resolver change on one plane (see the module doc)."""
    out: dict[str, Any] = {"target": side.name, "trigger": trigger, "repeat": repeat, "ok": False}
    with Caller(side.address, METHODS[trigger], interval) as caller:
        reverted = time.monotonic()
        if trigger == "sighup":
            if side.static != [old.address]:
                side.set_static([old.address])
        else:
            side.dns.set_a(side.dns_name, [old.host], DNS_TTL)
        if not caller.settle(old.address, reverted, SETTLE_CALLS, SETTLE_TIMEOUT):
            out["error"] = (
                f"{SETTLE_CALLS} calls in a row never all reached {old.address} within "
                f"{SETTLE_TIMEOUT:g} s (last: {caller.calls[-3:]})"
            )
            return out
        t0 = time.monotonic()
        if trigger == "sighup":
            side.set_static([old.address, new.address])
        else:
            side.dns.set_a(side.dns_name, [old.host, new.host], DNS_TTL)
        first = caller.first_on(new.address, t0, FIRST_CALL_TIMEOUT)
        if first is None or first.at is None:
            out["error"] = f"no call reached {new.address} within {FIRST_CALL_TIMEOUT:g} s"
            return out
        calls = caller.between(t0, first.sent)
    out["ok"] = True
    out["first_call_ms"] = (first.at - t0) * 1e3
    out["calls_until_first"] = len(calls)
    out["failed_calls"] = sum(1 for c in calls if c.error)
    errors = [c.error for c in calls if c.error]
    if errors:
        out["last_error"] = errors[-1]
    if trigger == "dns":
        answered = [q.at for q in side.dns.queries(side.dns_name, t0) if q.at <= first.at]
        if answered:
            # A and AAAA are asked together: the resolver has its answer after the later one.
            out["dns_wait_ms"] = (max(answered) - t0) * 1e3
            out["push_ms"] = (first.at - max(answered)) * 1e3
    return out


def run_suite(args: argparse.Namespace, procs: Children, workdir: Path, cwd: str) -> dict[str, Any]:
    quick = args.quick
    repeats = args.repeats or (2 if quick else 5)
    interval = args.discovery_interval
    dns = ThreadedDns()
    sides: list[PlaneSidecar] = []
    targets: dict[str, dict[str, Any]] = {}
    runs: list[dict[str, Any]] = []
    try:
        old, new = start_same_port_pair(procs, "discovery")
        for name, plane in PLANES:
            side = PlaneSidecar(name, plane, workdir, dns)
            try:
                side.start(procs, old, cwd)
            except ChildFailed as exc:
                targets[name] = {"available": False, "reason": str(exc)}
                print(f"[bench] discovery {name}: unavailable: {exc}", flush=True)
                if side.child is not None:
                    procs.stop(side.child)
                continue
            targets[name] = {"available": True, "data_plane": plane, "address": side.address}
            sides.append(side)
        print(
            f"[bench] discovery suite: {repeats} repeat(s) x {len(TRIGGERS)} triggers x "
            f"{len(sides)} plane(s), a call every {interval * 1e3:g} ms",
            flush=True,
        )
        for repeat in range(repeats):
            shift = repeat % len(sides) if sides else 0
            for side in sides[shift:] + sides[:shift]:
                for trigger in TRIGGERS:
                    result = measure(side, trigger, old, new, repeat, interval)
                    runs.append(result)
                    print(f"[bench] discovery {_run_text(result)}", flush=True)
    finally:
        for side in sides:
            if side.child is not None:
                procs.stop(side.child)
        dns.close()
    return {
        "suite": "discovery",
        "config": {
            "repeats": repeats,
            "call_interval_s": interval,
            "dns_ttl_s": DNS_TTL,
            "min_refresh": MIN_REFRESH,
            "settle_calls": SETTLE_CALLS,
            "target_ms": TARGET_MS,
        },
        "targets": targets,
        "runs": runs,
        "summary": summarize(runs),
        "ok": all(r["ok"] for r in runs),
    }


METRICS = ("first_call_ms", "dns_wait_ms", "push_ms")


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{target: {trigger: {metric: spread, "failed_calls": n}}}`` over the good runs."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for run in runs:
        out.setdefault(run["target"], {}).setdefault(run["trigger"], {})
    for target, per_trigger in out.items():
        for trigger, entry in per_trigger.items():
            members = [r for r in runs if r["target"] == target and r["trigger"] == trigger]
            good = [r for r in members if r["ok"]]
            for metric in METRICS:
                s = spread([r.get(metric) for r in good])
                entry[metric] = s.as_dict() if s else None
            entry["failed_calls"] = sum(r.get("failed_calls", 0) for r in good)
            entry["verified"] = f"{len(good)}/{len(members)}"
    return out


def _ms(values: dict[str, Any] | None) -> str:
    if values is None:
        return "-"
    if values["n"] == 1:
        return f"{values['median']:.1f}"
    return f"{values['median']:.1f} ({values['min']:.1f}-{values['max']:.1f})"


def _run_text(run: dict[str, Any]) -> str:
    head = f"{run['target']:13} {run['trigger']:6} #{run['repeat']}:"
    if not run["ok"]:
        return f"{head} FAILED: {run.get('error')}"
    text = f"{head} first call on the new endpoint after {run['first_call_ms']:.1f} ms"
    if "push_ms" in run:
        text += f" (DNS answer after {run['dns_wait_ms']:.0f} ms, then {run['push_ms']:.1f} ms)"
    if run["failed_calls"]:
        text += f", {run['failed_calls']} failed call(s): {run.get('last_error')}"
    return text


def render(doc: dict[str, Any]) -> str:
    cfg = doc["config"]
    lines = [
        "",
        f"== discovery: resolver change -> first call on the new endpoint, ms "
        f"(a call every {cfg['call_interval_s'] * 1e3:g} ms; DNS TTL {cfg['dns_ttl_s']} s)",
    ]
    for name, info in doc["targets"].items():
        if not info["available"]:
            lines.append(f"target {name}: unavailable: {info['reason']}")
    rows = [
        ["target", "trigger", "first call ms", "DNS wait ms", "push ms", "failed calls", "verified"]
    ]
    summary = doc["summary"]
    for target, per_trigger in summary.items():
        for trigger, entry in per_trigger.items():
            rows.append(
                [
                    target,
                    trigger,
                    *(_ms(entry[m]) for m in METRICS),
                    str(entry["failed_calls"]),
                    entry["verified"],
                ]
            )
    if len(rows) > 1:
        lines.append(report.table(rows))
    envoy, python = summary.get("meshkit-envoy", {}), summary.get("meshkit", {})
    for trigger, metric in (("sighup", "first_call_ms"), ("dns", "push_ms")):
        a = (envoy.get(trigger) or {}).get(metric)
        b = (python.get(trigger) or {}).get(metric)
        if a and b and b["median"]:
            lines.append(
                f"   meshkit-envoy/meshkit {trigger} {metric}: {a['median'] / b['median']:.2f}"
            )
    failures = [r for r in doc["runs"] if not r["ok"]]
    lines.extend(_run_text(r) for r in failures)
    return "\n".join(lines)
