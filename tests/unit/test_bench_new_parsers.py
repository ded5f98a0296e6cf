"""bench: the parsers and summaries added with the Envoy-plane targets (pure logic)."""

from __future__ import annotations

import json

from bench import backend, discovery, procstat, report, sidecar


def test_parse_comm_keeps_spaces_and_parentheses_of_the_name() -> None:
    assert procstat.parse_comm("1234 (envoy) S 1 2 3") == "envoy"
    assert procstat.parse_comm("77 (my (odd) name) R 1") == "my (odd) name"


def test_parse_data_plane_reads_the_announced_line() -> None:
    assert sidecar.parse_data_plane("log\ndata_plane=envoy\nlistening outbound=1:2\n") == "envoy"
    assert sidecar.parse_data_plane("listening outbound=127.0.0.1:5\n") is None


def test_parse_who() -> None:
    reply = json.dumps({"backend": "127.0.0.1:9", "at": 12.5}).encode()
    assert backend.parse_who(reply) == ("127.0.0.1:9", 12.5)


def _run(target: str, repeat: int, rps: float, ok: bool = True) -> dict[str, object]:
    run: dict[str, object] = {"case": "c", "target": target, "repeat": repeat, "ok": ok}
    for metric in report.RATIO_METRICS:
        run[metric] = rps
    return run


def test_paired_ratios_are_taken_within_each_repeat() -> None:
    num, den = report.RATIO_PAIRS[0]
    runs = [_run(num, 0, 10.0), _run(den, 0, 5.0), _run(num, 1, 30.0), _run(den, 1, 10.0)]
    runs.append(_run(num, 2, 1000.0))  # no partner in repeat 2: left out
    ratios = report.paired_ratios(runs)["c"][f"{num}/{den}"]
    for spread in ratios.values():
        assert spread is not None
        assert (spread["min"], spread["max"]) == (2.0, 3.0)
        assert spread["n"] == 2


def test_discovery_summary_counts_only_verified_runs() -> None:
    good = {"target": "t", "trigger": "sighup", "ok": True, "failed_calls": 0}
    for metric in discovery.METRICS:
        good[metric] = 10.0
    bad = {"target": "t", "trigger": "sighup", "ok": False, "failed_calls": 5}
    summary = discovery.summarize([good, dict(good), bad])["t"]["sighup"]
    assert summary["verified"] == "2/3"
    assert summary["failed_calls"] == 0
    assert summary[discovery.METRICS[0]]["median"] == 10.0
