"""Summaries over repeats, ratios between targets, the stdout table and the JSON document."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.stats import Spread, ratio, spread

# (metric key in a run, column title, format of one value)
METRICS: tuple[tuple[str, str, str], ...] = (
    ("rps", "req/s", "{:.0f}"),
    ("p50_us", "p50 µs", "{:.0f}"),
    ("p99_us", "p99 µs", "{:.0f}"),
    ("proxy_cpu_us_per_req", "proxy CPU µs/req", "{:.1f}"),
    ("rss_load_kib", "RSS load MiB", "MiB"),
)

# numerator / denominator pairs shown when both ran
RATIO_PAIRS: tuple[tuple[str, str], ...] = (
    ("meshkit-envoy", "envoy-1w"),
    ("meshkit-envoy-2w", "envoy-2w"),
    ("meshkit-envoy", "meshkit"),
    ("meshkit-envoy", "direct"),
    ("meshkit-envoy-2w", "direct"),
    ("meshkit", "envoy-1w"),
    ("meshkit", "envoy-2w"),
    ("meshkit", "direct"),
    ("meshkit-kinds", "envoy-1w"),
    ("meshkit-kinds", "meshkit"),
    ("meshkit-kinds", "direct"),
    ("meshkit-2w", "envoy-2w"),
    ("meshkit-2w", "direct"),
    ("meshkit-2w-kinds", "envoy-2w"),
    ("meshkit-2w-kinds", "direct"),
    ("envoy-1w", "direct"),
    ("envoy-2w", "direct"),
    ("meshkit", "meshkit-base"),
)
RATIO_METRICS = ("rps", "p50_us", "p99_us", "proxy_cpu_us_per_req")


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Spread | None]]]:
    """``{case: {target: {metric: Spread}}}`` over the verified runs only."""
    out: dict[str, dict[str, dict[str, Spread | None]]] = {}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["case"], run["target"]), []).append(run)
    for (case, target), members in groups.items():
        good = [r for r in members if r["ok"]]
        out.setdefault(case, {})[target] = {
            key: spread([r[key] for r in good]) for key, _, _ in METRICS
        }
    return out


def ratios(
    summary: dict[str, dict[str, dict[str, Spread | None]]],
) -> dict[str, dict[str, dict[str, float | None]]]:
    """``{case: {"a/b": {metric: median(a)/median(b)}}}`` for the pairs that both have data."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for case, per_target in summary.items():
        for num, den in RATIO_PAIRS:
            if num in per_target and den in per_target:
                out.setdefault(case, {})[f"{num}/{den}"] = {
                    m: ratio(per_target[num][m], per_target[den][m]) for m in RATIO_METRICS
                }
    return out


def paired_ratios(
    runs: Sequence[dict[str, Any]],
) -> dict[str, dict[str, dict[str, dict[str, float] | None]]]:
    """``{case: {"a/b": {metric: spread}}}`` of the ratio a/b taken *within* each repeat.

    The two runs of one repeat are minutes closer in time than the medians over repeats, so on
    a shared machine whose load drifts this ratio is steadier than the ratio of medians.
    """
    by_key = {(r["case"], r["target"], r["repeat"]): r for r in runs if r["ok"]}
    cases = sorted({r["case"] for r in runs})
    repeats = sorted({r["repeat"] for r in runs})
    out: dict[str, dict[str, dict[str, dict[str, float] | None]]] = {}
    for case in cases:
        for num, den in RATIO_PAIRS:
            values: dict[str, list[float]] = {m: [] for m in RATIO_METRICS}
            for repeat in repeats:
                a, b = by_key.get((case, num, repeat)), by_key.get((case, den, repeat))
                if a is None or b is None:
                    continue
                for m in RATIO_METRICS:
                    if a[m] is not None and b[m]:
                        values[m].append(a[m] / b[m])
            if any(values.values()):
                out.setdefault(case, {})[f"{num}/{den}"] = {
                    m: (sp.as_dict() if (sp := spread(v)) else None) for m, v in values.items()
                }
    return out


def _fmt(s: Spread | None, fmt: str) -> str:
    if s is None:
        return "-"
    if fmt == "MiB":
        if s.n == 1:
            return f"{s.median / 1024:.0f}"
        return f"{s.median / 1024:.0f} ({s.low / 1024:.0f}-{s.high / 1024:.0f})"
    if s.n == 1:
        return fmt.format(s.median)
    return f"{fmt.format(s.median)} ({fmt.format(s.low)}-{fmt.format(s.high)})"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render(doc: dict[str, Any]) -> str:
    """The human report: per case a table of medians (min-max), then the ratios."""
    out: list[str] = []
    targets = doc["targets"]
    for name, info in targets.items():
        if not info["available"]:
            out.append(f"target {name}: unavailable: {info['reason']}")
        elif len(info.get("rss_idle_kib_by_command") or {}) > 1:
            parts = info["rss_idle_kib_by_command"]
            text = " + ".join(f"{cmd} {kib / 1024:.0f}" for cmd, kib in sorted(parts.items()))
            out.append(f"target {name}: idle RSS {text} MiB")
    summary = doc["summary_spreads"]
    runs = doc["runs"]
    for case in doc["config"]["cases"]:
        cname = case["name"]
        out.append("")
        out.append(f"== {cname}: {case['description']}")
        rows = [["target", *(title for _, title, _ in METRICS), "RSS idle MiB", "verified"]]
        for tname, info in targets.items():
            if not info["available"] or tname not in summary.get(cname, {}):
                continue
            members = [r for r in runs if r["case"] == cname and r["target"] == tname]
            good = sum(1 for r in members if r["ok"])
            idle = info.get("rss_idle_kib")
            rows.append(
                [
                    tname,
                    *(_fmt(summary[cname][tname][key], fmt) for key, _, fmt in METRICS),
                    f"{idle / 1024:.0f}" if idle else "-",
                    f"{good}/{len(members)}",
                ]
            )
        if len(rows) > 1:
            out.append(table(rows))
        paired = doc.get("paired_ratios", {}).get(cname, {})
        for pair, values in doc["ratios"].get(cname, {}).items():
            parts = [f"{m}={values[m]:.2f}" for m in RATIO_METRICS if values[m] is not None]
            if parts:
                out.append(f"   {pair}: " + "  ".join(parts))
            within = paired.get(pair, {})
            if any(v and v["n"] > 1 for v in within.values()):
                out.append(
                    "      per repeat: "
                    + "  ".join(
                        f"{m}={v['median']:.2f} ({v['min']:.2f}-{v['max']:.2f})"
                        for m, v in within.items()
                        if v is not None
                    )
                )
    failures = [r for r in runs if not r["ok"]]
    if failures:
        out.append("")
        out.append(f"{len(failures)} run(s) failed or not verified:")
        out.extend(f"  {r['target']} {r['case']} #{r['repeat']}: {r['error']}" for r in failures)
    return "\n".join(out)


def spreads_as_json(
    summary: dict[str, dict[str, dict[str, Spread | None]]],
) -> dict[str, dict[str, dict[str, dict[str, float] | None]]]:
    return {
        case: {
            target: {m: (s.as_dict() if s else None) for m, s in metrics.items()}
            for target, metrics in per_target.items()
        }
        for case, per_target in summary.items()
    }


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
