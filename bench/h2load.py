"""h2load as a gRPC load generator: request bodies, command lines, and parsing of its output.

h2load speaks HTTP/2 and knows nothing of gRPC, so the harness makes its requests gRPC: POST with
``content-type: application/grpc`` and ``te: trailers``, and a body that is one length-prefixed
gRPC message (1 flag byte, 4-byte big-endian length, payload). h2load counts a stream as
"succeeded" when it ends with a 2xx status, and a gRPC error is HTTP 200 too (an unknown method
"succeeds"), hence the backend counters the harness checks against.

h2load prints min/max/mean/sd of request time but no percentiles, so each run writes
``--log-file`` (one line per request of the main phase: start µs since epoch, status, duration µs)
and p50/p99 are computed from that.
"""

from __future__ import annotations

import re
import shutil
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "h2load not found: install it with `apt-get install -y nghttp2-client` (Debian)"


class ParseError(ValueError):
    """h2load's output did not have the expected shape."""


def find_h2load() -> str | None:
    return shutil.which("h2load")


def grpc_message(payload_size: int) -> bytes:
    """A protobuf-looking message of exactly ``payload_size`` bytes: field 1 (bytes) of filler."""
    if payload_size < 3:
        return b"x" * payload_size
    for header_len in range(2, 7):
        body = payload_size - header_len
        varint = _varint(body)
        if 1 + len(varint) == header_len:
            return b"\x0a" + varint + b"x" * body
    raise ValueError(f"payload size {payload_size} too large")


def grpc_frame(message: bytes) -> bytes:
    """One uncompressed gRPC length-prefixed message."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def command(
    h2load: str,
    url: str,
    *,
    data_file: Path,
    clients: int,
    streams: int,
    duration_s: float,
    warm_up_s: float = 0.0,
    log_file: Path | None = None,
) -> list[str]:
    """The h2load command line for a duration-based gRPC run on one thread."""
    argv = [
        h2load,
        "--threads=1",
        f"--clients={clients}",
        f"--max-concurrent-streams={streams}",
        f"--duration={_seconds(duration_s)}",
        f"--data={data_file}",
        "--header=content-type: application/grpc",
        "--header=te: trailers",
    ]
    if warm_up_s > 0:
        argv.append(f"--warm-up-time={_seconds(warm_up_s)}")
    if log_file is not None:
        argv.append(f"--log-file={log_file}")
    argv.append(url)
    return argv


def _seconds(value: float) -> str:
    # h2load takes an integer with an optional unit; milliseconds keep sub-second values exact.
    return f"{round(value * 1000)}ms"


@dataclass(frozen=True)
class Summary:
    """What h2load prints at the end of a run (the main phase only, warm-up excluded)."""

    duration_s: float  # the main duration (h2load's "finished in" includes the warm-up)
    rps: float
    total: int
    started: int
    done: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status_2xx: int
    status_other: int
    traffic_bytes: int
    request_min_us: float
    request_max_us: float
    request_mean_us: float
    request_sd_us: float

    @property
    def in_flight_at_cutoff(self) -> int:
        """Requests sent but not finished when the duration ran out (h2load drops them)."""
        return max(self.started - self.done, 0)

    @property
    def clean(self) -> bool:
        """Something succeeded and nothing failed.

        ``status_2xx`` is not compared with ``succeeded``: it also counts streams whose headers
        arrived before the cutoff but whose end did not.
        """
        return (
            self.succeeded > 0
            and self.failed == 0
            and self.errored == 0
            and self.timeout == 0
            and self.status_other == 0
        )


_FINISHED = re.compile(r"^finished in (?P<dur>[\d.]+\w*), (?P<rps>[\d.]+) req/s", re.M)
_REQUESTS = re.compile(
    r"^requests: (?P<total>\d+) total, (?P<started>\d+) started, (?P<done>\d+) done, "
    r"(?P<succeeded>\d+) succeeded, (?P<failed>\d+) failed, (?P<errored>\d+) errored, "
    r"(?P<timeout>\d+) timeout",
    re.M,
)
_STATUS = re.compile(
    r"^status codes: (?P<s2>\d+) 2xx, (?P<s3>\d+) 3xx, (?P<s4>\d+) 4xx, (?P<s5>\d+) 5xx", re.M
)
_TRAFFIC = re.compile(r"^traffic: \S+ \((?P<bytes>\d+)\) total", re.M)
_REQ_TIME = re.compile(
    r"^time for request:\s+(?P<min>\S+)\s+(?P<max>\S+)\s+(?P<mean>\S+)\s+(?P<sd>\S+)", re.M
)
_MAIN_DURATION = re.compile(
    r"Timing-based test with (?P<warm>[\d.]+)s of warm-up time and (?P<main>[\d.]+)s of main"
)


def parse_duration_us(text: str) -> float:
    """h2load's durations: ``166us``, ``4.89ms``, ``1.2s``."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ParseError(f"not an h2load duration: {text!r}")
    value = float(match.group(1))
    return value * {"us": 1.0, "ms": 1e3, "s": 1e6}[match.group(2)]


def parse_output(text: str) -> Summary:
    """Parse h2load's stdout (nghttp2 1.5x format)."""

    def need(regex: re.Pattern[str], what: str) -> re.Match[str]:
        match = regex.search(text)
        if not match:
            raise ParseError(f"h2load output has no {what} line:\n{text[-2000:]}")
        return match

    fin = need(_FINISHED, "'finished in'")
    req = need(_REQUESTS, "'requests:'")
    status = need(_STATUS, "'status codes:'")
    traffic = need(_TRAFFIC, "'traffic:'")
    rtime = need(_REQ_TIME, "'time for request:'")
    total_s = parse_duration_us(fin.group("dur")) / 1e6
    timing = _MAIN_DURATION.search(text)
    duration_s = float(timing.group("main")) if timing else total_s
    return Summary(
        duration_s=duration_s,
        rps=float(fin.group("rps")),
        total=int(req.group("total")),
        started=int(req.group("started")),
        done=int(req.group("done")),
        succeeded=int(req.group("succeeded")),
        failed=int(req.group("failed")),
        errored=int(req.group("errored")),
        timeout=int(req.group("timeout")),
        status_2xx=int(status.group("s2")),
        status_other=sum(int(status.group(k)) for k in ("s3", "s4", "s5")),
        traffic_bytes=int(traffic.group("bytes")),
        request_min_us=parse_duration_us(rtime.group("min")),
        request_max_us=parse_duration_us(rtime.group("max")),
        request_mean_us=parse_duration_us(rtime.group("mean")),
        request_sd_us=parse_duration_us(rtime.group("sd")),
    )


def parse_log(lines: Iterable[str]) -> list[float]:
    """Request durations (µs) of the 2xx requests in an h2load ``--log-file``."""
    durations: list[float] = []
    for line in lines:
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        if parts[1].startswith("2"):
            durations.append(float(parts[2]))
    return durations
