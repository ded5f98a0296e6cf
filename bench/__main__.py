"""``python -m bench``: the proxy suite (h2load through proxies), the channel suite and the
discovery suite (resolver change to first call through the sidecar).

    python -m bench --quick                  # proxy suite, main targets, < 1 minute
    python -m bench                          # proxy suite, 3 interleaved repeats of 5 s
    python -m bench --suite channel          # in-process balanced channel + DNS scale-up
    python -m bench --suite discovery        # resolver change -> first call, both data planes
    python -m bench --suite all --targets direct,envoy-1w

Results: a table on stdout and ``bench/results/latest.json``. Exit status 1 when a run failed its
verification, 2 when a required tool is missing.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from bench import channel, discovery, envoy, h2load, report
from bench.backend import Backend, start_backend
from bench.procs import ChildFailed, Children, install_signal_handlers
from bench.proxy import CASES, Case, Runner, RunResult, Settings, schedule
from bench.targets import Direct, Envoy, Meshkit, Target, TargetUnavailable

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "bench" / "results" / "latest.json"
ALL_TARGETS = (
    "direct",
    "envoy-1w",
    "envoy-2w",
    "meshkit",
    "meshkit-kinds",
    "meshkit-2w",
    "meshkit-2w-kinds",
    "meshkit-envoy",
    "meshkit-envoy-2w",
)
#: ``--quick`` without ``--targets``: the limit, the reference and the sidecar on each plane.
QUICK_TARGETS = ("direct", "envoy-1w", "meshkit", "meshkit-envoy")
#: Optional targets: ``meshkit-base`` needs ``--baseline-tree``.
EXTRA_TARGETS = ("meshkit-base",)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--suite", choices=("proxy", "channel", "discovery", "all"), default="proxy")
    p.add_argument(
        "--quick",
        action="store_true",
        help="short runs, one repeat, targets " + ",".join(QUICK_TARGETS) + " (< 1 minute)",
    )
    p.add_argument(
        "--targets", help="comma separated (default: all but meshkit-base; --quick: fewer)"
    )
    p.add_argument(
        "--cases", default=",".join(c.name for c in CASES), help="comma separated proxy cases"
    )
    p.add_argument("--repeats", type=int, help="interleaved repeats (default 3, quick 1)")
    p.add_argument("--duration", type=float, help="seconds per measured run (default 5, quick 1)")
    p.add_argument("--warm-up", type=float, help="seconds of warm-up run (default 1, quick 0.5)")
    p.add_argument("--backends", type=int, default=2)
    p.add_argument("--stream-messages", type=int, default=10, help="replies per streaming call")
    p.add_argument(
        "--sidecar-arg",
        action="append",
        default=[],
        help="extra argument for `sidecar run` (repeatable), e.g. --sidecar-arg=--workers=2",
    )
    p.add_argument(
        "--baseline-tree",
        type=Path,
        help="a checkout of another revision (e.g. `git worktree add /tmp/base HEAD~1`): adds"
        " the target meshkit-base, the sidecar (workers: 1) imported from that tree, for an"
        " interleaved A/B against the working tree in the same run",
    )
    p.add_argument("--channel-concurrency", type=int, default=32)
    p.add_argument("--scale-window", type=float, help="seconds to wait for the new backend (20)")
    p.add_argument(
        "--discovery-interval",
        type=float,
        default=0.002,
        help="seconds between the discovery client's calls (default %(default)s)",
    )
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    p.add_argument("--keep-logs", action="store_true", help="keep the work directory")
    return p


def _meta() -> dict[str, Any]:
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "loadavg_start": os.getloadavg(),
    }


def _make_targets(names: list[str], args: argparse.Namespace) -> list[Target]:
    envoy_bin = envoy.find_envoy()
    out: list[Target] = []
    for name in names:
        if name == "direct":
            out.append(Direct("direct"))
        elif name == "envoy-1w":
            out.append(Envoy(name, 1, envoy_bin))
        elif name == "envoy-2w":
            out.append(Envoy(name, 2, envoy_bin))
        elif name == "meshkit":
            out.append(Meshkit(name, 1, list(args.sidecar_arg), {}, str(REPO)))
        elif name == "meshkit-2w":
            out.append(Meshkit(name, 2, list(args.sidecar_arg), {}, str(REPO)))
        elif name == "meshkit-kinds":
            out.append(Meshkit(name, 1, list(args.sidecar_arg), {}, str(REPO), kinds=True))
        elif name == "meshkit-2w-kinds":
            out.append(Meshkit(name, 2, list(args.sidecar_arg), {}, str(REPO), kinds=True))
        elif name in ("meshkit-envoy", "meshkit-envoy-2w"):
            workers = 2 if name.endswith("-2w") else 1
            out.append(
                Meshkit(name, workers, list(args.sidecar_arg), {}, str(REPO), data_plane="envoy")
            )
        elif name == "meshkit-base":
            if args.baseline_tree is None:
                raise SystemExit("target meshkit-base needs --baseline-tree DIR")
            tree = str(args.baseline_tree.resolve())
            env = {"PYTHONPATH": tree}
            out.append(Meshkit(name, 1, list(args.sidecar_arg), env, str(REPO)))
        else:
            known = ", ".join(ALL_TARGETS + EXTRA_TARGETS)
            raise SystemExit(f"unknown target {name!r}; known: {known}")
    return out


def _measure_all(
    procs: Children,
    workdir: Path,
    backends: list[Backend],
    targets: list[Target],
    cases: list[Case],
    target_info: dict[str, dict[str, Any]],
    results: list[RunResult],
    settings: Settings,
    repeats: int,
) -> None:
    running: list[Target] = []
    for target in targets:
        try:
            target.start(procs, workdir, backends)
        except (TargetUnavailable, ChildFailed) as exc:
            available = isinstance(exc, TargetUnavailable)
            target_info[target.name] = {
                "available": False,
                "reason": str(exc) if available else f"failed to start: {exc}",
            }
            print(f"[bench] {target.name}: unavailable: {exc}", flush=True)
            continue
        running.append(target)
        target_info[target.name] = {
            "available": True,
            "description": target.description,
            "endpoints": target.endpoints,
            "rss_idle_kib": target.rss_idle_kib,
            "rss_idle_kib_by_command": target.rss_idle_parts,
        }
        print(f"[bench] {target.name}: {target.description} at {target.endpoints}", flush=True)

    runner = Runner(procs, settings, backends)
    plan = schedule(running, cases, repeats)
    print(
        f"[bench] {len(plan)} runs: {repeats} repeat(s) x {len(cases)} case(s) x "
        f"{len(running)} target(s), {settings.duration_s:g} s each after "
        f"{settings.warm_up_s:g} s warm-up",
        flush=True,
    )
    for n, (repeat, case, target) in enumerate(plan, 1):
        result = runner.measure(target, case, repeat)
        results.append(result)
        status = "ok" if result.ok else f"FAILED: {result.error}"
        rps = f"{result.rps:.0f} req/s" if result.rps is not None else "-"
        print(
            f"[bench] {n}/{len(plan)} {target.name:9} {case.name:15} {rps:>12}  {status}",
            flush=True,
        )


def run_proxy_suite(
    args: argparse.Namespace, procs: Children, workdir: Path, backends: list[Backend]
) -> dict[str, Any]:
    h2load_bin = h2load.find_h2load()
    if h2load_bin is None:
        print(h2load.INSTALL_HINT, file=sys.stderr)
        raise SystemExit(2)
    quick = args.quick
    repeats = args.repeats or (1 if quick else 3)
    duration = args.duration or (1.0 if quick else 5.0)
    warm_up = args.warm_up if args.warm_up is not None else (0.5 if quick else 1.0)
    case_names = args.cases.split(",")
    cases = [c for c in CASES if c.name in case_names]
    if len(cases) != len(case_names):
        raise SystemExit(f"unknown case in {case_names}; known: {[c.name for c in CASES]}")
    names = args.targets or ",".join(QUICK_TARGETS if quick else ALL_TARGETS)
    targets = _make_targets(names.split(","), args)

    target_info: dict[str, dict[str, Any]] = {}
    results: list[RunResult] = []
    try:
        _measure_all(
            procs,
            workdir,
            backends,
            targets,
            cases,
            target_info,
            results,
            Settings(h2load_bin, duration, warm_up, workdir),
            repeats,
        )
    finally:
        for target in targets:
            target.stop()

    runs = [r.as_dict() for r in results]
    summary = report.summarize(runs)
    return {
        "suite": "proxy",
        "meta": _meta(),
        "config": {
            "repeats": repeats,
            "duration_s": duration,
            "warm_up_s": warm_up,
            "backends": [b.address for b in backends],
            "stream_messages": args.stream_messages,
            "h2load": h2load_bin,
            "cases": [
                {
                    "name": c.name,
                    "path": c.path,
                    "payload_bytes": c.payload,
                    "clients": c.clients,
                    "streams_per_client": c.streams,
                    "description": c.describe(args.stream_messages),
                }
                for c in cases
            ],
        },
        "targets": target_info,
        "runs": runs,
        "summary": report.spreads_as_json(summary),
        "summary_spreads": summary,
        "ratios": report.ratios(summary),
        "paired_ratios": report.paired_ratios(runs),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    install_signal_handlers()
    workdir = Path(tempfile.mkdtemp(prefix="meshkit-bench-"))
    procs = Children(workdir)
    failed = interrupted = False
    doc: dict[str, Any] = {}
    backends: list[Backend] = []
    try:
        for i in range(args.backends):
            backends.append(
                start_backend(procs, f"backend-{i}", stream_messages=args.stream_messages)
            )
        print(f"[bench] backends: {', '.join(b.address for b in backends)}", flush=True)
        if args.suite in ("proxy", "all"):
            doc["proxy"] = run_proxy_suite(args, procs, workdir, backends)
            print(report.render(doc["proxy"]))
            failed |= any(not r["ok"] for r in doc["proxy"]["runs"])
        if args.suite in ("channel", "all"):
            doc["channel"] = channel.run_suite(args, procs, workdir, backends)
            print(channel.render(doc["channel"]))
            failed |= not doc["channel"].get("ok", True)
        if args.suite in ("discovery", "all"):
            doc["discovery"] = discovery.run_suite(args, procs, workdir, str(REPO))
            print(discovery.render(doc["discovery"]))
            failed |= not doc["discovery"]["ok"]
    except ChildFailed as exc:
        print(f"[bench] error: {exc}", file=sys.stderr)
        failed = True
    except KeyboardInterrupt:
        print("[bench] interrupted; stopping every child process", file=sys.stderr)
        interrupted = True
    finally:
        for backend in backends:
            backend.close()
        procs.stop_all()
        if doc:
            report.write_json(args.output, {name: _serializable(d) for name, d in doc.items()})
            print(f"[bench] wrote {args.output}")
        if args.keep_logs or failed:
            print(f"[bench] logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if interrupted:
        return 130
    return 1 if failed else 0


def _serializable(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "summary_spreads"}


if __name__ == "__main__":
    sys.exit(main())
