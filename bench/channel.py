"""The channel suite: meshkit's balanced ``grpc.aio`` channel against grpcio's own, in process.

Throughput: calls/s and client CPU µs per call at a fixed number of concurrent callers, for

- ``meshkit``: ``balancers.aio.insecure_channel("static:///B1,B2")`` (round robin);
- ``native-rr``: ``grpc.aio.insecure_channel("ipv4:B1,B2")``, ``grpc.lb_policy_name=round_robin``;
- ``single``: ``grpc.aio.insecure_channel(B1)``, one plain channel to one backend (the floor).

Each run is a fresh worker process (``python -m bench.channel --kind ...``), so CPU time is the
client's alone (``time.process_time`` covers grpc's threads) and no channel state carries over;
kinds are interleaved and rotated per repeat, against the same backends as the proxy suite.

Scale-up: a loopback DNS server answers ``scale.bench.test`` with one A record (127.0.0.1); a
client calls ``dns://127.0.0.1:DNSPORT/scale.bench.test:P`` continuously; then a second record
(127.0.0.2, a backend on the same port) is added, and the harness times how long until that
backend's counter moves. grpcio's resolver re-resolves only on connection failure, so the native
channel is expected never to find it within the window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from bench.backend import UNARY, Backend, start_same_port_pair
from bench.loopback_dns import ThreadedDns
from bench.procs import ChildFailed, Children
from bench.report import table
from bench.stats import percentile, spread

KINDS = ("meshkit", "native-rr", "single")
SCALE_KINDS = ("meshkit", "native")
SCALE_NAME = "scale.bench.test"
RESULT_PREFIX = "RESULT "


# --- worker side (runs in its own process) ------------------------------------------------------


class Unavailable(Exception):
    pass


def _open_channel(kind: str, target: str) -> Any:
    if kind == "meshkit":
        try:
            import balancers.aio

            return balancers.aio.insecure_channel(target, lb_policy="round_robin")
        except (ImportError, AttributeError) as exc:
            raise Unavailable(f"balancers.aio.insecure_channel: {exc}") from exc
    if kind in ("native-rr", "native"):
        return grpc.aio.insecure_channel(target, options=[("grpc.lb_policy_name", "round_robin")])
    if kind == "single":
        return grpc.aio.insecure_channel(target)
    raise ValueError(f"unknown kind {kind!r}")


async def _call_loop(
    call: Callable[..., Awaitable[bytes]],
    payload: bytes,
    stop: asyncio.Event,
    on_done: Callable[[float, BaseException | None], None],
) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        try:
            await call(payload, timeout=10.0, wait_for_ready=True)
        except grpc.RpcError as exc:
            on_done(time.perf_counter() - start, exc)
            await asyncio.sleep(0.01)  # a failing target must not turn into a busy loop
        else:
            on_done(time.perf_counter() - start, None)


async def _throughput(args: argparse.Namespace) -> dict[str, Any]:
    channel = _open_channel(args.kind, args.target)
    call = channel.unary_unary(UNARY)
    payload = b"x" * args.payload
    stop = asyncio.Event()
    state = {"measuring": False, "calls": 0, "errors": 0, "warm_errors": 0}
    latencies: list[float] = []
    last_error: list[str] = []

    def on_done(elapsed: float, error: BaseException | None) -> None:
        if error is not None:
            last_error[:] = [str(error)[:300]]
        if not state["measuring"]:
            if error is not None:
                state["warm_errors"] += 1
            return
        if error is None:
            state["calls"] += 1
            latencies.append(elapsed)
        else:
            state["errors"] += 1

    tasks = [
        asyncio.create_task(_call_loop(call, payload, stop, on_done))
        for _ in range(args.concurrency)
    ]
    try:
        await asyncio.sleep(args.warm_up)
        state["measuring"] = True
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(args.duration)
        cpu1, t1 = time.process_time(), time.perf_counter()
        state["measuring"] = False
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await channel.close()
    calls = state["calls"]
    return {
        "kind": args.kind,
        "calls": calls,
        "errors": state["errors"],
        "warm_up_errors": state["warm_errors"],
        "last_error": last_error[0] if last_error else None,
        "seconds": t1 - t0,
        "calls_per_s": calls / (t1 - t0),
        "cpu_us_per_call": (cpu1 - cpu0) * 1e6 / calls if calls else None,
        "cpu_util": (cpu1 - cpu0) / (t1 - t0),
        "p50_us": percentile(latencies, 50) * 1e6 if latencies else None,
        "p99_us": percentile(latencies, 99) * 1e6 if latencies else None,
    }


async def _scale(args: argparse.Namespace) -> None:
    """Call until killed (or ``--duration``); print ``ready`` after the first successes."""
    channel = _open_channel(args.kind, args.target)
    call = channel.unary_unary(UNARY)
    stop = asyncio.Event()
    ok = [0]

    def on_done(elapsed: float, error: BaseException | None) -> None:
        if error is None:
            ok[0] += 1
            if ok[0] == 20:
                print("ready", flush=True)
        else:
            print(f"error: {str(error)[:200]}", flush=True)

    tasks = [
        asyncio.create_task(_call_loop(call, b"x" * args.payload, stop, on_done))
        for _ in range(args.concurrency)
    ]
    try:
        await asyncio.sleep(args.duration)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await channel.close()


def worker_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.channel")
    p.add_argument("--kind", required=True, choices=(*KINDS, "native"))
    p.add_argument("--target", required=True)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warm-up", type=float, default=1.0)
    p.add_argument("--payload", type=int, default=100)
    p.add_argument("--scale", action="store_true", help="scale-up mode: call until stopped")
    args = p.parse_args(argv)
    try:
        if args.scale:
            asyncio.run(_scale(args))
            return 0
        result = asyncio.run(_throughput(args))
    except Unavailable as exc:
        print(RESULT_PREFIX + json.dumps({"kind": args.kind, "unavailable": str(exc)}), flush=True)
        print(f"unavailable: {exc}", flush=True)
        return 0
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


# --- harness side -------------------------------------------------------------------------------


def _worker_argv(kind: str, target: str, **options: object) -> list[str]:
    argv = [sys.executable, "-m", "bench.channel", f"--kind={kind}", f"--target={target}"]
    for key, value in options.items():
        if value is True:
            argv.append(f"--{key.replace('_', '-')}")
        elif value is not False:
            argv.append(f"--{key.replace('_', '-')}={value}")
    return argv


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    # the c-ares resolver is the one that honours dns://ns-host:port/ authorities
    env["GRPC_DNS_RESOLVER"] = "ares"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _repo_root() -> str:
    return str(Path(__file__).resolve().parent.parent)


def _parse_result(text: str) -> dict[str, Any] | None:
    for line in reversed(text.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    return None


def _throughput_run(
    procs: Children,
    backends: list[Backend],
    kind: str,
    repeat: int,
    concurrency: int,
    warm_up: float,
    duration: float,
) -> dict[str, Any]:
    pair = ",".join(b.address for b in backends[:2])
    target = {
        "meshkit": f"static:///{pair}",
        "native-rr": f"ipv4:{pair}",
        "single": backends[0].address,
    }[kind]
    counts0 = [b.ok_total() for b in backends]
    child = procs.spawn(
        f"channel-{kind}",
        _worker_argv(kind, target, concurrency=concurrency, warm_up=warm_up, duration=duration),
        env=_worker_env(),
        cwd=_repo_root(),
    )
    try:
        child.popen.wait(warm_up + duration + 60.0)
    finally:
        procs.stop(child)
    counts1 = [b.ok_total() for b in backends]
    result = _parse_result(child.output())
    if result is None:
        return {"kind": kind, "repeat": repeat, "ok": False, "error": child.tail()}
    result["repeat"] = repeat
    result["target"] = target
    if "unavailable" in result:
        return result
    result["backend_share"] = [c1 - c0 for c0, c1 in zip(counts0, counts1, strict=True)]
    problems = []
    if result["errors"]:
        problems.append(f"{result['errors']} failed calls ({result['last_error']})")
    if sum(result["backend_share"]) < result["calls"]:
        problems.append(f"backends counted {sum(result['backend_share'])} < {result['calls']}")
    if not result["calls"]:
        problems.append("no calls completed")
    result["ok"] = not problems
    result["error"] = "; ".join(problems) or None
    return result


def _scale_run(
    procs: Children, dns: ThreadedDns, old: Backend, new: Backend, kind: str, window: float
) -> dict[str, Any]:
    dns.set_a(SCALE_NAME, ["127.0.0.1"], ttl=1)
    target = f"dns://{dns.authority}/{SCALE_NAME}:{old.port}"
    out: dict[str, Any] = {"kind": kind, "target": target, "window_s": window}
    child = procs.spawn(
        f"scale-{kind}",
        _worker_argv(kind, target, concurrency=4, duration=window + 30.0, scale=True),
        env=_worker_env(),
        cwd=_repo_root(),
    )
    try:
        match = child.wait_for(r"^(ready|unavailable: .*)$", 20.0)
        if match.group(1).startswith("unavailable"):
            out["unavailable"] = match.group(1).removeprefix("unavailable: ")
            return out
        old0, new0 = old.ok_total(), new.ok_total()
        queries0 = dns.a_queries(SCALE_NAME)
        dns.set_a(SCALE_NAME, ["127.0.0.1", "127.0.0.2"], ttl=1)
        t0 = time.monotonic()
        seconds = None
        while time.monotonic() - t0 < window:
            if new.ok_total() > new0:
                seconds = time.monotonic() - t0
                break
            if not child.alive():
                raise ChildFailed(f"scale worker died: {child.tail()}")
            time.sleep(0.05)
        out["seconds_to_new_backend"] = seconds
        out["old_backend_calls"] = old.ok_total() - old0
        out["a_queries_after_change"] = dns.a_queries(SCALE_NAME) - queries0
        out["ok"] = out["old_backend_calls"] > 0
        if not out["ok"]:
            out["error"] = "the client made no calls during the window"
    except ChildFailed as exc:
        out["ok"] = False
        out["error"] = str(exc)
    finally:
        procs.stop(child)
    return out


def run_suite(
    args: argparse.Namespace, procs: Children, workdir: Path, backends: list[Backend]
) -> dict[str, Any]:
    quick = args.quick
    repeats = args.repeats or (1 if quick else 3)
    duration = args.duration or (2.0 if quick else 5.0)
    warm_up = args.warm_up if args.warm_up is not None else (0.5 if quick else 1.0)
    window = args.scale_window or (10.0 if quick else 20.0)
    concurrency = args.channel_concurrency
    runs: list[dict[str, Any]] = []
    print(
        f"[bench] channel suite: {repeats} repeat(s) x {len(KINDS)} kinds, {concurrency} callers, "
        f"{duration:g} s after {warm_up:g} s warm-up",
        flush=True,
    )
    for repeat in range(repeats):
        shift = repeat % len(KINDS)
        for kind in KINDS[shift:] + KINDS[:shift]:
            run = _throughput_run(procs, backends, kind, repeat, concurrency, warm_up, duration)
            runs.append(run)
            if "unavailable" in run:
                status = f"unavailable: {run['unavailable']}"
            elif run.get("ok"):
                status = f"{run['calls_per_s']:.0f} calls/s, {run['cpu_us_per_call']:.0f} µs CPU"
            else:
                status = f"FAILED: {run.get('error')}"
            print(f"[bench] channel {kind:9} #{repeat}: {status}", flush=True)

    scale: list[dict[str, Any]] = []
    dns = ThreadedDns()
    try:
        old, new = start_same_port_pair(procs, "scale")
        for kind in SCALE_KINDS:
            result = _scale_run(procs, dns, old, new, kind, window)
            scale.append(result)
            print(f"[bench] scale-up {kind}: {_scale_text(result)}", flush=True)
    finally:
        dns.close()

    summary: dict[str, Any] = {}
    for kind in KINDS:
        good = [r for r in runs if r["kind"] == kind and r.get("ok")]
        summary[kind] = {
            key: (s.as_dict() if (s := spread([r[key] for r in good])) else None)
            for key in ("calls_per_s", "cpu_us_per_call", "p50_us", "p99_us")
        }
    ratios: dict[str, dict[str, float | None]] = {}
    for num, den in (("meshkit", "native-rr"), ("meshkit", "single"), ("native-rr", "single")):
        ratios[f"{num}/{den}"] = {
            key: (
                summary[num][key]["median"] / summary[den][key]["median"]
                if summary[num][key] and summary[den][key] and summary[den][key]["median"]
                else None
            )
            for key in ("calls_per_s", "cpu_us_per_call", "p99_us")
        }
    ok = all(r.get("ok") or "unavailable" in r for r in runs) and all(
        r.get("ok", True) or "unavailable" in r for r in scale
    )
    return {
        "suite": "channel",
        "config": {
            "repeats": repeats,
            "duration_s": duration,
            "warm_up_s": warm_up,
            "concurrency": concurrency,
            "payload_bytes": 100,
            "scale_window_s": window,
        },
        "runs": runs,
        "summary": summary,
        "ratios": ratios,
        "scale_up": scale,
        "ok": ok,
    }


def _scale_text(result: dict[str, Any]) -> str:
    if "unavailable" in result:
        return f"unavailable: {result['unavailable']}"
    if not result.get("ok"):
        return f"FAILED: {result.get('error')}"
    seconds = result["seconds_to_new_backend"]
    found = f"{seconds:.2f} s" if seconds is not None else f"never (>{result['window_s']:g} s)"
    return f"{found} (A queries after the change: {result['a_queries_after_change']})"


def _cell(values: dict[str, Any] | None) -> str:
    if values is None:
        return "-"
    if values["n"] == 1:
        return f"{values['median']:.0f}"
    return f"{values['median']:.0f} ({values['min']:.0f}-{values['max']:.0f})"


def render(doc: dict[str, Any]) -> str:
    concurrency = doc["config"]["concurrency"]
    lines = ["", f"== channel: unary 100 B, {concurrency} concurrent callers, client process"]
    rows = [["kind", "calls/s", "CPU µs/call", "p50 µs", "p99 µs", "backend split", "verified"]]
    for kind in KINDS:
        runs = [r for r in doc["runs"] if r["kind"] == kind]
        if runs and all("unavailable" in r for r in runs):
            lines.append(f"{kind}: unavailable: {runs[0]['unavailable']}")
            continue
        s = doc["summary"][kind]
        good = [r for r in runs if r.get("ok")]
        split = ""
        if good and good[-1].get("backend_share"):
            shares = good[-1]["backend_share"]
            total = sum(shares) or 1
            split = "/".join(f"{100 * n / total:.0f}%" for n in shares)
        rows.append(
            [
                kind,
                *(_cell(s[k]) for k in ("calls_per_s", "cpu_us_per_call", "p50_us", "p99_us")),
                split,
                f"{len(good)}/{len(runs)}",
            ]
        )
    if len(rows) > 1:
        lines.append(table(rows))
    for pair, values in doc["ratios"].items():
        parts = [f"{k}={v:.2f}" for k, v in values.items() if v is not None]
        if parts:
            lines.append(f"   {pair}: " + "  ".join(parts))
    for result in doc["scale_up"]:
        lines.append(f"scale-up {result.get('kind', '')}: {_scale_text(result)}")
    failures = [r for r in doc["runs"] if not r.get("ok") and "unavailable" not in r]
    lines.extend(f"FAILED {r['kind']} #{r['repeat']}: {r.get('error')}" for r in failures)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(worker_main())
